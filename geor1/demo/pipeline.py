"""The demo's stages, each a call into the library function its command runs:

    world      geor1.data.geoworld.build_geoworld          (`geor1 data world`)
    retrieval  geor1.train.fit, recipes.retrieval           (`geor1 fit --config <out>/configs/retrieval.yaml`)
    index      geor1.retrieval.index.build_index            (`geor1 index build`)
    mine       geor1.retrieval.mining.mine_episodes         (`geor1 mine episodes`: random, geo, hard episodes)
    instruct   geor1.data.instruct.build_instruct           (`geor1 data instruct`: generic image questions)
    base       geor1.train.fit, recipes.instruct            (the instruction-following base, from random init)
    cot        geor1.cot.synthesize.synthesize              (`geor1 cot synthesize`, pairing and geolocation)
    sft        geor1.train.fit, recipes.sft from the base
    grpo       geor1.train.fit, recipes.grpo from the SFT model ("SFT+GRPO")
    zero       geor1.train.fit, recipes.grpo from the base ("GRPO only (Zero)")
    eval       geor1.demo.evaluate.evaluate: every model on every episode type, shuffled, geolocation, describe
    report     geor1.demo.report.write_report

Every stage writes under `out/<stage>` and, when it finishes, a `DONE` marker with its duration; a stage with a
marker is skipped (resume by running again), unless named in `redo`. The report is always rewritten. A demo folder
holds one demo: resuming it with other sizes or another seed is refused rather than mixing two demos' stages.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from geor1 import Geor1Error
from geor1.demo import recipes
from geor1.demo.config import STAGES, DemoConfig, DemoPaths
from geor1.demo.report import write_report

log = logging.getLogger(__name__)


def models(paths: DemoPaths) -> dict[str, Path]:
    """The evaluated models, by the name of their row in the report, in the table's order."""
    return {
        "base (instruct)": paths.base_model,
        "SFT only": paths.model("sft"),
        "SFT+GRPO": paths.model("grpo"),
        "GRPO only (Zero)": paths.model("zero"),
    }


class Stages:
    """Runs each stage once: `out/<stage>` is (re)made, the stage runs, a `DONE` marker records its seconds."""

    def __init__(self, out: Path, redo: set[str]) -> None:
        self.out, self.redo = out, redo
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> None:
        folder = self.out / name
        marker = folder / "DONE"
        if marker.exists() and name not in self.redo:
            log.info("stage %s: done already (%s), skipped", name, folder)
            self.seconds[name] = float(json.loads(marker.read_text())["seconds"])
            return
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        log.info("stage %s ...", name)
        t = time.perf_counter()
        fn()
        self.seconds[name] = time.perf_counter() - t
        marker.write_text(json.dumps({"seconds": self.seconds[name]}))
        log.info("stage %s finished in %.0f s", name, self.seconds[name])


def run_demo(cfg: DemoConfig, out: str | Path = "runs/demo", redo: Iterable[str] = ()) -> Path:
    """Run (or resume) the demo with sizes `cfg` under `out`; `redo`: stages to run again although done. Returns
    the path of `report.md`."""
    redo = set(redo)
    if redo - set(STAGES):
        raise Geor1Error(f"unknown demo stage(s) {sorted(redo - set(STAGES))}: the stages are {', '.join(STAGES)}")
    paths = DemoPaths(Path(out))
    _check_same_demo(paths, cfg, fresh=redo >= set(STAGES))
    paths.out.mkdir(parents=True, exist_ok=True)
    (paths.out / "demo_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    st = Stages(paths.out, redo | {"report"})
    st.run("world", lambda: build_world(cfg, paths))
    st.run("retrieval", lambda: fit_stage(recipes.retrieval(cfg, paths), paths.config("retrieval")))
    st.run("index", lambda: build_index(paths))
    st.run("mine", lambda: mine(cfg, paths))
    st.run("instruct", lambda: build_instruct(cfg, paths))
    st.run("base", lambda: fit_stage(recipes.instruct(cfg, paths), paths.config("base")))
    st.run("cot", lambda: synthesize_cot(cfg, paths))
    st.run("sft", lambda: fit_stage(recipes.sft(cfg, paths), paths.config("sft")))
    st.run(
        "grpo",
        lambda: fit_stage(
            recipes.grpo(cfg, paths, "grpo", paths.model("sft"), cfg.grpo_steps, cfg.grpo_lr), paths.config("grpo")
        ),
    )
    st.run(
        "zero",
        lambda: fit_stage(
            recipes.grpo(cfg, paths, "zero", paths.base_model, cfg.zero_steps, cfg.zero_lr), paths.config("zero")
        ),
    )
    st.run("eval", lambda: evaluate(cfg, paths, models(paths)))
    st.run("report", lambda: None)
    return write_report(cfg, paths, st.seconds, json.loads(paths.results.read_text()))


def _check_same_demo(paths: DemoPaths, cfg: DemoConfig, fresh: bool) -> None:
    """A folder's finished stages are reused only by the same demo (sizes and seed)."""
    recorded = paths.out / "demo_config.json"
    if fresh or not recorded.is_file():
        return
    before = json.loads(recorded.read_text())
    if before != asdict(cfg):
        changed = sorted(k for k in set(before) | set(asdict(cfg)) if before.get(k) != asdict(cfg).get(k))
        raise Geor1Error(
            f"{paths.out} holds a demo with other settings (differing: {', '.join(changed)}; see "
            f"{recorded}): use another --out, or --fresh to redo every stage"
        )


def build_world(cfg: DemoConfig, paths: DemoPaths) -> None:
    from geor1.data.geoworld import build_geoworld

    build_geoworld(paths.world, cfg.num_train, cfg.num_val, cfg.num_test, cfg.seed)


def fit_stage(config: dict[str, Any], dest: Path) -> None:
    """Write `config` to `dest` (the exact config of the run) and fit it through LightningCLI."""
    from geor1.train import fit

    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump(config, sort_keys=False))
    fit(dest)


def build_index(paths: DemoPaths) -> None:
    from geor1.retrieval.index import build_index as build

    index = build(paths.retrieval_ckpt, paths.world, paths.index)
    log.info("flat index of %d tiles written to %s", len(index.meta), paths.index)


def mining_specs(cfg: DemoConfig) -> dict[str, Any]:
    """The MiningSpec of each episode type (EPISODE_TYPES): "random" trains and evaluates; "geo" (negatives from
    the geo-neighbourhood) and "hard" (the encoder's most similar tiles) evaluate."""
    from geor1.retrieval.mining import MiningSpec

    return {
        "random": MiningSpec(k=cfg.k, strategy=cfg.strategy, min_km=cfg.min_km, max_km=cfg.max_km, seed=cfg.seed),
        "geo": MiningSpec(k=cfg.k, strategy="geo", min_km=cfg.geo_min_km, max_km=cfg.geo_max_km, seed=cfg.seed),
        "hard": MiningSpec(k=cfg.k, strategy="hard", min_km=cfg.geo_min_km, seed=cfg.seed),
    }


def mine(cfg: DemoConfig, paths: DemoPaths) -> None:
    from geor1.retrieval.mining import mine_episodes

    for kind, spec in mining_specs(cfg).items():
        report = mine_episodes(paths.index, paths.world, paths.episodes_of(kind), spec)
        log.info("%s episodes mined: %s", kind, report.episodes)


def build_instruct(cfg: DemoConfig, paths: DemoPaths) -> None:
    from geor1.data.instruct import build_instruct as build

    report = build(paths.world, paths.instruct, seed=cfg.seed)
    log.info("instruction questions: %s", report.as_dict())


def synthesize_cot(cfg: DemoConfig, paths: DemoPaths) -> None:
    from geor1.cot.synthesize import synthesize

    for shards, dest, task in (
        (paths.episodes, paths.sft_pairing, "pairing"),
        (paths.world, paths.sft_geolocate, "geolocate"),
    ):
        summary = synthesize(shards, dest, task, compact=cfg.compact_geolocate).as_dict()
        log.info(
            "%s exemplars: %d of %d kept; dropped by reason: %s",
            task,
            summary["kept"],
            summary["total"],
            summary["dropped"],
        )


def evaluate(cfg: DemoConfig, paths: DemoPaths, evaluated: dict[str, Path]) -> None:
    from geor1.demo.evaluate import evaluate as run

    run(cfg, paths, evaluated)
