"""Shards read through webdataset from WebDataset URL specs: brace ranges, globs, `pipe:` commands, `file:` URLs and
a local HTTP server (127.0.0.1, allowed by the network guard): every sample arrives once, corrupt ones are counted,
a truncated shard is named and never yields a half sample, and a bad spec or an unreachable URL is a clear error."""

from __future__ import annotations

import functools
import http.server
import io
import logging
import socket
import tarfile
import threading

import pytest
from test_data_shards import _write_split, plant_corrupt_shard

from geor1 import Geor1Error
from geor1.data.datamodule import PairShardDataModule
from geor1.data.inspect import inspect_shards
from geor1.data.reader import iter_raw_samples, shard_urls, split_shards
from geor1.data.schema import SampleError
from geor1.data.stream import ShardStream, StreamLoader

ALL_KEYS = [f"s{i:04d}" for i in range(10)]


@pytest.fixture
def shards(tmp_path):
    """train-000000..000002: 10 valid samples; train-000003: planted valid and corrupt samples; one val shard."""
    _write_split(tmp_path, "train", 10, max_count=4)
    valid, corrupt = plant_corrupt_shard(tmp_path / "train-000003.tar")
    _write_split(tmp_path, "val", 2, start=500)
    return tmp_path, ALL_KEYS + valid, corrupt


def _read(root: str, num_workers: int = 0, **kw) -> tuple[list[str], list[str]]:
    dm = PairShardDataModule(root, batch_size=3, num_workers=num_workers, shuffle_buffer=4, **kw)
    keys, skipped = [], []
    for batch in dm.train_dataloader():
        keys += [s.key for s in batch]
        skipped += batch.skipped
    return keys, skipped


@pytest.mark.parametrize("num_workers", [0, 2])
def test_pipe_brace_range_reads_every_sample_once(shards, num_workers):
    root, valid, corrupt = shards
    keys, skipped = _read(f"pipe:cat {root}/train-{{000000..000003}}.tar", num_workers)
    assert sorted(keys) == sorted(valid) and len(keys) == len(set(keys))
    assert sorted(skipped) == sorted(corrupt)


def test_glob_file_url_and_split_placeholder(shards):
    root, valid, corrupt = shards
    for spec in (
        f"{root}/train-*.tar",
        f"file://{root}/{{split}}-{{000000..000003}}.tar",
        f"{root}/train-00000[01].tar::{root}/train-00000[23].tar",
    ):
        keys, skipped = _read(spec)
        assert sorted(keys) == sorted(valid), spec
        assert sorted(skipped) == sorted(corrupt), spec
    # without `{split}`, a spec's URLs are kept by the split their names carry
    assert [u.rsplit("/", 1)[-1] for u in shard_urls(f"{root}/*.tar", "val")] == ["val-000000.tar"]
    assert shard_urls(f"{root}/train-*.tar", "test") == []


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the test output stays readable
        pass


@pytest.fixture
def http_root(shards):
    root, valid, corrupt = shards
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", valid, corrupt
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_http_server_reads_every_sample_once(http_root, num_workers):
    url, valid, corrupt = http_root
    keys, skipped = _read(f"{url}/{{split}}-{{000000..000003}}.tar", num_workers, val_split="")
    assert sorted(keys) == sorted(valid) and len(keys) == len(set(keys))
    assert sorted(skipped) == sorted(corrupt)
    # the other readers take the same specs: raw samples, `data inspect`
    raws = list(iter_raw_samples(shard_urls(f"{url}/train-{{000000..000003}}.tar", "train")))
    assert len(raws) == len(valid) + len(corrupt)
    report = inspect_shards(f"{url}/train-{{000000..000003}}.tar")
    assert report["splits"]["train"] == {"valid": len(valid) + 1, "corrupt": len(corrupt) - 1, "ground_only": 1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_url_and_bad_specs_are_clear_errors(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}/train-000000.tar"
    with pytest.raises(Geor1Error, match=f"cannot open shard {url}"):
        list(iter_raw_samples([url]))
    with pytest.raises(Geor1Error, match="no such file"):
        shard_urls(f"{tmp_path}/train-{{000000..000001}}.tar", "train")
    with pytest.raises(Geor1Error, match="names no shard"):
        shard_urls(f"{tmp_path}/train-*.tar", "train")
    with pytest.raises(Geor1Error, match="cannot open shard"):
        list(iter_raw_samples([str(tmp_path / "gone.tar")]))


def test_http_404_is_a_clear_error(http_root):
    url, _, _ = http_root
    with pytest.raises(Geor1Error, match=r"cannot open shard .*/train-000009\.tar.*404"):
        list(iter_raw_samples([f"{url}/train-000009.tar"]))


def _member_offsets(path) -> list[int]:
    """Where each member's header starts, and where the archive's end-of-archive marker starts (last)."""
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    last = members[-1]
    return [m.offset for m in members] + [last.offset_data + -(-last.size // 512) * 512]


@pytest.mark.parametrize("cut", ["mid_file", "on_header", "in_marker"])
def test_truncated_shard_through_a_pipe_is_named_and_gives_no_half_sample(tmp_path, caplog, cut):
    _write_split(tmp_path, "train", 6, max_count=100)  # 3 files per sample, one shard
    shard = tmp_path / "train-000000.tar"
    data = shard.read_bytes()
    offsets = _member_offsets(shard)
    if cut == "mid_file":
        end = offsets[7] + 700  # inside the 3rd sample's second file: samples 0 and 1 are complete
        expected = ALL_KEYS[:2]
    elif cut == "on_header":
        end = offsets[8]  # right before the 3rd sample's json: tarfile alone ends quietly with 2 files of it
        expected = ALL_KEYS[:2]
    else:
        end = offsets[-1] + 512  # all members complete, the end-of-archive marker cut: the last sample is dropped
        expected = ALL_KEYS[:5]
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "train-000000.tar").write_bytes(data[:end])
    broken: list[dict] = []
    with caplog.at_level(logging.WARNING):
        raws = list(iter_raw_samples([f"pipe:cat {tmp_path}/cut/train-000000.tar"], on_broken_shard=broken.append))
    assert [r["__key__"] for r in raws] == expected
    assert all({"ground.jpg", "sat.jpg", "json"} <= set(r) for r in raws)
    assert "train-000000.tar is truncated" in caplog.text and len(broken) == 1


def test_pipe_command_failure_is_named(tmp_path, caplog):
    broken: list[dict] = []
    with caplog.at_level(logging.WARNING):
        raws = list(iter_raw_samples([f"pipe:cat {tmp_path}/missing.tar"], on_broken_shard=broken.append))
    assert raws == [] and len(broken) == 1 and "missing.tar" in broken[0]["shard"]


def test_fewer_shards_than_readers_reads_each_sample_once(tmp_path, monkeypatch):
    import geor1.data.stream as stream_mod

    _write_split(tmp_path, "train", 11, max_count=100)  # one shard, 2 ranks x 2 workers
    seen = []
    for rank in range(2):
        monkeypatch.setattr(stream_mod, "_rank_and_world", lambda r=rank: (r, 2))
        dm = PairShardDataModule(f"pipe:cat {tmp_path}/train-000000.tar", batch_size=2, num_workers=2, val_split="")
        seen += [s.key for batch in dm.train_dataloader() for s in batch]
    assert sorted(seen) == [f"s{i:04d}" for i in range(11)]


def test_resampled_order_is_a_function_of_seed_and_epoch(tmp_path):
    _write_split(tmp_path, "train", 10, max_count=3)
    urls = split_shards(tmp_path, "train")

    def pass_keys(epoch: int, seed: int = 0) -> list[str]:
        stream = ShardStream(urls, shuffle_buffer=4, seed=seed, resampled=True, samples_per_epoch=7)
        loader = StreamLoader(stream, start_pass=epoch, batch_size=7)
        return [s.key for s in next(iter(loader))]

    assert pass_keys(1) == pass_keys(1) and len(pass_keys(1)) == 7
    assert pass_keys(0) != pass_keys(1) or pass_keys(0, seed=1) != pass_keys(0)


def test_raw_samples_keep_extension_case_and_skip_non_files(tmp_path):
    path = tmp_path / "x-000000.tar"
    with tarfile.open(path, "w") as tar:
        folder = tarfile.TarInfo("dir")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, payload in (("a.JSON", b"{}"), ("a.ground.jpg", b"g"), ("b.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    raws = list(iter_raw_samples([path]))
    assert [sorted(k for k in r if not k.startswith("__")) for r in raws] == [["JSON", "ground.jpg"], ["json"]]


def _tar_bytes(fmt: int, names: list[str], compress: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compress}" if compress else "w", format=fmt) as tar:
        folder = tarfile.TarInfo("d")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for i, name in enumerate(names):
            payload = f"payload {i} ".encode() * (i * 97 + 1)
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


@pytest.mark.parametrize(
    "fmt, compress",
    [
        (tarfile.USTAR_FORMAT, ""),
        (tarfile.GNU_FORMAT, ""),
        (tarfile.PAX_FORMAT, ""),
        (tarfile.GNU_FORMAT, "gz"),
        (tarfile.PAX_FORMAT, "bz2"),
        (tarfile.USTAR_FORMAT, "xz"),
    ],
)
def test_tar_members_match_webdataset_tar_iterator(tmp_path, fmt, compress):
    """geor1's tar member reader yields what webdataset's `tar_file_iterator` (Python's tarfile) yields."""
    from webdataset.tariterators import tar_file_iterator

    from geor1.data.reader import tar_members

    long_dir = "d/" + "x" * 120  # beyond ustar's 100-character names: prefix field, GNU long name or pax path
    names = ["a.json", "a.ground.jpg", f"{long_dir}/b.json", "__meta__", "c.txt"]
    if fmt == tarfile.USTAR_FORMAT:
        names[2] = "d/" + "x" * 90 + "/b.json"
    data = _tar_bytes(fmt, names, compress)
    ours = [(f["fname"], f["data"]) for f in tar_members(io.BytesIO(data), "u")]
    theirs = [(f["fname"], f["data"]) for f in tar_file_iterator(io.BytesIO(data))]
    assert ours == theirs and len(ours) == 4


def test_not_a_tar_file_is_a_broken_shard(tmp_path, caplog):
    path = tmp_path / "train-000000.tar"
    path.write_bytes(b"this is no tar archive " * 100)
    broken: list[dict] = []
    with caplog.at_level(logging.WARNING):
        assert list(iter_raw_samples([path], on_broken_shard=broken.append)) == []
    assert "not a tar file" in broken[0]["error"] and "train-000000.tar" in caplog.text


def test_fast_decoders_keep_the_pixels(tmp_path):
    """torchvision's JPEG decoder gives PIL's pixels; grey JPEGs and PNGs go through PIL; tensor items come out at
    the asked size, by reduced-size decoding when the source is at least twice as large."""
    import numpy as np
    from conftest import random_image
    from PIL import Image

    from geor1.data.schema import decode_image, decode_image_tensor, encode_jpeg, jpeg_size

    image = random_image(np.random.default_rng(1), 96, 160)
    jpeg = encode_jpeg(image)
    assert jpeg_size(jpeg) == (160, 96)
    reference = Image.open(io.BytesIO(jpeg)).convert("RGB")
    fast = decode_image("k", "ground.jpg", jpeg)
    assert fast.mode == "RGB" and fast.size == (160, 96) and np.array_equal(np.asarray(fast), np.asarray(reference))
    tensor = decode_image_tensor("k", "ground.jpg", jpeg, (96, 160))
    assert tensor.shape == (96, 160, 3) and np.array_equal(tensor.numpy(), np.asarray(reference))
    grey, png = io.BytesIO(), io.BytesIO()
    image.convert("L").save(grey, "JPEG")
    image.save(png, "PNG")
    for data in (grey.getvalue(), png.getvalue()):
        assert decode_image("k", "g", data).mode == "RGB"
        assert decode_image_tensor("k", "g", data, (48, 80)).shape == (48, 80, 3)
    small = decode_image_tensor("k", "g", jpeg, (40, 64))  # 2.4x smaller: decoded at half size, then resized
    expected = np.asarray(reference.resize((64, 40), Image.Resampling.BILINEAR), dtype=np.float32)
    assert small.shape == (40, 64, 3) and np.abs(small.numpy().astype(np.float32) - expected).mean() < 8
    with pytest.raises(SampleError, match=r"field 'g': undecodable"):
        decode_image_tensor("k", "g", jpeg[:300], (40, 64))


def test_fast_decoders_keep_pils_decompression_bomb_limit(monkeypatch):
    """An image over twice PIL's pixel limit is a corrupt sample (DecompressionBombError) whichever decoder runs:
    torchvision's fast path does not take in what PIL refuses."""
    import numpy as np
    from conftest import random_image
    from PIL import Image

    from geor1.data.schema import decode_image, decode_image_tensor, encode_jpeg

    jpeg = encode_jpeg(random_image(np.random.default_rng(1), 40, 50))  # 2000 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 900)
    with pytest.raises(SampleError, match="DecompressionBomb"):
        decode_image("k", "g", jpeg)
    with pytest.raises(SampleError, match="DecompressionBomb"):
        decode_image_tensor("k", "g", jpeg, (40, 50))


def test_chat_datamodule_reads_url_specs(tmp_path):
    """ChatShardDataModule `roots` take the same specs: a folder and a `pipe:` spec of the same shards, weighted."""
    from geor1.cot.synthesize import synthesize
    from geor1.data.chat import ChatShardDataModule
    from geor1.data.geoworld import build_geoworld

    world = build_geoworld(tmp_path / "gw", num_train=5, num_val=1, num_test=1, seed=2)
    synthesize(world, tmp_path / "sft", "geolocate", splits=("train",))
    folder = [s.key for b in ChatShardDataModule(str(tmp_path / "sft"), batch_size=2).train_dataloader() for s in b]
    spec = f"pipe:cat {tmp_path}/sft/{{split}}-000000.tar"
    dm = ChatShardDataModule([spec, str(tmp_path / "sft")], batch_size=2, shuffle_buffer=0, root_weights=[1, 2])
    keys = [s.key for b in dm.train_dataloader() for s in b]
    assert len(folder) == 5 and sorted(keys) == sorted(folder * 3)


def test_tensor_batches_are_the_same_with_workers(tmp_path):
    """Tensor items decoded in workers (stacked into shared memory) equal those decoded in the main process; the
    batch is [B, 3, H, W] uint8 whatever the path (full-size decode, reduced-size decode for a 2x smaller target)."""
    import torch

    _write_split(tmp_path, "train", 7, max_count=3)  # 24 x 32 images

    def items(workers: int, size: tuple[int, int]) -> dict:
        dm = PairShardDataModule(
            str(tmp_path),
            item="tensors",
            ground_size=size,
            sat_size=size[0],
            batch_size=3,
            num_workers=workers,
            shuffle_buffer=0,
            val_split="",
        )
        out = {}
        for batch in dm.train_dataloader():
            assert batch["ground"].shape[1:] == (3, *size) and batch["ground"].dtype == torch.uint8
            rows = zip(batch["key"], batch["ground"], batch["sat"], strict=True)
            out.update({k: (g.clone(), s.clone()) for k, g, s in rows})
        return out

    for size in ((24, 32), (12, 16)):
        main, workers = items(0, size), items(2, size)
        assert sorted(main) == sorted(workers) == [f"s{i:04d}" for i in range(7)]
        assert all(torch.equal(main[k][0], workers[k][0]) and torch.equal(main[k][1], workers[k][1]) for k in main)


def test_local_folder_with_a_colon_in_its_name_is_a_folder(tmp_path, monkeypatch):
    """A relative folder `gw:v2` looks like a URL scheme to urlparse: it is still the local dataset folder, and its
    shards open as local files (not as an unknown `gw:` URL)."""
    _write_split(tmp_path / "gw:v2", "train", 5, max_count=3)
    monkeypatch.chdir(tmp_path)
    for root in ("gw:v2", "./gw:v2"):
        urls = shard_urls(root, "train")
        assert len(urls) == 2, root
        assert sorted(raw["__key__"] for raw in iter_raw_samples(urls)) == [f"s{i:04d}" for i in range(5)]


def _small_tar(n: int = 4) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(n):
            info = tarfile.TarInfo(f"k{i}.bin")
            info.size = 3000
            tar.addfile(info, io.BytesIO(bytes(3000)))
    return buf.getvalue()


class _CutChunkedHandler(http.server.BaseHTTPRequestHandler):
    """Serves a tar with chunked transfer encoding and drops the connection inside its second chunk."""

    protocol_version = "HTTP/1.1"
    data = _small_tar()

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        half = len(self.data) // 2
        self.wfile.write(b"%x\r\n" % half + self.data[:half] + b"\r\n")
        self.wfile.write(b"%x\r\n" % (len(self.data) - half) + self.data[half : half + 100])  # cut in the chunk
        self.wfile.flush()
        self.close_connection = True


def test_cut_chunked_http_response_and_corrupt_gzip_shard_are_broken_shards(tmp_path, caplog):
    """A chunked HTTP response cut short (http.client.IncompleteRead) and a gzip shard with damaged data
    (zlib.error) are truncated/unreadable shards like the others: named, reported, the stream goes on."""
    import gzip

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CutChunkedHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    damaged = bytearray(gzip.compress(_small_tar()))
    damaged[len(damaged) // 2 : len(damaged) // 2 + 20] = bytes(range(20))
    (tmp_path / "bad.tar.gz").write_bytes(bytes(damaged))
    (tmp_path / "good.tar").write_bytes(_small_tar(2))
    url = f"http://127.0.0.1:{server.server_address[1]}/train-000000.tar"
    broken: list[dict[str, str]] = []
    try:
        with caplog.at_level(logging.WARNING):
            raws = list(
                iter_raw_samples([url, str(tmp_path / "bad.tar.gz"), str(tmp_path / "good.tar")], broken.append)
            )
    finally:
        server.shutdown()
        server.server_close()
    assert [b["shard"] for b in broken] == [url, str(tmp_path / "bad.tar.gz")]
    assert "IncompleteRead" in broken[0]["error"] and "error" in broken[1]["error"]
    assert [r["__key__"] for r in raws][-2:] == ["k0", "k1"]  # the good shard after them is read


def test_a_glob_part_of_a_spec_that_matches_nothing_is_an_error(shards):
    """`a/*.tar::b/*.tar` with a mistyped `b`: an error naming the part, not a run on `a`'s shards alone."""
    root, _, _ = shards
    with pytest.raises(Geor1Error, match=r"typo-.*names no shard"):
        shard_urls(f"{root}/train-*.tar::{root}/typo-*.tar", "train")


def test_rank_is_taken_when_the_pass_starts_not_in_the_reader(tmp_path, monkeypatch):
    """The fast test of the path below: the rank noted by `set_epoch` (main process) is the one the readers use,
    even where `_rank_and_world` says rank 0 of 1 (a worker started without the process group)."""
    import geor1.data.stream as stream_mod

    _write_split(tmp_path, "train", 8, max_count=2)  # 4 shards
    urls = split_shards(tmp_path, "train")
    monkeypatch.setattr(stream_mod, "_rank_and_world", lambda: (1, 2))
    it = iter(StreamLoader(ShardStream(urls), batch_size=8, agree=lambda b: b))  # the pass starts here
    monkeypatch.setattr(stream_mod, "_rank_and_world", lambda: (0, 1))
    assert sorted(s.key for batch in it for s in batch) == ["s0002", "s0003", "s0006", "s0007"]


@pytest.mark.slow
def test_spawned_workers_read_their_rank_s_shards(tmp_path, monkeypatch):
    """DataLoader workers started by `spawn` (or forkserver, Python 3.14's default on Linux) hold no process
    group: the rank and world size are taken in the main process when a pass starts, so that two ranks still read
    disjoint shards (not each rank all of them)."""
    import geor1.data.stream as stream_mod

    _write_split(tmp_path, "train", 8, max_count=2)  # 4 shards: 2 ranks x 1 worker
    urls = split_shards(tmp_path, "train")
    seen = []
    for rank in range(2):
        monkeypatch.setattr(stream_mod, "_rank_and_world", lambda r=rank: (r, 2))
        loader = StreamLoader(
            ShardStream(urls), batch_size=8, num_workers=1, multiprocessing_context="spawn", agree=lambda b: b
        )
        seen += [s.key for batch in loader for s in batch]
    assert sorted(seen) == [f"s{i:04d}" for i in range(8)]


def test_an_unusable_torchvision_decoder_is_said_once_and_pil_decodes(monkeypatch, caplog):
    import numpy as np
    import torch
    from PIL import Image

    from geor1.data import schema

    def changed(*args):  # an operator whose signature changed in a torchvision release
        raise RuntimeError("decode_jpeg() expected 4 arguments")

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 24, 3), dtype=np.uint8)).save(buf, format="JPEG")
    monkeypatch.setattr(torch.ops.image, "decode_jpeg", changed)
    schema._decode_jpeg_op.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="geor1.data.schema"):
            images = [schema.decode_image("k", "ground.jpg", buf.getvalue()) for _ in range(3)]
    finally:
        monkeypatch.undo()
        schema._decode_jpeg_op.cache_clear()
    said = [r for r in caplog.records if "JPEG decoder is unusable" in r.getMessage()]
    assert len(said) == 1  # once, not per image
    expected = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert all(np.array_equal(np.asarray(im), expected) for im in images)
