"""`geor1 demo` (what `make demo` runs): the Geo-R1 pipeline on GeoWorld with the tiny offline Qwen2.5-VL, on CPU.

    world -> retrieval encoder -> FAISS index -> pairing episodes -> fact-checked CoT -> SFT
          -> GRPO from the SFT model ("SFT+GRPO") and from the base ("GRPO only (Zero)") -> evaluation -> report.md

`pipeline` runs the stages, each a call into the library function its own command runs (resumable: a `DONE` marker
per stage); `recipes` builds the fit stages' configs in code (the shipped GeoWorld recipes at the demo's sizes);
`report` writes `report.md` (the table, the commands that reproduce each stage, the log folders); `commands` is the
`geor1 demo` command, the only part that prints.

Departures from the paper's setting, on purpose (measurements in docs/experiments.md): the episodes are K=2 with
negatives drawn at random at least 1,000 km away, not encoder-mined hard negatives (against those even an oracle
that reads every image's land cover is at chance, so a tiny colour-seeing model has nothing to learn); SFT uses the
pairing traces only (mixing in geolocation traces cost the tiny model pairing accuracy); "Zero" runs fewer steps
than SFT+GRPO (the untrained base never earns a format or accuracy reward).
"""

from __future__ import annotations

from geor1.demo.config import STAGES, DemoConfig, DemoPaths
from geor1.demo.pipeline import run_demo

__all__ = ["STAGES", "DemoConfig", "DemoPaths", "run_demo"]
