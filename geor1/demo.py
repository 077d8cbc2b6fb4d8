"""`geor1 demo` (what `make demo` runs): the Geo-R1 pipeline on GeoWorld with the tiny offline Qwen2.5-VL, on CPU.

    world -> retrieval encoder -> FAISS index -> pairing episodes -> fact-checked CoT -> SFT
          -> GRPO from the SFT model ("SFT+GRPO") and from the base ("GRPO only") -> evaluation -> report.md

Every stage writes its outputs under `--out` and a `DONE` marker; a finished stage is not redone (resume after an
interruption by running the same command again; `--redo STAGE` or `--fresh` to redo). `report.md` holds the table,
the commands that reproduce each stage, and the TensorBoard log folders.

Departures from the paper's setting, on purpose (measurements in the README): the episodes are K=2 with negatives
drawn at random at least 1,000 km away, not encoder-mined hard negatives (against those even an oracle that reads
every image's land cover is at chance, so a tiny colour-seeing model has nothing to learn); SFT uses the pairing
traces only (mixing in geolocation traces cost the tiny model pairing accuracy); "Zero" runs fewer steps than
SFT+GRPO (the untrained base never earns a format or accuracy reward).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # the repository's recipes (editable install)
STAGES = ("world", "retrieval", "index", "mine", "cot", "sft", "grpo", "zero", "eval", "report")


@dataclass
class DemoConfig:
    """Sizes of the demo; the defaults finish in about 15 minutes on 2 cores, `quick()` in about a minute."""

    seed: int = 0
    num_train: int = 2000
    num_val: int = 200
    num_test: int = 1200
    retrieval_epochs: int = 4
    retrieval_image: int = 96
    k: int = 2
    strategy: str = "random"
    min_km: float = 1000.0
    max_km: float = 20000.0
    sft_steps: int = 600
    sft_geolocate: bool = False  # mix geolocation traces into SFT (1 shard in 7): costs pairing accuracy here
    grpo_steps: int = 500
    zero_steps: int = 50  # the untrained base never earned a format or accuracy reward in 200 steps
    group_size: int = 8
    grpo_prompts: int = 8
    max_new_tokens: int = 80  # pairing completions (SFT traces are ~55 tokens at K=2)
    geolocate_tokens: int = 200  # geolocation completions (traces are ~125 tokens)
    eval_pairing: int = 1200
    eval_geolocate: int = 200

    @classmethod
    def quick(cls) -> "DemoConfig":
        return cls(num_train=24, num_val=6, num_test=8, retrieval_epochs=1, retrieval_image=48, k=3, min_km=50.0,
                   max_km=20000.0, sft_steps=3, grpo_steps=2, zero_steps=2, group_size=2, grpo_prompts=2,
                   max_new_tokens=12, geolocate_tokens=16, eval_pairing=6, eval_geolocate=4)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on GeoWorld with a tiny model (CPU, offline)")
    p.add_argument("--out", default="runs/demo", help="output folder (stages, report.md, TensorBoard logs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="miniature sizes (about a minute), for smoke tests")
    p.add_argument("--redo", action="append", default=[], choices=STAGES, help="redo this stage (repeatable)")
    p.add_argument("--fresh", action="store_true", help="redo every stage")
    p.set_defaults(handler=lambda ns: run_demo(Path(ns.out), DemoConfig.quick() if ns.quick else DemoConfig(),
                                               seed=ns.seed, redo=set(STAGES) if ns.fresh else set(ns.redo)))


class Stages:
    """Runs stages once each, with DONE markers and a record of equivalent commands."""

    def __init__(self, out: Path, redo: set[str]) -> None:
        self.out, self.redo = out, redo
        self.commands: dict[str, list[str]] = {}
        self.seconds: dict[str, float] = {}

    def run(self, name: str, commands: list[str], fn) -> None:
        folder = self.out / name
        self.commands[name] = commands
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
        fn(folder)
        self.seconds[name] = time.perf_counter() - t
        marker.write_text(json.dumps({"seconds": self.seconds[name]}))
        log.info("stage %s finished in %.0f s", name, self.seconds[name])


def _fit(args: list[str]) -> None:
    from geor1.cli import run_lightning

    run_lightning(["fit", *args], prog="geor1")


def stage_config(base: str, dest: Path, overrides: dict[str, Any]) -> list[str]:
    """Write `base` (a recipe under configs/) with `overrides` (dotted paths, list items by index: "trainer.callbacks.1.
    init_args.dirpath") to `dest`; returns the `fit` arguments that use it. The written file is the exact config."""
    import yaml

    from geor1 import Geor1Error

    path = CONFIGS / base
    if not path.is_file():
        raise Geor1Error(f"recipe {path} not found: run the demo from a checkout of geor1 (pip install -e .)")
    cfg = yaml.safe_load(path.read_text())
    for dotted, value in overrides.items():
        node: Any = cfg
        keys = dotted.split(".")
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        last = keys[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return ["--config", str(dest)]


def run_demo(out: Path, cfg: DemoConfig, seed: int = 0, redo: set[str] | None = None) -> Path:
    cfg.seed = seed
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    st = Stages(out, redo or set())
    world, runs = out / "world" / "geoworld", out
    st.run("world", [f"geor1 data world --out {world} --num-train {cfg.num_train} --num-val {cfg.num_val} "
                     f"--num-test {cfg.num_test} --seed {seed}"], lambda f: _world(f, cfg))
    configs = out / "configs"
    ret = stage_config("retrieval/geoworld_tiny.yaml", configs / "retrieval.yaml", {
        "seed_everything": seed, "data.init_args.root": str(world), "trainer.max_epochs": cfg.retrieval_epochs,
        "trainer.default_root_dir": str(runs / "retrieval"),
        "trainer.logger.init_args.save_dir": str(runs / "retrieval"),
        "trainer.callbacks.1.init_args.dirpath": str(runs / "retrieval" / "checkpoints"),
        "data.init_args.ground_size": [cfg.retrieval_image, round(cfg.retrieval_image * 1.5)],
        "data.init_args.sat_size": cfg.retrieval_image,
        "model.init_args.scheduler.init_args.T_max": max(1, cfg.retrieval_epochs * cfg.num_train // 64)})
    st.run("retrieval", ["geor1 fit " + " ".join(ret)], lambda f: _fit(ret))
    ckpt = runs / "retrieval" / "checkpoints" / "last.ckpt"
    index = out / "index" / "index"
    st.run("index", [f"geor1 index build --ckpt {ckpt} --shards {world} --out {index} --type flat"],
           lambda f: _cli(["index", "build", "--ckpt", str(ckpt), "--shards", str(world), "--out", str(index)]))
    episodes = out / "mine" / "episodes"
    mine = ["mine", "episodes", "--index", str(index), "--shards", str(world), "--out", str(episodes), "--k",
            str(cfg.k), "--strategy", cfg.strategy, "--min-km", str(cfg.min_km), "--max-km", str(cfg.max_km),
            "--seed", str(seed)]
    st.run("mine", ["geor1 " + " ".join(mine)], lambda f: _cli(mine))
    sft_pair, sft_geo = out / "cot" / "sft_pairing", out / "cot" / "sft_geolocate"
    cot = [["cot", "synthesize", "--shards", str(episodes), "--out", str(sft_pair), "--task", "pairing"],
           ["cot", "synthesize", "--shards", str(world), "--out", str(sft_geo), "--task", "geolocate"]]
    st.run("cot", ["geor1 " + " ".join(c) for c in cot], lambda f: [_cli(c) for c in cot])
    sft_model = runs / "sft" / "model"
    sft_data = {"data.init_args.roots": [str(sft_pair), str(sft_geo)], "data.init_args.root_weights": [6, 1]} \
        if cfg.sft_geolocate else {"data.init_args.roots": [str(sft_pair)], "data.init_args.root_weights": None}
    sft = stage_config("sft/geoworld_tiny.yaml", configs / "sft.yaml", {
        "seed_everything": seed, **sft_data, "model.init_args.scheduler.init_args.total_steps": cfg.sft_steps,
        "trainer.max_steps": cfg.sft_steps, "trainer.val_check_interval": max(1, cfg.sft_steps // 3),
        "trainer.default_root_dir": str(runs / "sft"), "trainer.logger.init_args.save_dir": str(runs / "sft"),
        "trainer.callbacks.1.init_args.dirpath": str(runs / "sft" / "checkpoints"),
        "model.init_args.export_dir": str(sft_model), "model.init_args.max_new_tokens": cfg.max_new_tokens})
    st.run("sft", ["geor1 fit " + " ".join(sft)], lambda f: _fit(sft))
    models = {"base (untrained)": out / "base_model", "SFT only": sft_model}
    for name, init, tag, steps in (("grpo", sft_model, "SFT+GRPO", cfg.grpo_steps),
                                   ("zero", None, "GRPO only (Zero)", cfg.zero_steps)):
        model_dir = runs / name / "model"
        args = _grpo_args(cfg, episodes, runs / name, init, model_dir, seed, steps, configs / f"{name}.yaml")
        st.run(name, ["geor1 fit " + " ".join(args)], lambda f, a=args: _fit(a))
        models[tag] = model_dir
    st.run("eval", [f"geor1 eval pairing --model MODEL --episodes {episodes} --out ... --limit {cfg.eval_pairing}",
                    f"geor1 eval geolocate --model MODEL --data {world} --out ... --limit {cfg.eval_geolocate}"],
           lambda f: _evaluate(f, cfg, models, episodes, world, seed))
    st.redo.add("report")
    st.run("report", [], lambda f: None)
    report = _report(out, cfg, st, json.loads((out / "eval" / "results.json").read_text()))
    path = out / "report.md"
    path.write_text(report)
    print(report)
    return path


def _cli(args: list[str]) -> None:
    from geor1.cli import build_parser

    ns = build_parser().parse_args(args)
    ns.handler(ns)


def _world(folder: Path, cfg: DemoConfig) -> None:
    from geor1.data.geoworld import build_geoworld

    build_geoworld(folder / "geoworld", cfg.num_train, cfg.num_val, cfg.num_test, cfg.seed)


def _grpo_args(cfg: DemoConfig, episodes: Path, root: Path, init: Path | None, export: Path, seed: int,
               steps: int, dest: Path) -> list[str]:
    overrides: dict[str, Any] = {
        "seed_everything": seed, "data.init_args.roots": str(episodes), "trainer.max_steps": steps,
        "trainer.val_check_interval": max(1, steps // 3), "trainer.default_root_dir": str(root),
        "trainer.logger.init_args.save_dir": str(root),
        "trainer.callbacks.1.init_args.dirpath": str(root / "checkpoints"),
        "model.init_args.export_dir": str(export), "model.init_args.num_generations": cfg.group_size,
        "data.init_args.batch_size": cfg.grpo_prompts, "model.init_args.max_new_tokens": cfg.max_new_tokens,
        "model.init_args.reward_kwargs.length.max_len": cfg.max_new_tokens}
    if init is None:  # RL from the untrained base: "Zero"
        overrides["model.init_args.policy"] = {"class_path": "geor1.model.TinyPolicy",
                                               "init_args": {"seed": seed, "max_pixels": 12544}}
    else:
        overrides["model.init_args.policy.init_args.path"] = str(init)
    return stage_config("grpo/geoworld_tiny.yaml", dest, overrides)


def _evaluate(folder: Path, cfg: DemoConfig, models: dict[str, Path], episodes: Path, world: Path,
              seed: int) -> None:
    import numpy as np

    from geor1.eval.commands import load_samples
    from geor1.eval.plots import error_cdf, world_map
    from geor1.eval.runners import run_policy, score_geolocate, score_pairing, write_results
    from geor1.model.policy import Policy
    from geor1.model.tiny import save_tiny_checkpoint

    if not (models["base (untrained)"] / "config.json").exists():
        save_tiny_checkpoint(models["base (untrained)"], seed=seed)
    pairs = load_samples(str(episodes), "test", "pairing", cfg.eval_pairing)
    places = load_samples(str(world), "test", "geolocate", cfg.eval_geolocate)
    results: dict[str, Any] = {}
    distances, totals, maps = {}, {}, {}
    for i, (name, path) in enumerate(models.items()):
        policy = Policy(str(path), max_pixels=12544).eval()
        pm, pp = score_pairing(run_policy(policy, pairs, 32, cfg.max_new_tokens))
        gm, gp = score_geolocate(run_policy(policy, places, 32, cfg.geolocate_tokens))
        write_results(folder / f"model{i}" / "pairing", pm, pp, f"{name}: pairing")
        write_results(folder / f"model{i}" / "geolocate", gm, gp, f"{name}: geolocation")
        results[name] = {"path": str(path), "pairing": pm, "geolocate": gm}
        distances[name] = np.array([r["km"] for r in gp if r["parsed"]], dtype=float)
        totals[name] = len(gp)
        maps[name] = gp
    (folder / "results.json").write_text(json.dumps(results, indent=2))
    error_cdf(distances, totals, folder / "error_cdf.png")
    last = list(models)[-2]  # SFT+GRPO
    truth = np.array([[s.meta["lat"], s.meta["lon"]] for s in places], dtype=float)
    pred = np.array([[r["lat"], r["lon"]] if r["parsed"] else [np.nan, np.nan] for r in maps[last]], dtype=float)
    world_map(pred, truth, folder / "world_map.png", f"{last}: predictions (red) vs truth (green)")


def _notes(cfg: DemoConfig) -> list[str]:
    notes = [f"Steps: SFT {cfg.sft_steps}, GRPO {cfg.grpo_steps} (B={cfg.grpo_prompts} prompts x G={cfg.group_size}), "
             f"Zero {cfg.zero_steps} (fewer, to stay within 15 minutes: from the untrained base no sampled "
             f"completion was well-formed in a 200-step run, format and accuracy rewards 0 throughout, so it has "
             f"no pairing signal to learn from)."]
    if not cfg.sft_geolocate:
        notes.append("SFT used the pairing traces only (`sft_geolocate=False`): no model was taught the geolocation "
                     "answer, which the geolocation columns show. Mixing geolocation traces in costs the tiny model "
                     "pairing accuracy (README).")
    return [" ".join(notes), ""]


def _report(out: Path, cfg: DemoConfig, st: Stages, results: dict[str, Any]) -> str:
    rows = ["| model | pairing acc (95% CI) | format rate | mean completion tokens | geolocation unparseable | "
            "acc@25km | acc@750km | acc@2500km | median km (parsed) | country acc |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        p, g = r["pairing"], r["geolocate"]
        med = g["median_km_parsed"]
        rows.append(f"| {name} | {p['pairing_acc']:.3f} [{p['ci95_low']:.3f}, {p['ci95_high']:.3f}] | "
                    f"{p['format_rate']:.3f} | {p['mean_completion_tokens']:.1f} | {g['unparseable_share']:.3f} | "
                    f"{g['acc@25km']:.3f} | {g['acc@750km']:.3f} | {g['acc@2500km']:.3f} | "
                    f"{'-' if med != med else f'{med:,.0f}'} | {g.get('country_acc', float('nan')):.3f} |")
    n_pair = next(iter(results.values()))["pairing"]["n"]
    n_geo = int(next(iter(results.values()))["geolocate"]["n"])
    lines = ["# geor1 demo report", "",
             f"GeoWorld ({cfg.num_train} / {cfg.num_val} / {cfg.num_test} places, seed {cfg.seed}), tiny offline "
             f"Qwen2.5-VL, K={cfg.k} {cfg.strategy} episodes. Held-out evaluation (greedy): {n_pair} test pairing "
             f"episodes, {n_geo} test places (cities never seen in training). Chance pairing accuracy: "
             f"{1 / cfg.k:.3f}. Distances: haversine, R = 6371.0088 km, d <= threshold; unparseable answers count as "
             f"misses in every acc@ and are excluded from the median.", "", *rows, "", *_notes(cfg),
             "![error CDF](eval/error_cdf.png)", "", "![world map](eval/world_map.png)", "",
             "## Stages", "", "| stage | seconds | command |", "|---|---|---|"]
    for name in STAGES:
        for c in st.commands.get(name, []) or [""]:
            if name in st.seconds:
                lines.append(f"| {name} | {st.seconds[name]:.0f} | `{c}` |" if c else f"| {name} | "
                             f"{st.seconds[name]:.0f} | |")
    lines += ["", f"Total: {sum(st.seconds.values()) / 60:.1f} min. TensorBoard: `tensorboard --logdir {out}`. "
              f"The exact configs of the fit stages: `{out / 'configs'}`; sizes: `{out / 'demo_config.json'}`. "
              f"Re-running `geor1 demo --out {out}` skips finished stages.", ""]
    return "\n".join(lines)
