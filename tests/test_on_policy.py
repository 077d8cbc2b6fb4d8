"""On-policy sampling with a real checkpoint's generation config: Qwen2.5-VL ships repetition_penalty 1.05,
temperature 0.1, top_p 0.001, top_k 1. `Policy.generate` must sample from exactly softmax(logits / temperature),
cut to the configured top_p, and nothing else, so that GRPO's log-probs (`Policy.token_logprobs`) are the
sampling distribution's.

The sampling distribution is read from `transformers`' own generate loop (`output_scores`: the logits after every
processor and warper it applied), by a spy around `model.generate`; the reference is a plain forward of each prompt
+ completion on its own (brute force, no KV cache, no shared prefix)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import random_image

from geor1.data.sample import Prompt
from geor1.model import Policy
from geor1.model.real_shaped import save_real_shaped_qwen2_5_vl

G = 3
T_NEW = 8


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    path = save_real_shaped_qwen2_5_vl(tmp_path_factory.mktemp("onpolicy") / "qwen2_5_vl")
    policy = Policy(str(path), max_pixels=28 * 28 * 4)
    with torch.no_grad():
        # A random 64-wide head gives near-uniform logits (std ~0.15) over 151,936 tokens, under which a 1.05
        # repetition penalty moves log-probs by ~1e-3. Scaled x30 the logits spread like a trained model's
        # (std ~5), so any processor other than temperature / top_p changes the distribution visibly.
        policy.base_model().lm_head.weight.mul_(30.0)
    return policy


def _prompts() -> list[Prompt]:
    rng = np.random.default_rng(0)
    return [
        Prompt(
            "Ground view: <image> Candidate A: <image> Which one?",
            [random_image(rng, 56, 84), random_image(rng, 28, 28)],
        ),
        Prompt("Where was this taken? <image>", [random_image(rng, 56, 56)]),
    ]


def _generate_with_scores(policy: Policy, prompts: list[Prompt], **kw):
    """Policy.generate, recording the processed scores [N, T, V] of the transformers generate call it makes."""
    recorded: dict[str, torch.Tensor] = {}
    original = policy.model.generate

    def spy(*args, **kwargs):
        if kwargs.get("generation_config") is not None:  # set on a copy (transformers warns about mixing both)
            kwargs["generation_config"] = copy.deepcopy(kwargs["generation_config"])
            kwargs["generation_config"].update(output_scores=True, return_dict_in_generate=True)
        else:
            kwargs.update(output_scores=True, return_dict_in_generate=True)
        out = original(*args, **kwargs)
        recorded["scores"] = torch.stack(out.scores, 1).float()
        return out if kw.get("output_logprobs") else out.sequences

    policy.model.generate = spy
    try:
        rollout = policy.generate(prompts, group_size=G, max_new_tokens=T_NEW, **kw)
    finally:
        del policy.model.generate  # back to the class's method
    return rollout, recorded["scores"]


def _reference_logits(policy: Policy, prompts: list[Prompt], rollout) -> list[torch.Tensor]:
    """Per row: [len_r, V] logits predicting its completion tokens, from one plain forward of that prompt alone."""
    out = []
    for row in range(rollout.completion_ids.shape[0]):
        enc = dict(policy.encode([prompts[row // G]]))
        ids = rollout.completion_ids[row][rollout.completion_mask[row]]  # [len_r]
        p = enc["input_ids"].shape[1]
        enc["input_ids"] = torch.cat([enc["input_ids"], ids[None]], 1)
        enc["attention_mask"] = torch.ones_like(enc["input_ids"])
        if "mm_token_type_ids" in enc:
            enc["mm_token_type_ids"] = torch.cat([enc["mm_token_type_ids"], torch.zeros_like(ids[None])], 1)
        with torch.no_grad():
            logits = policy.base_model()(**enc, use_cache=False).logits[0].float()
        out.append(logits[p - 1 : p - 1 + len(ids)])
    return out


def _nucleus_logprobs(
    logits: torch.Tensor, temperature: float, top_p: float, kept_at_boundary: torch.Tensor
) -> torch.Tensor:
    """log of softmax(logits / T) restricted to the smallest set of most probable tokens whose mass reaches top_p
    (a token stays when the mass strictly above it is below top_p), renormalised; -inf elsewhere. [L, V].
    A token whose mass above is within float32 rounding (1e-4) of top_p follows `kept_at_boundary` [L, V]."""
    logp = torch.log_softmax(logits / temperature, -1)
    if top_p >= 1.0:
        return logp
    probs = logp.exp()
    sorted_p, order = probs.sort(-1, descending=True)
    mass_above = torch.empty_like(probs).scatter(-1, order, sorted_p.cumsum(-1) - sorted_p)
    boundary = (mass_above - top_p).abs() < 1e-4
    assert int(boundary.sum()) <= 2 * len(logits), "too many tokens at the boundary for the test to mean anything"
    keep = torch.where(boundary, kept_at_boundary, mass_above < top_p)
    return torch.log_softmax(logp.masked_fill(~keep, float("-inf")), -1)


@pytest.mark.parametrize("temperature,top_p,share_prefix", [(0.7, 1.0, True), (1.3, 1.0, False), (1.0, 0.9, True)])
def test_rollouts_sample_from_exactly_the_configured_distribution(policy, temperature, top_p, share_prefix):
    assert policy.base_model().generation_config.repetition_penalty == 1.05  # the checkpoint's, loaded as shipped
    prompts = _prompts()
    torch.manual_seed(0)
    rollout, scores = _generate_with_scores(
        policy, prompts, temperature=temperature, top_p=top_p, share_prefix=share_prefix
    )
    mask = rollout.completion_mask
    assert scores.shape[:2] == mask.shape and mask.sum() > G
    sampled = torch.log_softmax(scores, -1)  # [N, T, V] the distribution each token was drawn from
    for row, ref_logits in enumerate(_reference_logits(policy, prompts, rollout)):
        n = len(ref_logits)
        got = sampled[row, :n]
        expected = _nucleus_logprobs(ref_logits, temperature, top_p, ~torch.isinf(got))  # [n, V]
        assert torch.equal(torch.isinf(got), torch.isinf(expected)), f"row {row}: different tokens cut"
        finite = ~torch.isinf(expected)
        torch.testing.assert_close(
            got[finite], expected[finite], atol=2e-4, rtol=0, msg=lambda m, row=row: f"row {row}: {m}"
        )
    # ... and GRPO's log-probs of the sampled tokens are those of the sampling distribution
    if top_p == 1.0:
        with torch.no_grad():
            lp = policy.token_logprobs(
                rollout.inputs, rollout.completion_ids, mask, G, temperature=temperature, share_prefix=share_prefix
            )
        picked = sampled.gather(-1, rollout.completion_ids.unsqueeze(-1)).squeeze(-1) * mask
        torch.testing.assert_close(lp, picked, atol=2e-4, rtol=0)
        assert len({tuple(r) for r in rollout.completion_ids.tolist()}) > 1  # sampled, not top_k=1 greedy
