"""The Policy on a tiny offline Qwen2.5-VL: multi-image prompts, sampling, log-probs, save/load, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_image
from transformers import AutoModelForImageTextToText

from geor1 import Geor1Error
from geor1.model import Policy, Prompt, TinyPolicy
from geor1.model.policy import IGNORE_INDEX, completion_mask, repeat_prompts


def _prompts() -> list[Prompt]:
    rng = np.random.default_rng(0)
    return [
        # 1 ground + 3 candidates of different sizes, interleaved with text
        Prompt("Ground view: <image>\nCandidates: A <image> B <image> C <image>\nWhich?",
               [random_image(rng, 112, 112), random_image(rng, 80, 150), random_image(rng, 64, 64),
                random_image(rng, 140, 90)]),
        Prompt("Where is this? <image>", [random_image(rng, 200, 100)]),
    ]


def _manual_logprobs(policy: Policy, prompt: Prompt, completion: torch.Tensor) -> torch.Tensor:
    """Log-probs of `completion` after `prompt`, by one unbatched forward over the full sequence."""
    enc = policy.encode([prompt])
    ids = torch.cat([enc["input_ids"], completion[None]], 1)
    mm = torch.cat([enc["mm_token_type_ids"], torch.zeros_like(completion)[None]], 1)
    logits = policy.model(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=mm,
                          pixel_values=enc["pixel_values"], image_grid_thw=enc["image_grid_thw"]).logits
    p = enc["input_ids"].shape[1]
    return logits[0, p - 1:-1].log_softmax(-1).gather(-1, completion[:, None]).squeeze(-1)


def test_prompt_interleaves_images_and_checks_count():
    p = Prompt("a <image> b <image>", images=[None, None, None])
    assert [c["type"] for c in p.content()] == ["image", "text", "image", "text", "image"]
    with pytest.raises(ValueError, match="2 <image> markers but only 1 images"):
        Prompt("<image><image>", images=[None]).content()


def test_generate_groups_and_logprobs_match_manual_forward(tiny_policy):
    prompts = _prompts()
    enc = tiny_policy.encode(prompts)
    assert enc["image_grid_thw"].shape[0] == 5  # every image reaches the processor
    assert int((enc["input_ids"] == tiny_policy.vision_start_id).sum()) == 5
    torch.manual_seed(1)
    g = 3
    rollout = tiny_policy.generate(prompts, num_samples=g, max_new_tokens=10)
    assert rollout.completion_ids.shape[0] == len(prompts) * g and len(rollout.texts) == 6
    assert rollout.completion_ids.shape[1] <= 10
    with torch.no_grad():
        lp = tiny_policy.token_logprobs(rollout.inputs, rollout.completion_ids, rollout.completion_mask, g)
    assert lp.shape == rollout.completion_ids.shape
    for row in (0, 2, 3, 5):  # both prompts, first and last of each group (left-padded prompt 1 included)
        n = int(rollout.completion_mask[row].sum())
        with torch.no_grad():
            manual = _manual_logprobs(tiny_policy, prompts[row // g], rollout.completion_ids[row, :n])
        torch.testing.assert_close(lp[row, :n], manual, atol=1e-4, rtol=1e-4)
        assert torch.all(lp[row, n:] == 0)


def test_greedy_generation_is_deterministic(tiny_policy):
    a = tiny_policy.generate(_prompts(), max_new_tokens=8, do_sample=False)
    b = tiny_policy.generate(_prompts(), max_new_tokens=8, do_sample=False)
    assert torch.equal(a.completion_ids, b.completion_ids)


def test_completion_mask_stops_after_first_eos():
    ids = torch.tensor([[5, 9, 2, 7], [5, 6, 7, 8], [2, 2, 3, 3]])
    mask, truncated = completion_mask(ids, eos_ids=[2])
    assert mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]


def test_repeat_prompts_regathers_images_per_row(tiny_policy):
    enc = tiny_policy.encode(_prompts())
    rep = repeat_prompts(enc, 2, tiny_policy.vision_start_id)
    assert rep["input_ids"].shape[0] == 4
    single = tiny_policy.encode(_prompts()[1:])
    # rows 2 and 3 are prompt 1: its one image's patches, twice
    assert torch.equal(rep["image_grid_thw"][-2:], single["image_grid_thw"].repeat(2, 1))
    n = int(single["image_grid_thw"].prod())
    assert torch.equal(rep["pixel_values"][-n:], single["pixel_values"])


def test_sft_labels_mask_everything_but_the_response(tiny_policy):
    prompts = _prompts()
    responses = ["<think>water to the east</think><answer>B</answer>", "<answer>A</answer>"]
    inputs, labels = tiny_policy.encode_sft(prompts, responses)
    tok = tiny_policy.tokenizer
    for b, response in enumerate(responses):
        kept = labels[b][labels[b] != IGNORE_INDEX]
        assert tok.decode(kept) == response + "<|im_end|>"
        n_real = int(inputs["attention_mask"][b].sum())
        # the labelled span is the last tokens of the real (unpadded) sequence, right after the assistant header
        assert torch.equal(inputs["input_ids"][b, n_real - len(kept):n_real], kept)
        assert tok.decode(inputs["input_ids"][b, :n_real - len(kept)]).endswith("<|im_start|>assistant\n")
        assert torch.all(labels[b, n_real:] == IGNORE_INDEX)
    image_positions = inputs["input_ids"] == tiny_policy.image_token_id
    assert torch.all(labels[image_positions] == IGNORE_INDEX)
    assert torch.equal(inputs["mm_token_type_ids"], image_positions.long())


def test_save_load_roundtrip_gives_identical_logits(tmp_path, tiny_policy):
    out = tiny_policy.save_pretrained(tmp_path / "m")
    enc = tiny_policy.encode(_prompts())
    with torch.no_grad():
        ref = tiny_policy.model(**enc).logits
        loaded = Policy(str(out))
        assert torch.equal(loaded.model(**loaded.encode(_prompts())).logits, ref)
        plain = AutoModelForImageTextToText.from_pretrained(out, local_files_only=True)
        assert torch.equal(plain(**enc).logits, ref)


def test_lora_trains_adapter_only_and_exports_merged(tmp_path):
    from geor1.model import LoraSpec

    policy = TinyPolicy(seed=0, lora=LoraSpec(r=4, alpha=8, dropout=0.0))
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)  # make the adapter matter
    enc = policy.encode(_prompts())
    with torch.no_grad():
        ref = policy.model(**enc).logits
    out = policy.save_pretrained(tmp_path / "merged")
    assert (out / "adapter" / "adapter_config.json").is_file()
    merged = Policy(str(out))
    with torch.no_grad():
        torch.testing.assert_close(merged.model(**enc).logits, ref, atol=1e-4, rtol=1e-4)


def test_freeze_vision_switch():
    policy = TinyPolicy(seed=0, freeze_vision=True)
    vision = {id(p) for p in Policy.vision_tower(policy.model).parameters()}
    assert vision
    for p in policy.parameters():
        assert p.requires_grad == (id(p) not in vision)


def test_max_pixels_bounds_image_tokens():
    rng = np.random.default_rng(0)
    big = Prompt("<image>", [random_image(rng, 400, 400)])
    small = TinyPolicy(seed=0, max_pixels=28 * 28 * 4).encode([big])
    large = TinyPolicy(seed=0, max_pixels=28 * 28 * 16).encode([big])
    assert int(small["image_grid_thw"].prod()) // 4 <= 4 < int(large["image_grid_thw"].prod()) // 4 <= 16


@pytest.mark.parametrize("kind", ["missing", "not_a_model"])
def test_bad_model_path_is_a_clear_error(tmp_path, kind):
    path = tmp_path / "nowhere"
    if kind == "not_a_model":
        path.mkdir()
        (path / "train-000000.tar").write_bytes(b"")
    with pytest.raises(Geor1Error) as err:
        Policy(str(path))
    assert str(path) in str(err.value)
    assert ("never downloads" in str(err.value)) if kind == "missing" else ("config.json" in str(err.value))


def test_shared_prefix_rollout_equals_naive_and_encodes_each_prompt_once(tiny_policy):
    prompts, g = _prompts(), 4
    torch.manual_seed(5)
    shared = tiny_policy.generate(prompts, num_samples=g, max_new_tokens=10, share_prefix=True)
    torch.manual_seed(5)
    naive = tiny_policy.generate(prompts, num_samples=g, max_new_tokens=10, share_prefix=False)
    assert torch.equal(shared.completion_ids, naive.completion_ids)  # same seed, same samples
    patches: list[int] = []  # image patches through the vision tower per call
    hook = Policy.vision_tower(tiny_policy.model).register_forward_hook(
        lambda module, args, out: patches.append(args[0].shape[0]))
    try:
        lp_shared = tiny_policy.token_logprobs(shared.inputs, shared.completion_ids, shared.completion_mask, g,
                                               share_prefix=True)
        shared_patches, patches[:] = sum(patches), []
        lp_naive = tiny_policy.token_logprobs(shared.inputs, shared.completion_ids, shared.completion_mask, g,
                                              share_prefix=False)
        naive_patches = sum(patches)
    finally:
        hook.remove()
    per_prompt_patches = int(shared.inputs["image_grid_thw"].prod(-1).sum())
    assert shared_patches == per_prompt_patches and naive_patches == g * per_prompt_patches  # B, not B x G
    torch.testing.assert_close(lp_shared, lp_naive, atol=1e-5, rtol=1e-5)
    # gradients through the shared prompt equal those of G separate copies
    grads = []
    for share in (True, False):
        tiny_policy.zero_grad()
        tiny_policy.token_logprobs(shared.inputs, shared.completion_ids, shared.completion_mask, g,
                                   share_prefix=share).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in tiny_policy.parameters() if p.grad is not None]))
    tiny_policy.zero_grad()
    torch.testing.assert_close(grads[0], grads[1], atol=1e-4, rtol=1e-4)
