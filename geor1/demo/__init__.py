"""`geor1 demo` (what `make demo` runs): the Geo-R1 pipeline on GeoWorld with the tiny offline Qwen2.5-VL, on CPU.

    world -> retrieval encoder -> FAISS index -> pairing episodes (random, geo-neighbourhood, encoder-hard)
          -> instruction-following base (generic questions about images) -> fact-checked CoT -> SFT from the base
          -> GRPO from the SFT model ("SFT+GRPO") and from the base ("GRPO only (Zero)") -> evaluation -> report.md

`pipeline` runs the stages, each a call into the library function its own command runs (resumable: a `DONE` marker
per stage); `recipes` builds the fit stages' configs in code (the shipped GeoWorld recipes at the demo's sizes);
`evaluate` scores every model on the same held-out data and makes the paired comparisons; `report` writes
`report.md` (the tables, the commands that reproduce each stage, the log folders); `commands` is the `geor1 demo`
command, the only part that prints.

Departures from the paper's setting, on purpose (measurements in docs/experiments.md):
- the base is not a pretrained instruct model but the tiny model after a short instruction stage on generic
  questions about GeoWorld images (`geor1.data.instruct`: which cover dominates an image, which of two images shows
  the most of a cover), with no place, coordinate, pairing episode or Geo-R1 reasoning template;
- the training episodes are K=2 with negatives drawn at random at least 1,000 km away, not encoder-mined hard
  negatives (against those even an oracle that reads every image's land cover is near chance); the harder episode
  types are evaluated, not trained on;
- the geolocation traces are the compact template (cues, then a point to 0.1 degree, no place name), which the
  tiny model can learn to write;
- Zero uses a larger learning rate than SFT+GRPO (3e-4 against 1e-4): at 1e-4 it did not move off chance in 300
  steps.
"""

from __future__ import annotations

from geor1.demo.config import STAGES, DemoConfig, DemoPaths
from geor1.demo.pipeline import run_demo

__all__ = ["STAGES", "DemoConfig", "DemoPaths", "run_demo"]
