"""Streaming shards under 2 processes and across checkpoints: every rank runs the same number of batches per pass
(the unread rest of the longer ranks is counted), and a run resumed from an end-of-pass checkpoint reads the next
pass exactly as an uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from stream_ddp_run import KeyModule, write_pairs  # tests/ is on sys.path, as for conftest

from geor1.data.datamodule import PairShardDataModule

SCRIPT = Path(__file__).with_name("stream_ddp_run.py")


def _launch(root: Path, out: Path) -> list[dict]:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(Path(__file__).parent / "netguard"), os.environ.get("PYTHONPATH", "")]),
    )
    try:
        res = subprocess.run(
            [sys.executable, str(SCRIPT), str(root), str(out), "2"],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
            cwd=out.parent,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"2-process run hung (timeout): {(e.stderr or b'')[-2000:]!r}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "left unread on this rank" in res.stderr
    return [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in range(2)]


def test_unequal_shards_give_every_rank_the_same_batches(tmp_path):
    # shards of 5, 5, 2 samples: rank 0 reads shards 0 and 2 (7 samples: 4 batches of <= 2), rank 1 shard 1 (5: 3)
    write_pairs(tmp_path / "d", {"train": 12, "val": 12}, max_count=5)
    ranks = _launch(tmp_path / "d", tmp_path / "out")
    assert [r["world"] for r in ranks] == [2, 2]
    for prefix in ("keys", "val_keys"):
        assert len(ranks[0][prefix]) == len(ranks[1][prefix])  # the same number of batches: no rank waits
    seen = [k for r in ranks for b in r["keys"][:3] for k in b]
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 11  # one pass: 11 distinct samples, 1 unread
    assert set(seen) | {"train0011"} == {f"train{i:04d}" for i in range(12)}
    assert ranks[0]["epochs"] == ranks[1]["epochs"] == [0, 0, 0, 1, 1, 1]
    # the unread sample is counted where it was left: rank 0, once per pass (2 training passes, 3 validation passes
    # counting the sanity check)
    assert ranks[0]["stats"] == {
        "train": {"passes": 2, "batches": 6, "unread_samples": 2},
        "val": {"passes": 3, "batches": 9, "unread_samples": 3},
    }
    assert ranks[1]["stats"]["train"]["unread_samples"] == ranks[1]["stats"]["val"]["unread_samples"] == 0
    # without a trainer: the plain loop agrees through torch.distributed
    assert [len(r["loop_keys"]) for r in ranks] == [3, 3]
    assert ranks[0]["loop_stats"]["train"]["unread_samples"] == 1
    assert ranks[0]["loop_keys"] == ranks[0]["keys"][:3] and ranks[1]["loop_keys"] == ranks[1]["keys"][:3]


def test_one_process_reads_every_sample(tmp_path):
    """With one process there is nothing to agree on: every sample of every pass, nothing unread."""
    from stream_ddp_run import main

    write_pairs(tmp_path / "d", {"train": 12, "val": 12}, max_count=5)
    main(str(tmp_path / "d"), str(tmp_path / "one"), 1)
    (one,) = [json.loads((tmp_path / "one.rank0.json").read_text())]
    assert [len(b) for b in one["keys"]] == [2] * 12
    assert sorted(k for b in one["keys"][:6] for k in b) == [f"train{i:04d}" for i in range(12)]
    assert one["stats"]["train"] == {"passes": 2, "batches": 12, "unread_samples": 0}


class SaveAtEpochEnd(L.Callback):
    """A checkpoint taken inside the epoch-end hooks (the pass read, the epoch not yet counted as completed)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer, module):
        trainer.save_checkpoint(self.path)


def _fit(
    root: Path, out: Path, max_steps: int, ckpt_path: str | None = None, callbacks=(), save_after: Path | None = None
) -> KeyModule:
    L.seed_everything(0)
    module = KeyModule()
    dm = PairShardDataModule(str(root), batch_size=2, shuffle_buffer=4, val_split="", seed=1)
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
        default_root_dir=out,
        enable_checkpointing=any(isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks),
    )
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    if save_after is not None:
        trainer.save_checkpoint(save_after)
    return module


@pytest.mark.parametrize("when", ["last_batch_end", "epoch_end_hooks", "after_fit"])
def test_resume_from_the_end_of_a_pass_reads_the_next_pass(tmp_path, when):
    """6 samples, batches of 2: 3 batches a pass, each pass in a new shuffled order; the first run stops at step 3,
    the end of pass 0, checkpointed at the last batch's end, in the epoch-end hooks, or after `fit`; the resumed
    run must train on passes 1 and 2 exactly as the uninterrupted run does (not skip one, not repeat one)."""
    write_pairs(tmp_path / "d", {"train": 6}, max_count=3)
    ckpt = tmp_path / "ck" / "end.ckpt"
    full = _fit(tmp_path / "d", tmp_path / "full", max_steps=9)
    assert len({tuple(full.keys[i]) for i in (0, 3, 6)}) == 3  # the passes differ: a skipped pass would show
    if when == "last_batch_end":
        cb = [L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", filename="end", every_n_train_steps=3)]
        first = _fit(tmp_path / "d", tmp_path / "cut", max_steps=3, callbacks=cb)
    elif when == "epoch_end_hooks":
        first = _fit(tmp_path / "d", tmp_path / "cut", max_steps=3, callbacks=[SaveAtEpochEnd(ckpt)])
    else:
        first = _fit(tmp_path / "d", tmp_path / "cut", max_steps=3, save_after=ckpt)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == 3 and state["PairShardDataModule"] == {"epoch": 1, "batches_done": 0}
    rest = _fit(tmp_path / "d", tmp_path / "cut", max_steps=9, ckpt_path=str(ckpt))
    assert first.keys == full.keys[:3]
    assert rest.keys == full.keys[3:]
    if when == "last_batch_end":  # Lightning resumes in epoch 1 here; from the later states it counts an empty
        assert rest.epochs == full.epochs[3:]  # epoch 1 first (its own restore), the data stays exact


def test_resume_mid_pass_still_skips_the_trained_batches(tmp_path):
    write_pairs(tmp_path / "d", {"train": 6}, max_count=3)
    full = _fit(tmp_path / "d", tmp_path / "full", max_steps=6)
    cb = [L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", filename="mid", every_n_train_steps=4)]
    _fit(tmp_path / "d", tmp_path / "cut", max_steps=4, callbacks=cb)
    state = torch.load(tmp_path / "ck" / "mid.ckpt", map_location="cpu", weights_only=True)
    assert state["PairShardDataModule"] == {"epoch": 1, "batches_done": 1}
    rest = _fit(tmp_path / "d", tmp_path / "cut", max_steps=6, ckpt_path=str(tmp_path / "ck" / "mid.ckpt"))
    assert rest.keys == full.keys[4:]


def test_a_resumed_run_checkpointed_again_resumes_exactly(tmp_path):
    """After an end-of-pass restore Lightning's epoch counter runs one ahead of the pass; a second checkpoint
    (mid-pass, in the resumed run) must still name the pass read, not Lightning's epoch."""
    write_pairs(tmp_path / "d", {"train": 6}, max_count=3)
    full = _fit(tmp_path / "d", tmp_path / "full", max_steps=9)
    one, two = tmp_path / "one.ckpt", tmp_path / "two.ckpt"
    first = _fit(tmp_path / "d", tmp_path / "cut", max_steps=3, save_after=one)
    second = _fit(tmp_path / "d", tmp_path / "cut", max_steps=5, ckpt_path=str(one), save_after=two)
    assert torch.load(two, map_location="cpu", weights_only=True)["PairShardDataModule"] == {
        "epoch": 1,
        "batches_done": 2,
    }
    third = _fit(tmp_path / "d", tmp_path / "cut", max_steps=9, ckpt_path=str(two))
    assert first.keys + second.keys + third.keys == full.keys
