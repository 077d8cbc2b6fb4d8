"""SFT maths and a short real fit."""

from __future__ import annotations

import numpy as np
import torch

from geor1.model.policy import IGNORE_INDEX
from geor1.objectives.sft import masked_lm_loss


def test_masked_lm_loss_by_hand():
    # vocab 2, one row of 3 positions; only position 2's label counts (predicted from position 1's logits)
    logits = torch.tensor([[[0.0, 0.0], [0.0, 2.0], [5.0, 5.0]]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 1]])
    loss, correct, n = masked_lm_loss(logits, labels)
    expected = -torch.log_softmax(torch.tensor([0.0, 2.0]), -1)[1]
    torch.testing.assert_close(loss, expected)
    assert (int(correct), int(n)) == (1, 1)


def test_tiny_sft_fit_lowers_loss_and_checkpoint_reloads(tmp_path):
    import lightning as L

    from geor1.cot.synthesize import synthesize
    from geor1.data.chat import ChatShardDataModule
    from geor1.data.geoworld import build_geoworld
    from geor1.model import Policy, TinyPolicy
    from geor1.objectives.sft import SFTModule

    world = build_geoworld(tmp_path / "gw", num_train=16, num_val=4, num_test=2, seed=3)
    synthesize(world, tmp_path / "sft", "geolocate")
    L.seed_everything(0)

    losses: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    module = SFTModule(
        TinyPolicy(seed=0),
        optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3),
        max_length=512,
        num_val_generations=2,
        max_new_tokens=8,
        export_dir=str(tmp_path / "export"),
    )
    dm = ChatShardDataModule(str(tmp_path / "sft"), batch_size=4, shuffle_buffer=8)
    trainer = L.Trainer(
        max_steps=16,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        callbacks=[Record()],
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
        limit_val_batches=1,
    )
    trainer.fit(module, datamodule=dm)
    assert len(losses) == 16
    assert np.mean(losses[-4:]) < 0.85 * np.mean(losses[:4]), losses
    (val,) = trainer.validate(module, datamodule=dm, verbose=False)
    assert 0.0 <= val["val/format_rate"] <= 1.0 and "val/token_acc" in val
    # the Lightning checkpoint reloads (weights_only) into a fresh module with identical outputs
    ckpt = tmp_path / "sft.ckpt"
    trainer.save_checkpoint(ckpt)
    fresh = SFTModule(TinyPolicy(seed=7))
    fresh.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"])
    sample = next(iter(dm.val_dataloader()))[:2]
    inputs, _ = module.policy.encode_sft([s.prompt for s in sample], [s.response for s in sample])
    with torch.no_grad():
        assert torch.equal(fresh.policy.model(**inputs).logits, module.policy.model(**inputs).logits)
        exported = Policy(str(tmp_path / "export"))  # written by export_dir when fit ended
        torch.testing.assert_close(exported.model(**inputs).logits, module.policy.model(**inputs).logits)


def test_root_weights_set_the_mixing_ratio_of_sft_sets(tmp_path):
    import pytest

    from geor1 import Geor1Error
    from geor1.cot.synthesize import synthesize
    from geor1.data.chat import ChatShardDataModule
    from geor1.data.geoworld import build_geoworld

    world = build_geoworld(tmp_path / "gw", num_train=8, num_val=2, num_test=2, seed=3)
    synthesize(world, tmp_path / "sft", "geolocate")  # exemplars (with a response) vs plain pairs (without)
    roots = [str(tmp_path / "sft"), str(world)]
    counts = {}
    for weights in ([3, 1], None):
        dm = ChatShardDataModule(
            roots,
            root_weights=weights,
            batch_size=8,
            shuffle_buffer=0,
            resampled=True,
            samples_per_epoch=1600,
            val_split="",
        )
        dm.setup("fit")
        seen = [s.response is not None for batch in dm.train_dataloader() for s in batch]
        counts[str(weights)] = sum(seen) / len(seen)
    assert 0.68 < counts["[3, 1]"] < 0.82 and 0.4 < counts["None"] < 0.6, counts
    with pytest.raises(Geor1Error, match="root_weights"):
        ChatShardDataModule(roots, root_weights=[1])


def test_curriculum_sets_the_roots_of_each_pass_and_resumes_in_its_pass(tmp_path):
    import pytest

    from geor1 import Geor1Error
    from geor1.cot.synthesize import synthesize
    from geor1.data.chat import ChatShardDataModule
    from geor1.data.geoworld import build_geoworld

    world = build_geoworld(tmp_path / "gw", num_train=8, num_val=2, num_test=2, seed=3)
    synthesize(world, tmp_path / "sft", "geolocate")  # exemplars (with a response) vs plain pairs (without)
    roots = [str(tmp_path / "sft"), str(world)]

    def module() -> ChatShardDataModule:
        dm = ChatShardDataModule(
            roots, curriculum=[[1, 0], [1, 1], [0, 1]], batch_size=4, resampled=True, samples_per_epoch=400
        )
        dm.setup("fit")
        return dm

    loader = module().train_dataloader()
    passes = [[[(s.key, s.response is not None) for s in batch] for batch in loader] for _ in range(4)]
    share = [sum(r for batch in p for _, r in batch) / sum(map(len, p)) for p in passes]
    assert share[0] == 1.0 and 0.3 < share[1] < 0.7 and share[2] == share[3] == 0.0, share
    # a run resumed in pass 1 after 3 batches reads the rest of pass 1, then pass 2's roots
    dm = module()
    dm.load_state_dict({"epoch": 1, "batches_done": 3})
    loader = dm.train_dataloader()
    resumed = [[[(s.key, s.response is not None) for s in batch] for batch in loader] for _ in range(2)]
    assert resumed == [passes[1][3:], passes[2]]
    with pytest.raises(Geor1Error, match=r"curriculum\[1\]"):
        ChatShardDataModule(roots, curriculum=[[1, 0], [0, 0]])
    with pytest.raises(Geor1Error, match="not both"):
        ChatShardDataModule(roots, curriculum=[[1, 0]], root_weights=[1, 1])


def test_a_resampled_stream_of_nothing_but_corrupt_samples_is_an_error_not_an_endless_loop(tmp_path):
    import pytest

    from geor1 import Geor1Error
    from geor1.data.chat import ChatShardDataModule
    from geor1.data.geoworld import build_geoworld

    world = build_geoworld(tmp_path / "gw", num_train=4, num_val=2, num_test=2, seed=3)
    # pair shards read as pairing episodes: every sample lacks 'k' and 'answer'
    dm = ChatShardDataModule(str(world), task="pairing", resampled=True, samples_per_epoch=8, val_split="")
    dm.setup("fit")
    with pytest.raises(Geor1Error, match=r"no usable sample in .*the most common reason .*'k'"):
        next(iter(dm.train_dataloader()))
