"""Bad input at the CLI: one line naming the cause, a non-zero exit, no traceback."""

from __future__ import annotations

import json

import numpy as np
from conftest import run_cli


def _one_line_error(res, *needles: str) -> None:
    assert res.returncode != 0
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    for needle in needles:
        assert needle in res.stderr, (needle, res.stderr[-2000:])


def test_user_errors_are_one_line(tmp_path):
    from geor1.retrieval.index import IndexSpec, SatIndex

    # an index with 3 train tiles: K=8 cannot be mined
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(3, 4)).astype(np.float32)
    meta = [{"key": f"k{i}", "lat": float(i), "lon": float(10 * i), "split": "train"} for i in range(3)]
    SatIndex.build(vecs, vecs, meta, IndexSpec()).save(tmp_path / "idx")
    (tmp_path / "empty_idx").mkdir()
    for name in ("index.faiss", "sat.npy", "index.json"):
        (tmp_path / "empty_idx" / name).write_bytes((tmp_path / "idx" / name).read_bytes())
    (tmp_path / "empty_idx" / "meta.jsonl").write_text("")
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "train-000000.tar").write_bytes(b"")
    cases = [
        (["data", "inspect", str(tmp_path / "nowhere")], ["not a folder of shards"]),
        (
            ["data", "convert", "csv", "--csv", str(tmp_path / "x.csv"), "--images", ".", "--out", str(tmp_path / "o")],
            ["CSV not found"],
        ),
        (
            [
                "mine",
                "episodes",
                "--index",
                str(tmp_path / "idx"),
                "--shards",
                str(tmp_path),
                "--out",
                str(tmp_path / "ep"),
                "--k",
                "8",
                "--strategy",
                "random",
                "--min-km",
                "0",
            ],
            ["no episode could be mined"],
        ),
        (
            [
                "mine",
                "episodes",
                "--index",
                str(tmp_path / "empty_idx"),
                "--shards",
                str(tmp_path),
                "--out",
                str(tmp_path / "ep"),
            ],
            ["is empty"],
        ),
        (["index", "search", "--index", str(tmp_path / "shards"), "--key", "k0"], ["not a geor1 index folder"]),
        (
            [
                "eval",
                "pairing",
                "--model",
                str(tmp_path / "shards"),
                "--episodes",
                str(tmp_path / "shards"),
                "--out",
                str(tmp_path / "ev"),
            ],
            ["has no config.json"],
        ),  # a data folder given as a model
        (
            [
                "index",
                "build",
                "--ckpt",
                str(tmp_path / "none.ckpt"),
                "--shards",
                str(tmp_path),
                "--out",
                str(tmp_path / "i2"),
            ],
            ["does not exist"],
        ),
    ]
    for args, needles in cases:
        _one_line_error(run_cli(*args), *needles)


def test_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        json.dumps({"model": {"class_path": "geor1.objectives.SFTModule", "init_args": {"max_length": 8}}})
    )  # no policy
    res = run_cli("fit", "--config", str(bad))
    assert res.returncode != 0 and "Traceback" not in res.stderr and "policy" in res.stderr
    res = run_cli("fit", "--config", str(tmp_path / "missing.yaml"))
    assert res.returncode != 0 and "Traceback" not in res.stderr


def test_resume_from_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    import pytest
    from conftest import REPO

    from geor1.cli import main

    missing = tmp_path / "run" / "checkpoints" / "last.ckpt"
    with pytest.raises(SystemExit) as done:  # in-process: the error comes before anything is built
        main(
            [
                "fit",
                "--config",
                str(REPO / "configs/debug/tiny_sft.yaml"),
                f"--trainer.default_root_dir={tmp_path / 'run'}",
                "--ckpt_path",
                str(missing),
            ]
        )
    err = capsys.readouterr().err
    assert done.value.code == 2 and "Traceback" not in err
    assert "no such checkpoint" in err and str(missing) in err
    assert not (tmp_path / "run").exists()
