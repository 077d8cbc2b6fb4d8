"""Schema, shard writing and streaming: plain webdataset compatibility, corrupt samples, truncated shards."""

from __future__ import annotations

import io
import json
import math
import tarfile

import numpy as np
import pytest
import torch
import webdataset as wds
from conftest import random_image

from geor1.data.datamodule import PairShardDataModule
from geor1.data.schema import SampleError, encode_jpeg, validate_meta
from geor1.data.shards import ShardWriter, write_manifest
from geor1.data.stream import ShardStream, StreamLoader

GOOD = {"lat": 48.85, "lon": 2.35, "city": "Paris", "country": "FR", "source": "t"}


def _jpeg(seed: int, h: int = 24, w: int = 32) -> bytes:
    return encode_jpeg(random_image(np.random.default_rng(seed), h, w))


@pytest.mark.parametrize(
    "meta, field",
    [
        ({"lon": 2.0}, "lat"),
        ({"lat": 91.0, "lon": 0.0}, "lat"),
        ({"lat": 0.0, "lon": -180.5}, "lon"),
        ({"lat": math.nan, "lon": 0.0}, "lat"),
        ({"lat": "48", "lon": 0.0}, "lat"),
        ({"lat": 0.0, "lon": 0.0, "country": "France"}, "country"),
        ({"lat": 0.0, "lon": 0.0, "heading": 360.0}, "heading"),
        ({"lat": 0.0, "lon": 0.0, "city": 3}, "city"),
    ],
)
def test_bad_metadata_names_the_field(meta, field):
    with pytest.raises(SampleError) as err:
        validate_meta("k1", meta)
    assert err.value.field == field and "k1" in str(err.value)


def test_writer_rejects_bad_samples_with_key_and_field(tmp_path):
    with ShardWriter(tmp_path, "train") as w:
        with pytest.raises(SampleError, match=r"sample 'a\.b'"):
            w.write("a.b", _jpeg(0), _jpeg(1), GOOD)  # dots break WebDataset keys
        with pytest.raises(SampleError, match=r"field 'sat\.jpg'"):
            w.write("k", _jpeg(0), b"PNG...", GOOD)
        w.write("k", _jpeg(0), _jpeg(1), GOOD)
        with pytest.raises(SampleError, match="duplicate"):
            w.write("k", _jpeg(0), _jpeg(1), GOOD)


def _write_split(root, split, n, max_count=4, start=0):
    with ShardWriter(root, split, max_count=max_count) as w:
        for i in range(start, start + n):
            w.write(f"s{i:04d}", _jpeg(i), _jpeg(10_000 + i), dict(GOOD, lat=float(i % 80)))
    return w.close()


def test_shards_round_trip_through_plain_webdataset(tmp_path):
    stats = _write_split(tmp_path, "train", 10, max_count=4)
    write_manifest(tmp_path, {"train": stats}, "t", "CC0")
    assert stats["shards"] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["splits"]["train"]["samples"] == 10 and manifest["schema_version"] == 1
    urls = [str(tmp_path / s) for s in stats["shards"]]
    seen = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert [s["__key__"] for s in seen] == [f"s{i:04d}" for i in range(10)]
    assert seen[3]["json"]["lat"] == 3.0 and seen[3]["ground.jpg"].size == (32, 24)
    # deterministic bytes: the same samples again give identical shards
    again = tmp_path / "again"
    _write_split(again, "train", 10, max_count=4)
    for s in stats["shards"]:
        assert (tmp_path / s).read_bytes() == (again / s).read_bytes()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def plant_corrupt_shard(path, start: int = 100) -> tuple[list[str], list[str]]:
    """A shard with valid samples and one of each kind of corrupt sample; returns (valid keys, corrupt keys)."""
    valid, corrupt = [], []
    with tarfile.open(path, "w") as tar:

        def good(i):
            key = f"g{i}"
            _add(tar, f"{key}.ground.jpg", _jpeg(i))
            _add(tar, f"{key}.sat.jpg", _jpeg(i + 1))
            _add(tar, f"{key}.json", json.dumps(dict(GOOD, lat=1.0)).encode())
            valid.append(key)

        good(start)
        bad = {
            "bad_jpeg": (b"\xff\xd8 not really a jpeg", _jpeg(1), json.dumps(GOOD).encode()),
            "bad_json": (_jpeg(2), _jpeg(3), b"{lat: 1"),
            "no_lat": (_jpeg(2), _jpeg(3), json.dumps({"lon": 1.0}).encode()),
            "nan_lat": (_jpeg(2), _jpeg(3), b'{"lat": NaN, "lon": 1.0}'),
            "far_lon": (_jpeg(2), _jpeg(3), json.dumps({"lat": 1.0, "lon": 400.0}).encode()),
            "no_sat": (_jpeg(2), None, json.dumps(GOOD).encode()),
            "empty_ground": (b"", _jpeg(3), json.dumps(GOOD).encode()),
        }
        for key, (g, s, m) in bad.items():
            _add(tar, f"{key}.ground.jpg", g)
            if s is not None:
                _add(tar, f"{key}.sat.jpg", s)
            _add(tar, f"{key}.json", m)
            corrupt.append(key)
            good(start + len(valid))
    return valid, corrupt


@pytest.mark.parametrize("num_workers", [0, 2])
def test_stream_skips_and_counts_with_workers(tmp_path, num_workers):
    a, b = tmp_path / "a", tmp_path / "b"
    valid, corrupt = plant_corrupt_shard(a.with_suffix(".tar"))
    valid2, corrupt2 = plant_corrupt_shard(b.with_suffix(".tar"), start=900)
    zero = tmp_path / "zero.tar"
    zero.write_bytes(b"")
    stream = ShardStream([a.with_suffix(".tar"), zero, b.with_suffix(".tar")], shuffle_buffer=4, seed=3)
    loader = StreamLoader(stream, batch_size=3, num_workers=num_workers)
    keys, skipped = [], []
    orders = []
    for epoch in range(2):
        keys, skipped = [], []
        for batch in loader:
            keys += [s.key for s in batch]
            skipped += batch.skipped
        assert sorted(keys) == sorted(valid + valid2), f"epoch {epoch}"
        assert sorted(skipped) == sorted(corrupt + corrupt2)  # same names in both shards: both counted
        orders.append(keys)
    assert orders[0] != orders[1]  # a new order each epoch


def test_truncated_shard_keeps_samples_before_the_damage(tmp_path, caplog):
    _write_split(tmp_path, "train", 8, max_count=100)
    shard = tmp_path / "train-000000.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    dm = PairShardDataModule(str(tmp_path), batch_size=4, shuffle_buffer=0)
    with caplog.at_level("WARNING"):
        keys = [s.key for batch in dm.train_dataloader() for s in batch]
    assert 1 <= len(keys) < 8 and keys == [f"s{i:04d}" for i in range(len(keys))]
    assert "train-000000.tar is truncated" in caplog.text


def test_datamodule_partitions_across_ranks_and_workers(tmp_path, monkeypatch):
    _write_split(tmp_path, "train", 13, max_count=3)  # 5 shards
    import geor1.data.stream as stream_mod

    seen = []
    for rank in range(2):
        monkeypatch.setattr(stream_mod, "_rank_and_world", lambda r=rank: (r, 2))
        dm = PairShardDataModule(str(tmp_path), batch_size=2, num_workers=2, shuffle_buffer=5, seed=1)
        seen += [s.key for batch in dm.train_dataloader() for s in batch]
    assert sorted(seen) == [f"s{i:04d}" for i in range(13)]  # 4 readers, 5 shards: each sample exactly once


def test_tensor_items_and_errors(tmp_path):
    _write_split(tmp_path, "val", 3)
    dm = PairShardDataModule(str(tmp_path), item="tensors", ground_size=(32, 48), sat_size=40, batch_size=3)
    batch = next(iter(dm.val_dataloader()))
    from geor1.data import normalise

    assert batch["ground"].shape == (3, 3, 32, 48) and batch["sat"].shape == (3, 3, 40, 40)
    assert batch["ground"].dtype == torch.uint8 and batch["key"] == ["s0000", "s0001", "s0002"]
    x = normalise(batch["sat"])
    assert x.dtype == torch.float32 and -3 < float(x.min()) < float(x.max()) < 3
    from geor1 import Geor1Error

    with pytest.raises(Geor1Error, match="no shards for split 'train'"):
        dm.train_dataloader()


def test_fit_logs_skipped_samples(tmp_path):
    import lightning as L
    import torch

    from geor1.data.health import DataHealth

    (tmp_path / "shards").mkdir()
    valid, corrupt = plant_corrupt_shard(tmp_path / "shards" / "train-000000.tar")

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen += [s.key for s in batch]
            return (self.w - 1.0).pow(2).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    health = DataHealth()
    probe = Probe()
    dm = PairShardDataModule(str(tmp_path / "shards"), batch_size=2, val_split="")
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[health],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        accelerator="cpu",
    )
    trainer.fit(probe, datamodule=dm)
    assert sorted(probe.seen) == sorted(valid)
    assert health.total == len(corrupt) and sorted(health.skipped_keys) == sorted(corrupt)
    assert trainer.callback_metrics["data/skipped"] == len(corrupt)
