"""The demo's stages, each a call into the library function its command runs:

    world      geor1.data.geoworld.build_geoworld          (`geor1 data world`)
    retrieval  geor1.train.fit, recipes.retrieval           (`geor1 fit --config <out>/configs/retrieval.yaml`)
    index      geor1.retrieval.index.build_index            (`geor1 index build`)
    mine       geor1.retrieval.mining.mine_episodes         (`geor1 mine episodes`)
    cot        geor1.cot.synthesize.synthesize              (`geor1 cot synthesize`, pairing and geolocation)
    sft        geor1.train.fit, recipes.sft
    grpo       geor1.train.fit, recipes.grpo from the SFT model ("SFT+GRPO")
    zero       geor1.train.fit, recipes.grpo from the untrained base ("GRPO only (Zero)")
    eval       geor1.eval.runners (run_policy, score_pairing, score_geolocate, write_results) on every model
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
from typing import TYPE_CHECKING, Any

import yaml

from geor1 import Geor1Error
from geor1.demo import recipes
from geor1.demo.config import STAGES, DemoConfig, DemoPaths
from geor1.demo.report import write_report

if TYPE_CHECKING:
    from geor1.data.sample import ChatSample

log = logging.getLogger(__name__)

EVAL_BATCH = 32
MAP_MODEL = "SFT+GRPO"  # the model whose predictions the world map shows


def models(paths: DemoPaths) -> dict[str, Path]:
    """The evaluated models, by the name of their row in the report, in the table's order."""
    return {
        "base (untrained)": paths.base_model,
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
    st.run("cot", lambda: synthesize_cot(paths))
    st.run("sft", lambda: fit_stage(recipes.sft(cfg, paths), paths.config("sft")))
    st.run(
        "grpo",
        lambda: fit_stage(recipes.grpo(cfg, paths, "grpo", paths.model("sft"), cfg.grpo_steps), paths.config("grpo")),
    )
    st.run("zero", lambda: fit_stage(recipes.grpo(cfg, paths, "zero", None, cfg.zero_steps), paths.config("zero")))
    st.run("eval", lambda: evaluate(cfg, paths))
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


def mine(cfg: DemoConfig, paths: DemoPaths) -> None:
    from geor1.retrieval.mining import MiningSpec, mine_episodes

    spec = MiningSpec(k=cfg.k, strategy=cfg.strategy, min_km=cfg.min_km, max_km=cfg.max_km, seed=cfg.seed)
    report = mine_episodes(paths.index, paths.world, paths.episodes, spec)
    log.info("episodes mined: %s", report.episodes)


def synthesize_cot(paths: DemoPaths) -> None:
    from geor1.cot.synthesize import synthesize

    for shards, dest, task in (
        (paths.episodes, paths.sft_pairing, "pairing"),
        (paths.world, paths.sft_geolocate, "geolocate"),
    ):
        summary = synthesize(shards, dest, task).as_dict()
        log.info(
            "%s exemplars: %d of %d kept; dropped by reason: %s",
            task,
            summary["kept"],
            summary["total"],
            summary["dropped"],
        )


def evaluate(cfg: DemoConfig, paths: DemoPaths) -> None:
    """Every model of `models` on the same held-out pairing episodes and places (greedy): per model the metrics and
    predictions of each task under `eval/model<i>/`, all metrics in `eval/results.json`, the error CDF of all
    models and the world map of MAP_MODEL."""
    import numpy as np

    from geor1.eval.plots import error_cdf, world_map
    from geor1.eval.runners import run_policy, score_geolocate, score_pairing, write_results
    from geor1.eval.samples import load_chat_samples
    from geor1.model.policy import Policy
    from geor1.model.tiny import save_tiny_checkpoint
    from geor1.tasks import GeoTarget

    if not (paths.base_model / "config.json").exists():
        save_tiny_checkpoint(paths.base_model, seed=cfg.seed)
    pairs = _samples(load_chat_samples(paths.episodes, "test", "pairing", cfg.eval_pairing), paths.episodes)
    places = _samples(load_chat_samples(paths.world, "test", "geolocate", cfg.eval_geolocate), paths.world)
    results: dict[str, Any] = {}
    distances, totals, predictions = {}, {}, {}
    for i, (name, path) in enumerate(models(paths).items()):
        policy = Policy(str(path), max_pixels=recipes.MAX_PIXELS).eval()
        pm, pp = score_pairing(run_policy(policy, pairs, EVAL_BATCH, cfg.max_new_tokens))
        gm, gp = score_geolocate(run_policy(policy, places, EVAL_BATCH, cfg.geolocate_tokens))
        write_results(paths.eval / f"model{i}" / "pairing", pm, pp, f"{name}: pairing")
        write_results(paths.eval / f"model{i}" / "geolocate", gm, gp, f"{name}: geolocation")
        results[name] = {"path": str(path), "pairing": pm, "geolocate": gm}
        distances[name] = np.array([r["km"] for r in gp if r["parsed"]], dtype=float)
        totals[name] = len(gp)
        predictions[name] = gp
        log.info("%s: pairing acc %.3f, geolocation unparseable %.3f", name, pm["pairing_acc"], gm["unparseable_share"])
    paths.results.write_text(json.dumps(results, indent=2))
    error_cdf(distances, totals, paths.eval / "error_cdf.png")
    truth = np.array(
        [[t.lat, t.lon] if isinstance(t, GeoTarget) else [np.nan, np.nan] for t in (s.target for s in places)],
        dtype=float,
    )
    pred = np.array(
        [[r["lat"], r["lon"]] if r["parsed"] else [np.nan, np.nan] for r in predictions[MAP_MODEL]], dtype=float
    )
    world_map(pred, truth, paths.eval / "world_map.png", f"{MAP_MODEL}: predictions (red) vs truth (green)")


def _samples(loaded: tuple[list[ChatSample], int], root: Path) -> list[ChatSample]:
    samples, skipped = loaded
    if skipped:
        log.warning("%d corrupt samples skipped in %s", skipped, root)
    return samples
