"""Evaluation as Lightning loops (`geor1.eval.module.EvalModule`): `geor1 test|predict --config`, the short commands
over the same module, predictions resumable by key, photos without coordinates, and every config in configs/eval/.

References: a single-prompt greedy `generate` per sample (batching changes nothing), one process against two (DDP,
gloo), an uninterrupted run against a killed and resumed one (byte-identical files)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import NETGUARD, REPO
from PIL import Image

from geor1.cli import main, run_lightning

EVAL_CONFIGS = sorted(p.name for p in (REPO / "configs" / "eval").glob("*.yaml"))


@pytest.fixture(scope="module")
def world_and_model(tmp_path_factory):
    from geor1.data.geoworld import build_geoworld
    from geor1.model.tiny import save_tiny_checkpoint

    root = tmp_path_factory.mktemp("evalloop")
    world = build_geoworld(root / "gw", num_train=2, num_val=2, num_test=7, seed=5, max_count=3)
    return world, save_tiny_checkpoint(root / "model")


def eval_config(name: str, dest: Path, world: Path, model: Path, out: Path, **extra) -> Path:
    """configs/eval/`name` with the model, data and output replaced, one CPU device, 6 new tokens, batches of 3."""
    cfg = yaml.safe_load((REPO / "configs" / "eval" / name).read_text())
    cfg["trainer"].update(accelerator="cpu", devices=1, strategy="auto", num_nodes=1)
    model_args = cfg["model"]["init_args"]
    model_args["policy"]["init_args"].update(path=str(model), dtype="float32", max_pixels=12544)
    model_args.update(out_dir=str(out), max_new_tokens=6)
    data_args = cfg["data"]["init_args"]
    data_args.update(roots=str(world), batch_size=3, num_workers=0)
    for dotted, value in extra.items():
        node = cfg
        *keys, last = dotted.split(".")
        for k in keys:
            node = node[k]
        node[last] = value
    dest.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def one_process(world_and_model, tmp_path_factory) -> Path:
    """`geor1 test --config configs/eval/geoworld_tiny.yaml` on one process (in this one): the reference of the
    multi-process runs."""
    world, model = world_and_model
    tmp = tmp_path_factory.mktemp("one")
    run_lightning(
        ["test", "--config", str(eval_config("geoworld_tiny.yaml", tmp / "c.yaml", world, model, tmp / "out"))]
    )
    return tmp / "out"


def test_geor1_test_on_geoworld_equals_single_prompt_generation(world_and_model, one_process):
    """`geor1 test --config configs/eval/geoworld_tiny.yaml`: a row per test place, each completion the one a
    single-prompt greedy generate gives, each answer read by the reader, and metrics from those rows."""
    from geor1.eval.samples import load_chat_samples
    from geor1.model.policy import Policy
    from geor1.reading import read_point

    world, model = world_and_model
    out = one_process
    rows = read_rows(out / "predictions.csv")
    samples, skipped = load_chat_samples(world, "test", "geolocate")
    assert skipped == 0 and [r["key"] for r in rows] == sorted(s.key for s in samples)
    policy = Policy(str(model), max_pixels=12544)
    by_key = {s.key: s for s in samples}
    for r in rows:
        s = by_key[r["key"]]
        (text,) = policy.generate([s.prompt], max_new_tokens=6, do_sample=False).texts
        assert r["text"] == text
        reading = read_point(text)
        assert r["how"] == (reading.how or "") and r["reason"] == (reading.reason or "")
        assert float(r["true_lat"]) == s.target.lat and float(r["true_lon"]) == s.target.lon
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == len(rows) == 7
    unread = sum(1 for r in rows if not r["lat"])
    assert metrics["unparseable_share"] == pytest.approx(unread / 7, abs=1e-6)
    assert sum(metrics["unparseable_by_reason"].values()) == unread
    assert (out / "metrics.md").is_file() and (out / "world_map.png").is_file()


def _launch(args: list[str], cwd: Path, **popen) -> subprocess.Popen:
    env = dict(
        os.environ,
        GEOR1_LOG_LEVEL="WARNING",
        PYTHONPATH=os.pathsep.join([str(NETGUARD), os.environ.get("PYTHONPATH", "")]),
    )
    return subprocess.Popen([sys.executable, "-m", "geor1", *args], cwd=cwd, env=env, text=True, **popen)


def _run(args: list[str], cwd: Path) -> None:
    proc = _launch(args, cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-4000:]


def test_two_processes_give_the_same_predictions_and_metrics_as_one(world_and_model, one_process, tmp_path):
    world, model = world_and_model
    one, two = one_process, tmp_path / "two"
    cfg2 = eval_config(
        "geoworld_tiny.yaml",
        tmp_path / "2.yaml",
        world,
        model,
        two,
        **{"trainer.devices": 2, "trainer.strategy": "ddp"},
    )
    _run(["test", "--config", str(cfg2)], tmp_path)
    parts = sorted(p.name for p in (two / "parts").glob("*.jsonl"))
    assert parts == ["rank0.jsonl", "rank1.jsonl"]
    assert all((two / "parts" / p).read_text() for p in parts)  # both ranks evaluated samples
    assert (one / "predictions.csv").read_bytes() == (two / "predictions.csv").read_bytes()
    assert (one / "metrics.json").read_bytes() == (two / "metrics.json").read_bytes()


def _photos(folder: Path, n: int, corrupt: int = 0) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (48 + 8 * (i % 3), 64, 3), dtype=np.uint8)).save(folder / f"p{i}.jpg")
    for i in range(corrupt):
        (folder / f"broken{i}.jpg").write_bytes(b"not a jpeg")
    return folder


def test_killed_and_resumed_predict_ends_with_byte_identical_files(world_and_model, tmp_path):
    _, model = world_and_model
    photos = _photos(tmp_path / "photos", 6)
    args = ["geolocate", str(photos), "--model", str(model), "--max-new-tokens", "6", "--batch-size", "1"]
    args += ["--max-pixels", "12544", "--devices", "1"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    main([*args, "--out", str(whole)])  # uninterrupted, in this process
    proc = _launch([*args, "--out", str(resumed)], tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    part = resumed / "parts" / "rank0.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if part.is_file() and part.read_text().count("\n") >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    killed = proc.returncode == -signal.SIGKILL
    done_before = part.read_text().count("\n")
    with open(part, "a") as f:
        f.write('{"key": "p5.jpg", "lat": 1')  # a line cut short by the kill: done again, not read
    _run([*args, "--out", str(resumed)], tmp_path)
    for name in ("predictions.csv",):
        assert (whole / name).read_bytes() == (resumed / name).read_bytes()
    rows = read_rows(resumed / "predictions.csv")
    assert [r["key"] for r in rows] == sorted(f"p{i}.jpg" for i in range(6))
    assert killed and 2 <= done_before < 6, "the run was not interrupted mid-way: the resume was not exercised"


def test_geolocate_photos_folder_glob_and_csv(world_and_model, tmp_path, capsys):
    """Photos with no coordinates: keys keep their extension, an unreadable photo is skipped and named, a CSV of
    paths and a quoted glob work, and the rows say how each answer was read."""
    _, model = world_and_model
    photos = _photos(tmp_path / "photos", 3, corrupt=1)
    (tmp_path / "list.csv").write_text("path\nphotos/p0.jpg\nphotos/p2.jpg\n")
    common = ["--model", str(model), "--max-new-tokens", "6", "--max-pixels", "12544", "--devices", "1"]
    main(["geolocate", str(photos), "--out", str(tmp_path / "a"), *common])
    rows = read_rows(tmp_path / "a" / "predictions.csv")
    assert [r["key"] for r in rows] == ["p0.jpg", "p1.jpg", "p2.jpg"]  # broken0.jpg skipped (warned)
    assert set(rows[0]) >= {"key", "path", "lat", "lon", "city", "country", "how", "reason", "answer", "reasoning"}
    assert all(bool(r["lat"]) == bool(r["how"]) != bool(r["reason"]) for r in rows)
    assert (tmp_path / "a" / "world_map.png").is_file()
    main(["geolocate", str(tmp_path / "list.csv"), "--out", str(tmp_path / "b"), *common])
    assert [r["key"] for r in read_rows(tmp_path / "b" / "predictions.csv")] == ["photos/p0.jpg", "photos/p2.jpg"]
    main(["geolocate", str(photos / "p[01].jpg"), "--out", str(tmp_path / "c"), *common])
    assert len(read_rows(tmp_path / "c" / "predictions.csv")) == 2
    for bad, needle in ((tmp_path / "nothing", "no such file"), (tmp_path / "x*.jpg", "matches no photo")):
        with pytest.raises(SystemExit) as done:
            main(["geolocate", str(bad), "--out", str(tmp_path / "d"), *common])
        assert done.value.code == 2 and needle in capsys.readouterr().err


def test_predict_config_over_photos(world_and_model, tmp_path):
    """`geor1 predict --config` with the photo data module: the same loop as `geor1 geolocate`."""
    _, model = world_and_model
    photos = _photos(tmp_path / "photos", 2)
    cfg = yaml.safe_load((REPO / "configs" / "eval" / "geoworld_tiny.yaml").read_text())
    cfg["model"]["init_args"]["policy"]["init_args"].update(path=str(model), max_pixels=12544)
    cfg["model"]["init_args"].update(out_dir=str(tmp_path / "out"), max_new_tokens=6)
    cfg["data"] = {"class_path": "geor1.data.photos.PhotoDataModule", "init_args": {"photos": [str(photos)]}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    run_lightning(["predict", "--config", str(tmp_path / "p.yaml")])
    assert [r["key"] for r in read_rows(tmp_path / "out" / "predictions.csv")] == ["p0.jpg", "p1.jpg"]


@pytest.mark.parametrize("name", EVAL_CONFIGS)
def test_every_eval_config_runs(name, world_and_model, tmp_path):
    """Each benchmark config as shipped, with its model, data and output pointed at tiny ones."""
    world, model = world_and_model
    out = tmp_path / "out"
    run_lightning(["test", "--config", str(eval_config(name, tmp_path / "c.yaml", world, model, out))])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 7
    md = (out / "metrics.md").read_text()
    assert "| measured |" in md


def test_geor1_test_on_a_training_config_refuses_in_one_line(world_and_model, tmp_path, capsys):
    world, model = world_and_model
    cfg = yaml.safe_load((REPO / "configs" / "sft" / "geoworld_tiny.yaml").read_text())
    cfg["model"]["init_args"]["policy"]["init_args"]["path"] = str(model)
    cfg["data"]["init_args"]["roots"] = [str(world), str(world)]
    cfg["trainer"].pop("logger", None)
    cfg["trainer"]["callbacks"] = []
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    with pytest.raises(SystemExit) as done:
        main(["test", "--config", str(tmp_path / "sft.yaml")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert done.value.code == 2 and "Traceback" not in err and len(errors) == 1, err
    assert errors[0].startswith("geor1: error: SFTModule trains") and "configs/eval/" in errors[0]


def test_an_evaluation_of_the_wrong_data_is_an_error_not_n_0(world_and_model, tmp_path, capsys):
    """Pair shards evaluated as pairing episodes (every sample unreadable as an episode) and samples that name the
    pairing task evaluated as geolocation: one-line errors, never `n: 0` or another task's answers scored."""
    from conftest import random_episodes

    world, model = world_and_model
    common = ["--model", str(model), "--max-new-tokens", "2", "--max-pixels", "12544", "--devices", "1"]
    with pytest.raises(SystemExit) as done:
        main(["eval", "pairing", "--episodes", str(world), "--out", str(tmp_path / "a"), *common])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "no usable sample" in err and "field 'k'" in err  # the stream's own check
    assert not (tmp_path / "a" / "metrics.json").exists()
    from geor1.cot.synthesize import synthesize

    episodes = random_episodes(world, tmp_path / "ep", splits=("test",))
    synthesize(episodes, tmp_path / "cot", "pairing")  # samples that name their task: "pairing"
    with pytest.raises(SystemExit) as done:
        main(["eval", "geolocate", "--data", str(tmp_path / "cot"), "--out", str(tmp_path / "b"), *common])
    assert done.value.code == 2 and "is a 'pairing' sample" in capsys.readouterr().err


def test_model_free_truth_columns_bad_rows_and_intervals(tmp_path):
    """--truth with its own column names: a bad row is skipped and listed, the rest scored; every accuracy has its
    Wilson interval and the median its order-statistic interval."""
    from geor1.metrics.intervals import median_interval, wilson_interval

    (tmp_path / "truth.csv").write_text(
        "IMG_ID,LAT,LON\na,48.8566,2.3522\nb,40.7128,-74.0060\nbad,north,2\nc,-33.8688,151.2093\n"
    )
    (tmp_path / "pred.csv").write_text(
        'id,text\na,"{""lat"": 48.85, ""lon"": 2.35}"\nb,"Latitude: 40.0, Longitude: -75.0"\nc,I cannot tell.\n'
    )
    out = tmp_path / "out"
    main(
        [
            "eval",
            "geolocate",
            "--predictions",
            str(tmp_path / "pred.csv"),
            "--truth",
            str(tmp_path / "truth.csv"),
            "--out",
            str(out),
        ]
    )
    m = json.loads((out / "metrics.json").read_text())
    skipped = json.loads((out / "skipped-truth.json").read_text())
    assert [s["id"] for s in skipped] == ["bad"] and m["truth_rows_skipped"] == 1
    assert m["n"] == 3 and m["unparseable_by_reason"] == {"no_point": 1}
    rows = read_rows(out / "predictions.csv")
    assert [(r["key"], r["how"], r["reason"]) for r in rows] == [
        ("a", "json", ""),
        ("b", "labels", ""),
        ("c", "", "no_point"),
    ]
    assert (m["acc@25km_ci95_low"], m["acc@25km_ci95_high"]) == pytest.approx(wilson_interval(1, 3), abs=1e-9)
    km = [float(r["km"]) for r in rows if r["km"]]
    lo, hi = median_interval(km)
    assert m["median_km_parsed_ci95_low"] == pytest.approx(lo) and m["median_km_parsed_ci95_high"] == pytest.approx(hi)
    assert m["median_km_parsed_ci95_low"] <= m["median_km_parsed"] <= m["median_km_parsed_ci95_high"]


def test_model_free_truth_with_swapped_columns(tmp_path, capsys):
    """A truth CSV whose header swaps lat and lon (points at sea the way the header reads) is refused with the fix
    named, as every CSV geor1 reads; `--lat-lon-check swap` reads it the other way round."""
    (tmp_path / "truth.csv").write_text("id,lat,lon\na,2.3522,48.8566\nb,-74.0060,40.7128\nc,151.2093,-33.8688\n")
    (tmp_path / "pred.csv").write_text('id,text\na,"48.85, 2.35"\nb,"40.71, -74.0"\nc,"-33.87, 151.21"\n')
    args = ["eval", "geolocate", "--predictions", str(tmp_path / "pred.csv"), "--truth", str(tmp_path / "truth.csv")]
    with pytest.raises(SystemExit) as done:
        main([*args, "--out", str(tmp_path / "a")])
    assert done.value.code == 2 and "look swapped" in capsys.readouterr().err
    main([*args, "--out", str(tmp_path / "b"), "--lat-lon-check", "swap"])
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert m["n"] == 3 and m["acc@25km"] == 1.0


def test_sampled_evaluation_repeats_with_its_seed(world_and_model, tmp_path):
    """do_sample: each batch is seeded from `seed` and its first key, so a rerun gives the same predictions, and
    another seed other ones."""
    world, model = world_and_model
    texts = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        extra = {"model.init_args.do_sample": True, "model.init_args.seed": seed, "model.init_args.max_new_tokens": 12}
        cfg = eval_config("geoworld_tiny.yaml", tmp_path / f"{name}.yaml", world, model, tmp_path / name, **extra)
        run_lightning(["test", "--config", str(cfg)])
        texts.append([r["text"] for r in read_rows(tmp_path / name / "predictions.csv")])
    assert texts[0] == texts[1] and texts[0] != texts[2]


def test_evaluation_batches_prompts_of_like_sizes():
    """The group stage sorts items by prompt size within a window (stable), end-of-stream markers keep their
    skipped keys, and nothing is lost or repeated."""
    from geor1.data.sample import ChatSample, Prompt
    from geor1.data.stream import ShardStream, StreamItem, item_size

    sizes = [(64, 48), (32, 32), (64, 48), (32, 32), (48, 48)]
    items = [StreamItem(ChatSample(f"k{i}", Prompt("<image>q", [Image.new("RGB", s)]))) for i, s in enumerate(sizes)]
    items.append(StreamItem(None, ["bad"], ["field 'x': broken"]))
    stream = ShardStream(["unused.tar"], group_window=4)
    out = list(stream.stage_group(iter(items)))
    keys = [e.item.key if e.item is not None else None for e in out]
    assert keys == ["k1", "k3", "k0", "k2", "k4", None] and out[-1].skipped == ["bad"]
    assert [item_size(e.item) for e in out[:4]] == sorted(item_size(e.item) for e in out[:4])


@pytest.mark.slow  # 2 FSDP2 processes: ~25 s; the 2-process DDP test covers the multi-process loop and empty batches
def test_fsdp2_evaluation_equals_one_process(world_and_model, one_process, tmp_path):
    """`strategy: FSDP2Strategy` on 2 processes (gloo): the model sharded per block, decoding synchronised, the rank
    whose samples run out first stepping with a copy of an earlier prompt (7 samples, batches of 3: 2 batches on one
    rank, 1 on the other); the same predictions and metrics as one process."""
    world, model = world_and_model
    one, two = one_process, tmp_path / "two"
    fsdp = {"class_path": "geor1.objectives.sharding.FSDP2Strategy"}
    cfg = eval_config(
        "geoworld_tiny.yaml", tmp_path / "2.yaml", world, model, two, **{"trainer.devices": 2, "trainer.strategy": fsdp}
    )
    _run(["test", "--config", str(cfg)], tmp_path)
    lines = [len((two / "parts" / f"rank{r}.jsonl").read_text().splitlines()) for r in (0, 1)]
    assert sorted(lines) == [3, 4]  # uneven: one rank stepped with a padding prompt while the other finished
    assert (one / "predictions.csv").read_bytes() == (two / "predictions.csv").read_bytes()
    assert (one / "metrics.json").read_bytes() == (two / "metrics.json").read_bytes()
