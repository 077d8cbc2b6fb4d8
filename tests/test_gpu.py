"""What only a CUDA machine can check: the tiny policy's log-probs on the GPU equal the CPU ones, a short SFT fit in
bf16 mixed precision, and retrieval search on a FAISS GPU index.

Marked `gpu`: `make test` deselects them (`-m "not gpu"`), `make test-gpu` runs them (`-m gpu`); on a machine without
CUDA they skip with the reason "needs CUDA" (tests/conftest.py), listed by `-ra`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_image

from geor1.data.sample import Prompt

pytestmark = pytest.mark.gpu


@pytest.fixture
def exact_float32():
    """No TF32 on Ampere and later (cuDNN convolutions use it by default): float32 comparisons mean float32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _prompts() -> list[Prompt]:
    rng = np.random.default_rng(0)
    return [
        Prompt(
            "Ground view: <image>\nCandidates: A <image> B <image>\nWhich?",
            [random_image(rng, 112, 112), random_image(rng, 80, 150), random_image(rng, 64, 64)],
        ),
        Prompt("Where is this? <image>", [random_image(rng, 200, 100)]),
    ]


@pytest.mark.parametrize("share_prefix", [True, False])
def test_tiny_policy_logprobs_on_cuda_equal_cpu(exact_float32, share_prefix):
    """Same weights, same completions: the float32 per-token log-probs on CUDA are the CPU ones within 1e-4 (both
    the shared-prefix path, with its KV cache, and the plain repeated-prompt path)."""
    from geor1.model import TinyPolicy

    g = 2
    cpu = TinyPolicy(seed=0).eval()
    torch.manual_seed(1)
    rollout = cpu.generate(_prompts(), group_size=g, max_new_tokens=8)
    with torch.no_grad():
        lp_cpu = cpu.token_logprobs(
            rollout.inputs, rollout.completion_ids, rollout.completion_mask, g, share_prefix=share_prefix
        )
    gpu = TinyPolicy(seed=0).eval().to("cuda")
    with torch.no_grad():
        lp_gpu = gpu.token_logprobs(
            rollout.inputs.to("cuda"),
            rollout.completion_ids.cuda(),
            rollout.completion_mask.cuda(),
            g,
            share_prefix=share_prefix,
        )
    assert lp_gpu.device.type == "cuda" and lp_gpu.dtype == torch.float32
    torch.testing.assert_close(lp_gpu.cpu(), lp_cpu, atol=1e-4, rtol=1e-4)


def test_sft_fit_two_steps_bf16_mixed_on_cuda(tmp_path):
    """`precision: bf16-mixed` on one GPU: two optimizer steps with finite losses that move the (float32) weights."""
    import lightning as L

    from geor1.cot.synthesize import synthesize
    from geor1.data.chat import ChatShardDataModule
    from geor1.data.geoworld import build_geoworld
    from geor1.model import TinyPolicy
    from geor1.objectives.sft import SFTModule

    world = build_geoworld(tmp_path / "gw", num_train=8, num_val=2, num_test=2, seed=3)
    synthesize(world, tmp_path / "sft", "geolocate")
    L.seed_everything(0)
    losses: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    module = SFTModule(TinyPolicy(seed=0), optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3), max_length=512)
    before = {k: v.detach().clone() for k, v in module.policy.state_dict().items()}
    dm = ChatShardDataModule(str(tmp_path / "sft"), batch_size=4, shuffle_buffer=8)
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cuda",
        devices=1,
        precision="bf16-mixed",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        callbacks=[Record()],
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=dm)
    assert len(losses) == 2 and all(np.isfinite(losses)), losses
    after = module.policy.state_dict()
    assert all(v.dtype == before[k].dtype for k, v in after.items())  # mixed precision keeps float32 weights
    assert any(not torch.equal(v.cpu(), before[k].cpu()) for k, v in after.items())


def test_faiss_gpu_index_search_equals_brute_force():
    """`SatIndex.search` moves a flat index to the GPU when FAISS sees one; its top-k is the exact inner-product
    top-k (rows and scores) computed with numpy."""
    faiss = pytest.importorskip("faiss")
    if not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() == 0:
        pytest.skip("FAISS is built without GPU support (faiss-cpu); install faiss-gpu to run this test")
    from geor1.retrieval.index import IndexSpec, SatIndex

    rng = np.random.default_rng(0)
    sat = rng.normal(size=(2000, 32)).astype(np.float32)
    sat /= np.linalg.norm(sat, axis=1, keepdims=True)
    queries = rng.normal(size=(25, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    index = SatIndex.build(sat, None, [{"key": f"k{i}"} for i in range(len(sat))], IndexSpec(type="flat"))
    scores, rows = index.search(queries, 10)
    assert "Gpu" in type(index._search_index).__name__  # the search ran on the GPU copy
    sims = queries @ sat.T
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(sims, expected, 1), atol=1e-5)
