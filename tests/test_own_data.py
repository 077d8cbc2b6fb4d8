"""A researcher's own data: every run ends (a pass without a usable sample is an error naming the data, the task and
why the samples were skipped), nothing is dropped silently (a root that names nothing, a validation split a root
lacks, a swapped CSV), and held-out splits are written by place (`--val-fraction`, `--val-cities`), for the VIGOR
layout of one's own cities and for the generic CSV path of docs/data.md."""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import random_image
from stream_ddp_run import write_pairs  # tests/ is on sys.path, as for conftest

import geor1.data.stream as stream_mod
from geor1 import Geor1Error
from geor1.cli import main as cli_main
from geor1.data.chat import ChatShardDataModule
from geor1.data.convert import Row, csv_rows, hold_out, place_of, vigor_rows
from geor1.data.datamodule import PairShardDataModule
from geor1.data.reader import iter_raw_samples, shard_urls, split_shards
from geor1.data.schema import encode_jpeg
from geor1.data.shards import ShardWriter, write_manifest
from geor1.data.stream import ShardStream, StreamLoader

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _geor1_logs(monkeypatch):
    """geor1's logs reach caplog, and the handler an in-process `geor1` command adds (bound to this test's captured
    stderr) leaves with the test: `geor1.cli` sets propagate=False on the first command run in the process."""
    logger = logging.getLogger("geor1")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", True)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """GeoWorld pair shards (no `task` in their json, no episode fields): 4 train, 2 val, 2 test samples."""
    from geor1.data.geoworld import build_geoworld

    root = tmp_path_factory.mktemp("own") / "gw"
    build_geoworld(root, num_train=4, num_val=2, num_test=2, seed=0, max_count=2)
    return root


class Steps(L.LightningModule):
    """Trains on a batch of usable samples; skips (returns None for) an empty one, as the objectives do."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.trained: list[list[str]] = []
        self.validated: list[str] = []

    def training_step(self, batch, batch_idx):
        if len(batch) == 0:
            return None
        self.trained.append([s.key for s in batch])
        return (self.w - 1.0).pow(2).sum()

    def validation_step(self, batch, batch_idx):
        self.validated += [s.key for s in batch]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


# ------------------------------------------------------------------------------------------------ every run ends
def test_pairing_on_pair_shards_is_an_error_not_an_endless_run(world):
    """The issue's run: `task: pairing` on pair shards, `resampled: false`, a step limit. Before, every pass was one
    empty batch (every sample corrupt), no step was trained and Lightning started pass after pass; here the safety
    limit of 20 epochs would end it without an error."""
    dm = ChatShardDataModule(roots=str(world), task="pairing", batch_size=2, shuffle_buffer=0, val_split="")
    module = Steps()
    with pytest.raises(Geor1Error) as err:
        _trainer(max_steps=3, max_epochs=20).fit(module, datamodule=dm)
    text = str(err.value)
    assert text.startswith("train pass 0: no usable sample in root ")
    assert str(world) in text and "split 'train'" in text and "task 'pairing'" in text
    assert "all 4 samples read were skipped" in text
    assert "the most common reason (4 of 4): field 'k': a pairing episode needs integer 'k'" in text
    assert module.trained == []


def test_a_resampled_stream_of_unusable_samples_is_an_error(world, monkeypatch):
    monkeypatch.setattr(stream_mod, "ALL_CORRUPT_LIMIT", 12)
    dm = ChatShardDataModule(
        roots=str(world), task="pairing", batch_size=2, resampled=True, samples_per_epoch=4, val_split=""
    )
    with pytest.raises(Geor1Error) as err:
        next(iter(dm.train_dataloader()))
    text = str(err.value)
    assert f"no usable sample in root {world} (split 'train', task 'pairing')" in text
    assert "the first 12 samples drawn" in text and "most common reason (12 of 12): field 'k'" in text


def _ground_only(root: Path, split: str, n: int) -> None:
    with ShardWriter(root, split) as w:
        for i in range(n):
            w.write(f"{split}{i}", encode_jpeg(random_image(RNG, 8, 8)), None, {"lat": 1.0, "lon": 2.0})
    write_manifest(root, {split: w.close()}, "t", "CC0")


@pytest.mark.parametrize("item", ["pair", "tensors"])
def test_pair_datamodule_on_ground_only_shards_is_an_error(tmp_path, item):
    _ground_only(tmp_path, "train", 3)
    dm = PairShardDataModule(str(tmp_path), item=item, batch_size=2, shuffle_buffer=0, val_split="")
    with pytest.raises(
        Geor1Error,
        match=rf"{re.escape(str(tmp_path))} \(split 'train', {item} items\).*"
        r"all 3 samples read were skipped.*\(3 of 3\): field 'sat.jpg': missing",
    ):
        for _ in dm.train_dataloader():
            pass


def test_a_partly_corrupt_pass_trains_and_ends(world, tmp_path):
    """One root of pairs, one of pairing episodes, `task` from each sample: the pair samples are skipped (counted),
    the episodes trained on, and the run ends at its step limit."""
    from conftest import random_episodes

    episodes = random_episodes(world, tmp_path / "ep")
    dm = ChatShardDataModule(
        roots=[str(world), str(episodes)], task="pairing", batch_size=2, shuffle_buffer=0, val_split=""
    )
    module = Steps()
    _trainer(max_epochs=2).fit(module, datamodule=dm)
    assert module.trained and dm.stream_stats["train"]["passes"] == 2
    pairs = {r["__key__"] for r in iter_raw_samples(split_shards(world, "train"))}
    trained = {k for b in module.trained for k in b}
    assert trained and not trained & pairs  # the episodes only: the pairs were skipped, and counted


def test_a_pass_that_reads_no_sample_is_an_error(tmp_path, caplog):
    shard = tmp_path / "train-000000.tar"
    shard.write_bytes(b"")
    loader = StreamLoader(ShardStream([shard], source="my data"), batch_size=2)
    with caplog.at_level(logging.WARNING), pytest.raises(Geor1Error, match="no usable sample in my data: no sample"):
        list(loader)
    assert "train-000000.tar is truncated" in caplog.text


def test_another_rank_without_a_usable_sample_stops_this_one_too(tmp_path):
    """The pass-end agreement: this rank had usable samples, the other (simulated: its answers to the agreement)
    had none, so no step of the pass could be trained on any rank; every rank raises, none waits."""
    write_pairs(tmp_path, {"train": 4}, max_count=4)
    other = [True, True, False, False]  # the other rank: two batches, then the end, then "no usable sample"
    asked = []

    def agree(mine: bool) -> bool:
        asked.append(mine)
        return mine and other[len(asked) - 1]

    loader = StreamLoader(ShardStream(split_shards(tmp_path, "train")), batch_size=2, agree=agree)
    with pytest.raises(Geor1Error, match=r"another rank had no usable sample .* none of the 4 usable samples of rank"):
        list(loader)
    assert asked == [True, True, False, True]  # batches, the end, then this rank's "I had usable samples"


def test_an_evaluation_of_only_unusable_samples_is_an_error_a_finished_one_is_not(world):
    dm = ChatShardDataModule(roots=str(world), task="pairing", batch_size=2)
    with pytest.raises(Geor1Error, match=r"test pass 0: no usable sample .*split 'test', task 'pairing'.*field 'k'"):
        list(dm.test_dataloader())
    done = ChatShardDataModule(roots=str(world), task="geolocate", batch_size=2)
    keys = [r["__key__"] for r in iter_raw_samples(split_shards(world, "test"))]
    done.exclude_keys(keys)  # an evaluation resumed with every sample written: nothing to read, no error
    assert [len(b) for b in done.test_dataloader()] == []


# ------------------------------------------------------------------------------------------------ nothing dropped
def test_a_misspelt_root_is_an_error_naming_it(world, tmp_path):
    write_pairs(tmp_path / "my_sft_pairing", {"train": 2}, max_count=2)
    typo = str(tmp_path / "my_sft_pairng")
    with pytest.raises(Geor1Error, match=rf"no such shard folder: {re.escape(typo)} \(did you mean .*my_sft_pairing\?"):
        ChatShardDataModule(roots=[typo, str(world)], task="geolocate").train_dataloader()
    with pytest.raises(Geor1Error, match="no such shard folder"):
        shard_urls(typo, "train")
    with pytest.raises(Geor1Error, match="no such shard folder"):
        PairShardDataModule(typo).train_dataloader()


def test_a_root_without_the_split_is_an_error_unless_it_is_validation(world, tmp_path, caplog):
    write_pairs(tmp_path / "only_train", {"train": 2}, max_count=2)
    write_pairs(tmp_path / "only_val", {"val": 2}, max_count=2)
    dm = ChatShardDataModule(roots=[str(world), str(tmp_path / "only_val")], task="geolocate", batch_size=2)
    with pytest.raises(Geor1Error, match=rf"no shards for split 'train' in {re.escape(str(tmp_path / 'only_val'))} "):
        dm.train_dataloader()
    dm = ChatShardDataModule(roots=[str(world), str(tmp_path / "only_train")], task="geolocate", batch_size=2)
    with caplog.at_level(logging.WARNING):
        keys = [s.key for b in dm.val_dataloader() for s in b]
    assert sorted(keys) == sorted(r["__key__"] for r in iter_raw_samples(split_shards(world, "val")))
    assert f"no 'val' shards in {tmp_path / 'only_train'}: validation reads the other roots only" in caplog.text


def test_training_without_a_val_split_runs_without_validation(tmp_path, caplog):
    write_pairs(tmp_path, {"train": 4}, max_count=4)  # one's own data, converted without a held-out split
    for dm in (
        PairShardDataModule(str(tmp_path), batch_size=2, shuffle_buffer=0),
        ChatShardDataModule(roots=[str(tmp_path)], task="geolocate", batch_size=2, shuffle_buffer=0),
    ):
        module = Steps()
        with caplog.at_level(logging.WARNING):
            _trainer(max_epochs=1, num_sanity_val_steps=2).fit(module, datamodule=dm)
        assert len(module.trained) == 2 and module.validated == []
        assert f"no 'val' shards in {tmp_path}: training runs without validation" in caplog.text
        caplog.clear()


SWAPPED = [
    (48.85, 2.35),
    (40.71, -74.0),
    (35.68, 139.69),
    (-23.55, -46.63),
    (55.75, 37.62),
    (19.43, -99.13),
    (-1.29, 36.82),
    (28.61, 77.21),
    (-34.6, -58.38),
    (51.5, -0.12),
    (39.9, 116.4),
    (30.04, 31.24),
]


def _swapped_csv(path: Path) -> Path:
    with open(path, "w", newline="") as f:  # an old im2gps3k copy: the header says LON,LAT over lat,lon values
        w = csv.writer(f)
        w.writerow(["IMG_ID", "LON", "LAT"])
        for i, (lat, lon) in enumerate(SWAPPED):
            w.writerow([f"{i}.jpg", lat, lon])
    return path


def test_every_csv_path_refuses_swapped_coordinates(tmp_path, capsys):
    path = _swapped_csv(tmp_path / "swapped.csv")
    with pytest.raises(Geor1Error, match=r"LAT/LON columns look swapped.*`--lat-col LON --lon-col LAT`"):
        csv_rows(path, tmp_path)  # at once, not when the rows are first read
    # the evaluation's CSV path (`geor1 eval geolocate --data x.csv --images DIR`) reads through csv_rows too:
    # the error comes before any model is loaded
    (tmp_path / "img").mkdir()
    argv = [
        "eval",
        "geolocate",
        "--model",
        str(tmp_path / "no_model"),
        "--data",
        str(path),
        "--images",
        str(tmp_path / "img"),
        "--out",
        str(tmp_path / "ev"),
    ]
    with pytest.raises(SystemExit) as code:
        cli_main(argv)
    assert code.value.code == 2 and "columns look swapped" in capsys.readouterr().err
    # the fix the message names works
    rows = list(csv_rows(path, tmp_path, lat_col="LON", lon_col="LAT"))
    assert (rows[0].meta["lat"], rows[0].meta["lon"]) == SWAPPED[0]


# ------------------------------------------------------------------------------------------------ held-out splits
def _rows(points: list[tuple[float, float]], cities: list[str] | None = None) -> list[Row]:
    return [
        Row(f"r{i}", Path("g.jpg"), None, {"lat": lat, "lon": lon, "city": (cities or ["c"] * len(points))[i]}, "train")
        for i, (lat, lon) in enumerate(points)
    ]


def test_hold_out_by_place_is_deterministic_and_keeps_places_whole():
    rng = np.random.default_rng(1)
    centres = rng.uniform([40.0, -75.0], [41.0, -73.0], size=(30, 2))  # 30 places, 5 photos within ~100 m each
    points = [(float(a + d), float(b + e)) for a, b in centres for d, e in rng.normal(0, 3e-4, size=(5, 2))]
    rows, info = hold_out(_rows(points), val_fraction=0.2, seed=3)
    val = [r for r in rows if r.split == "val"]
    assert 0.1 <= len(val) / len(rows) <= 0.3 and info["rows"] == len(val) and info["of_places"] >= 30
    val_places = {place_of(r.meta["lat"], r.meta["lon"], 1.0) for r in val}
    train_places = {place_of(r.meta["lat"], r.meta["lon"], 1.0) for r in rows if r.split == "train"}
    assert not val_places & train_places
    again, _ = hold_out(list(reversed(_rows(points))), val_fraction=0.2, seed=3)  # any input order
    assert {r.key for r in again if r.split == "val"} == {r.key for r in val}
    other, _ = hold_out(_rows(points), val_fraction=0.2, seed=4)
    assert {r.key for r in other if r.split == "val"} != {r.key for r in val}


def test_hold_out_by_city_and_its_errors():
    points = [(48.85, 2.35), (48.86, 2.36), (35.68, 139.69), (35.69, 139.70)]
    rows, info = hold_out(_rows(points, ["Paris", "Paris", "Tokyo", "Tokyo"]), val_cities=["Tokyo"])
    assert [r.split for r in rows] == ["train", "train", "val", "val"] and info["cities"] == ["Tokyo"]
    with pytest.raises(Geor1Error, match=r"--val-cities \['Rome'\]: no such city .*Paris"):
        hold_out(_rows(points, ["Paris", "Paris", "Tokyo", "Tokyo"]), val_cities=["Rome"])
    with pytest.raises(Geor1Error, match="within 1 place"):
        hold_out(_rows([(48.85, 2.35), (48.8501, 2.3501)]), val_fraction=0.5)
    already = _rows(points)
    already[0].split = "val"
    with pytest.raises(Geor1Error, match="already has a val split"):
        hold_out(already, val_fraction=0.5)
    assert hold_out(_rows(points))[1] == {}  # nothing asked: nothing moved


def _vigor_own(root: Path) -> None:
    """Two of one's own cities in the VIGOR layout, without split lists: 6 panoramas each on a 0.02 degree grid
    (about 2 km apart), a satellite tile 20 m from each, and one panorama in Lyon with no tile near it."""
    for city, (lat0, lon0) in {"Lyon": (45.75, 4.85), "Nantes": (47.21, -1.55)}.items():
        for folder in ("panorama", "satellite"):
            (root / city / folder).mkdir(parents=True)
        for i in range(6):
            lat, lon = round(lat0 + 0.02 * (i % 3), 5), round(lon0 + 0.02 * (i // 3), 5)
            random_image(RNG, 16, 32).save(root / city / "panorama" / f"p{i},{lat},{lon},.jpg")
            tile = f"satellite_{round(lat + 0.00018, 5)}_{lon}.png"  # 20 m north of the panorama
            random_image(RNG, 16, 16).save(root / city / "satellite" / tile)
    random_image(RNG, 16, 32).save(root / "Lyon" / "panorama" / "far,45.9,4.85,.jpg")


def test_vigor_layout_of_ones_own_cities(tmp_path, capsys):
    _vigor_own(tmp_path / "mine")
    rows = list(vigor_rows(tmp_path / "mine", test_cities=["Nantes"]))
    assert sorted({(r.meta["city"], r.split) for r in rows}) == [("Lyon", "train"), ("Nantes", "test")]
    near = next(r for r in rows if r.key == "vigor_Lyon_p0_45_75_4_85")
    assert near.sat is not None and near.sat.name == "satellite_45.75018_4.85.png" and 19 < near.meta["sat_m"] < 21
    far = next(r for r in rows if r.key.startswith("vigor_Lyon_far"))
    assert far.problem is not None and far.problem[0] == "sat.jpg"
    out = tmp_path / "out"
    cli_main(
        [
            "data",
            "convert",
            "vigor",
            "--root",
            str(tmp_path / "mine"),
            "--out",
            str(out),
            "--test-cities",
            "Nantes",
            "--val-fraction",
            "0.34",
            "--seed",
            "0",
        ]
    )
    printed = capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"]["samples"] + manifest["splits"]["val"]["samples"] == 6  # Lyon, less "far"
    assert manifest["splits"]["val"]["samples"] == 2 and manifest["splits"]["test"]["samples"] == 6
    assert manifest["held_out"]["fraction"] == 0.34 and manifest["skipped"] == 1 and "far" in printed
    metas = [json.loads(r["json"]) for r in iter_raw_samples(split_shards(out, "val"))]
    assert {m["city"] for m in metas} == {"Lyon"} and {m["country"] for m in metas} == {"FR"}  # reverse-geocoded


def _docs_block(marker: str) -> str:
    """The fenced code block of docs/data.md that starts with `marker`: the docs' example is what is tested."""
    text = (ROOT / "docs" / "data.md").read_text(encoding="utf-8")
    for block in re.findall(r"^```\w*\n(.*?)^```", text, re.S | re.M):
        if block.startswith(marker):
            return block
    raise AssertionError(f"docs/data.md has no code block starting with {marker!r}")


def test_the_generic_path_for_coordinates_in_file_names(tmp_path, monkeypatch):
    """docs/data.md's worked example, run as written: photos and tiles named `<id>_<lat>_<lon>_{ground,sat}.jpg`
    in a folder per split, the documented script writes a CSV per split, `convert csv --sat-col` per split into
    one folder, the first with a held-out fraction; the pair DataModule then reads train, val and test."""
    for i in range(12):
        lat, lon = 45.0 + 0.05 * i, 7.0 + 0.03 * (i % 4)  # 12 places about 5 km apart, near Turin
        folder = tmp_path / "my_photos" / ("test" if i >= 9 else "train")
        folder.mkdir(parents=True, exist_ok=True)
        for view in ("ground", "sat"):
            random_image(RNG, 16, 24).save(folder / f"p{i:02d}_{lat:.5f}_{lon:.5f}_{view}.jpg")
    monkeypatch.chdir(tmp_path)
    exec(compile(_docs_block("# make_csvs.py"), "make_csvs.py", "exec"), {"__name__": "__main__"})
    for line in (
        _docs_block("geor1 data convert csv --csv train.csv").strip().split("\n\n")
    ):  # one command per paragraph
        cli_main(line.replace("\\\n", " ").split()[1:])
    dm = PairShardDataModule("data/my_pairs", batch_size=4, shuffle_buffer=0)
    seen = {split: [s.key for b in dm._loader(split, False) for s in b] for split in ("train", "val", "test")}
    assert len(seen["train"]) + len(seen["val"]) == 9 and len(seen["test"]) == 3 and len(seen["val"]) >= 1
    sample = next(iter(dm.train_dataloader()))[0]
    assert sample.sat is not None and 45.0 <= sample.meta["lat"] <= 45.6
    assert json.loads(Path("data/my_pairs/manifest.json").read_text())["held_out"]["fraction"] == 0.2
