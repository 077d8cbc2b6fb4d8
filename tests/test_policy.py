"""The Policy on a tiny offline Qwen2.5-VL: multi-image prompts, sampling, log-probs, save/load, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_image
from transformers import AutoModelForImageTextToText

from geor1 import Geor1Error
from geor1.data.sample import Prompt
from geor1.model import Policy, TinyPolicy
from geor1.model.policy import IGNORE_INDEX, completion_mask


def _prompts() -> list[Prompt]:
    rng = np.random.default_rng(0)
    return [
        # 1 ground + 3 candidates of different sizes, interleaved with text
        Prompt(
            "Ground view: <image>\nCandidates: A <image> B <image> C <image>\nWhich?",
            [
                random_image(rng, 112, 112),
                random_image(rng, 80, 150),
                random_image(rng, 64, 64),
                random_image(rng, 140, 90),
            ],
        ),
        Prompt("Where is this? <image>", [random_image(rng, 200, 100)]),
    ]


def _manual_logprobs(policy: Policy, prompt: Prompt, completion: torch.Tensor) -> torch.Tensor:
    """Log-probs of `completion` after `prompt`, by one unbatched forward over the full sequence."""
    enc = policy.encode([prompt])
    ids = torch.cat([enc["input_ids"], completion[None]], 1)
    mm = torch.cat([enc["mm_token_type_ids"], torch.zeros_like(completion)[None]], 1)
    logits = policy.model(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        mm_token_type_ids=mm,
        pixel_values=enc["pixel_values"],
        image_grid_thw=enc["image_grid_thw"],
    ).logits
    p = enc["input_ids"].shape[1]
    return logits[0, p - 1 : -1].log_softmax(-1).gather(-1, completion[:, None]).squeeze(-1)


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
    rollout = tiny_policy.generate(prompts, group_size=g, max_new_tokens=10)
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
    rep = tiny_policy.repeat_prompts(enc, 2)
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
        assert torch.equal(inputs["input_ids"][b, n_real - len(kept) : n_real], kept)
        assert tok.decode(inputs["input_ids"][b, : n_real - len(kept)]).endswith("<|im_start|>assistant\n")
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


@pytest.mark.parametrize("kind", ["file", "no_weights", "no_processor", "bad_json"])
def test_broken_model_folder_is_one_line_naming_the_fix(tmp_path, kind):
    """A model path that is a file, or a folder missing its weights or processor, or with a broken config.json:
    a one-line Geor1Error naming the path and what is missing, never transformers' traceback."""
    from geor1.model.tiny import build_tiny_model, build_tiny_processor

    folder = tmp_path / "model"
    processor = build_tiny_processor()
    model = build_tiny_model(processor, hidden_size=64, vision_hidden_size=32)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    path, expected = {
        "file": (folder / "config.json", f"is a file, not a folder.*'{folder}' is one"),
        "no_weights": (folder, r"has no weights \(\*\.safetensors"),
        "no_processor": (folder, "has no usable processor files"),
        "bad_json": (folder, "config.json cannot be read"),
    }[kind]
    if kind == "no_weights":
        for f in folder.glob("*.safetensors"):
            f.unlink()
    if kind == "no_processor":
        for f in folder.iterdir():
            if f.name not in ("config.json", "generation_config.json") and f.suffix != ".safetensors":
                f.unlink()
    if kind == "bad_json":
        (folder / "config.json").write_text("{not json")
    with pytest.raises(Geor1Error, match=expected) as err:
        Policy(str(path))
    assert "\n" not in str(err.value)


def test_shared_prefix_rollout_equals_naive_and_encodes_each_prompt_once(tiny_policy):
    prompts, g = _prompts(), 4
    torch.manual_seed(5)
    shared = tiny_policy.generate(prompts, group_size=g, max_new_tokens=10, share_prefix=True)
    torch.manual_seed(5)
    naive = tiny_policy.generate(prompts, group_size=g, max_new_tokens=10, share_prefix=False)
    assert torch.equal(shared.completion_ids, naive.completion_ids)  # same seed, same samples
    patches: list[int] = []  # image patches through the vision tower per call
    hook = Policy.vision_tower(tiny_policy.model).register_forward_hook(
        lambda module, args, out: patches.append(args[0].shape[0])
    )
    try:
        lp_shared = tiny_policy.token_logprobs(
            shared.inputs, shared.completion_ids, shared.completion_mask, g, share_prefix=True
        )
        shared_patches, patches[:] = sum(patches), []
        lp_naive = tiny_policy.token_logprobs(
            shared.inputs, shared.completion_ids, shared.completion_mask, g, share_prefix=False
        )
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
        tiny_policy.token_logprobs(
            shared.inputs, shared.completion_ids, shared.completion_mask, g, share_prefix=share
        ).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in tiny_policy.parameters() if p.grad is not None]))
    tiny_policy.zero_grad()
    torch.testing.assert_close(grads[0], grads[1], atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------------------------------- every Qwen family
QWEN_FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]


def _family_prompts() -> list[Prompt]:
    """Prompts with different numbers and sizes of images, and one without any."""
    rng = np.random.default_rng(3)
    return [
        Prompt(
            "Ground view: <image>\nCandidates: A <image> B <image>\nWhich?",
            [random_image(rng, 64, 64), random_image(rng, 100, 60), random_image(rng, 90, 120)],
        ),
        Prompt("Where is this? <image>", [random_image(rng, 120, 90)]),
        Prompt("Give the latitude and longitude in decimal degrees.", []),
    ]


def _random_completions(policy: Policy, rows: int, t: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[rows, t] ordinary tokens with an EOS early in some rows (so masks differ), padded after it."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, len(policy.tokenizer), (rows, t), generator=gen)
    ids[1, 2] = policy.eos_ids[0]
    ids[rows - 2, 0] = policy.eos_ids[0]
    mask, _ = completion_mask(ids, policy.eos_ids)
    return ids.masked_fill(~mask, policy.pad_id), mask


def _plain_logprobs(policy: Policy, prompt: Prompt, completion: torch.Tensor) -> torch.Tensor:
    """The reference: this prompt alone (processor called on it alone, no padding) + its completion, one forward,
    full logits, log_softmax, gather."""
    enc = policy.encode([prompt])
    p = enc["input_ids"].shape[1]
    batch = dict(enc)
    batch["input_ids"] = torch.cat([enc["input_ids"], completion[None]], 1)
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    batch["mm_token_type_ids"] = torch.cat([enc["mm_token_type_ids"], torch.zeros_like(completion)[None]], 1)
    logits = policy.model(**batch).logits
    return logits[0, p - 1 : -1].log_softmax(-1).gather(-1, completion[:, None]).squeeze(-1)


@pytest.fixture(scope="module", params=QWEN_FAMILIES)
def family_policy(request):
    return TinyPolicy(seed=0, family=request.param, hidden_size=64)


def test_group_logprobs_equal_plain_forward_for_every_qwen_family(family_policy):
    """B=3 prompts (3 images, 1 image, none; different sizes), G=3: every path equals the plain forward (1e-5)."""
    policy, prompts, g = family_policy, _family_prompts(), 3
    assert policy.adapter.shared_prefix
    enc = policy.encode(prompts)
    ids, mask = _random_completions(policy, len(prompts) * g)
    with torch.no_grad():
        refs = [_plain_logprobs(policy, prompts[r // g], ids[r, : int(mask[r].sum())]) for r in range(len(ids))]
        for share in (True, False):
            for tile in (32, 4, None):
                policy.logprob_tile = tile
                lp = policy.token_logprobs(enc, ids, mask, g, share_prefix=share)
                assert lp.dtype == torch.float32 and lp.shape == ids.shape
                for r, ref in enumerate(refs):
                    torch.testing.assert_close(
                        lp[r, : len(ref)],
                        ref,
                        atol=1e-5,
                        rtol=0,
                        msg=lambda m, s=share, t=tile, r=r: f"share={s} tile={t} row={r}: {m}",
                    )
                    assert torch.all(lp[r, len(ref) :] == 0)
    policy.logprob_tile = 32


def test_text_only_prompts_with_shared_prefix(family_policy):
    """A batch of text-only prompts (no rope offsets from images) scores exactly, shared prefix or not."""
    policy, g = family_policy, 2
    prompts = [Prompt("Where on Earth was this picture taken?", []), Prompt("Region: Europe", [])]
    enc = policy.encode(prompts)
    assert "pixel_values" not in enc
    ids, mask = _random_completions(policy, len(prompts) * g, seed=1)
    with torch.no_grad():
        shared = policy.token_logprobs(enc, ids, mask, g, share_prefix=True)
        for r in range(len(ids)):
            ref = _plain_logprobs(policy, prompts[r // g], ids[r, : int(mask[r].sum())])
            torch.testing.assert_close(shared[r, : len(ref)], ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_gradient_checkpointing_equals_no_checkpointing(family):
    """Shared-prefix scoring under gradient checkpointing (the 7B recipe's setting): same values and gradients as
    without, and the decoder layers really are recomputed in backward."""
    prompts, g = _family_prompts()[:2], 3
    results = []
    for checkpointing in (False, True):
        policy = TinyPolicy(seed=0, family=family, hidden_size=64, gradient_checkpointing=checkpointing)
        enc = policy.encode(prompts)
        ids, mask = _random_completions(policy, len(prompts) * g)
        calls: list[int] = []
        attn = policy.adapter.decoder_layers(policy.base_model())[0].self_attn
        hook = attn.register_forward_hook(lambda *a, calls=calls: calls.append(1))
        try:
            lp = policy.token_logprobs(enc, ids, mask, g, share_prefix=True)
            forward_calls = len(calls)
            weights = torch.linspace(0.5, 1.5, lp.numel()).view_as(lp)
            (lp * weights).sum().backward()
        finally:
            hook.remove()
        assert forward_calls == 2  # prefill + continuation
        assert len(calls) == (4 if checkpointing else 2)  # recomputed in backward only when checkpointing
        grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
        results.append((lp.detach(), grads))
    (lp0, g0), (lp1, g1) = results
    torch.testing.assert_close(lp1, lp0, atol=1e-6, rtol=0)
    assert g0.keys() == g1.keys() and any("visual" in n for n in g0)  # gradient reaches the vision tower
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-5, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def test_tiled_logprobs_and_grads_equal_full_logits_path(tiny_policy):
    prompts, g = _prompts(), 2
    enc = tiny_policy.encode(prompts)
    ids, mask = _random_completions(tiny_policy, len(prompts) * g, t=9)
    out = []
    for tile in (None, 5):
        tiny_policy.logprob_tile = tile
        tiny_policy.zero_grad()
        lp = tiny_policy.token_logprobs(enc, ids, mask, g, temperature=0.7)
        lp.sum().backward()
        out.append((lp.detach(), torch.cat([p.grad.flatten() for p in tiny_policy.parameters() if p.grad is not None])))
    tiny_policy.logprob_tile = 32
    tiny_policy.zero_grad()
    torch.testing.assert_close(out[1][0], out[0][0], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[1][1], out[0][1], atol=1e-5, rtol=1e-5)


def test_final_hidden_through_lm_head_gives_the_model_logits(tiny_policy):
    """`final_hidden` is the normed state the LM head reads: head(final_hidden) == the model's own logits."""
    inputs, _ = tiny_policy.encode_sft(_prompts(), ["<answer>A</answer>", "<answer>B</answer>"])
    with torch.no_grad():
        hidden = tiny_policy.final_hidden(inputs)
        logits = tiny_policy.model(**inputs).logits
        torch.testing.assert_close(tiny_policy.lm_head(hidden), logits, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------------- on-policy sampling
@pytest.fixture(scope="module")
def hub_config_policy(tmp_path_factory):
    """The real-shaped Qwen2.5-VL-7B-Instruct folder: real tokenizer, template and the hub's generation_config.json
    (do_sample, repetition_penalty 1.05, temperature 0.1, top_p 0.001, top_k 1)."""
    from geor1.model.real_shaped import save_real_shaped_qwen2_5_vl

    folder = save_real_shaped_qwen2_5_vl(tmp_path_factory.mktemp("real") / "qwen2_5_vl_7b")
    return Policy(str(folder), max_pixels=28 * 28 * 16)


@pytest.mark.parametrize("share", [True, False])
def test_sampling_uses_only_the_configured_warpers(hub_config_policy, monkeypatch, share):
    """The checkpoint says repetition_penalty 1.05, temperature 0.1, top_p 0.001, top_k 1; geor1 samples with what it
    is told and nothing else: the sampled tokens' log-probs under the distribution sampled from equal
    `token_logprobs` at the same temperature, and the logits processors are exactly the configured warpers."""
    from transformers.generation import utils as gen_utils

    policy = hub_config_policy
    hub = policy.base_model().generation_config
    assert (hub.repetition_penalty, hub.temperature, hub.top_p, hub.top_k) == (1.05, 0.1, 0.001, 1)
    seen: list[list] = []
    original = gen_utils.GenerationMixin._get_logits_processor

    def spy(self, *args, **kwargs):
        procs = original(self, *args, **kwargs)
        seen.append(list(procs))
        return procs

    monkeypatch.setattr(gen_utils.GenerationMixin, "_get_logits_processor", spy)
    torch.manual_seed(0)
    rollout = policy.generate(
        _prompts(), group_size=3, max_new_tokens=8, temperature=1.3, share_prefix=share, output_logprobs=True
    )
    assert [type(p).__name__ for p in seen[-1]] == ["TemperatureLogitsWarper"]
    assert seen[-1][0].temperature == 1.3
    with torch.no_grad():
        lp = policy.token_logprobs(
            rollout.inputs, rollout.completion_ids, rollout.completion_mask, 3, temperature=1.3, share_prefix=share
        )
    torch.testing.assert_close(rollout.sample_logprobs, lp, atol=1e-5, rtol=0)
    assert policy.base_model().generation_config.repetition_penalty == 1.05  # the checkpoint's config is untouched

    policy.generate(
        _prompts()[:1], group_size=2, max_new_tokens=2, temperature=0.7, top_p=0.9, top_k=20, share_prefix=share
    )
    procs = {type(p).__name__: p for p in seen[-1]}
    assert sorted(procs) == ["TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper"]
    assert (
        procs["TemperatureLogitsWarper"].temperature,
        procs["TopPLogitsWarper"].top_p,
        procs["TopKLogitsWarper"].top_k,
    ) == (0.7, 0.9, 20)


def test_generate_passes_synced_gpus(tiny_policy, monkeypatch):
    """`synced_gpus` reaches transformers' generate (sharded ranks keep stepping until all are done)."""
    from transformers.generation import utils as gen_utils

    seen = []
    original = gen_utils.GenerationMixin.generate

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("synced_gpus"))
        kwargs["synced_gpus"] = False  # one process here: nothing to synchronise with
        return original(self, *args, **kwargs)

    monkeypatch.setattr(gen_utils.GenerationMixin, "generate", spy)
    for share in (True, False):
        tiny_policy.generate(_prompts()[:1], max_new_tokens=2, do_sample=False, synced_gpus=True, share_prefix=share)
    tiny_policy.generate(_prompts()[:1], max_new_tokens=2, do_sample=False)
    assert seen == [True, True, False]


# --------------------------------------------------------------------------------------------------- clear errors
def test_unsupported_family_is_a_clear_error(tmp_path):
    from transformers import LlamaConfig

    from geor1.model.adapters import adapter_for, supported_families

    assert {"qwen2_vl", "qwen2_5_vl", "qwen3_vl"} <= set(supported_families())
    LlamaConfig(
        vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    ).save_pretrained(tmp_path / "llama")
    with pytest.raises(Geor1Error, match=r"'llama'.*not supported.*Qwen2\.5-VL \(qwen2_5_vl\)"):
        Policy(str(tmp_path / "llama"))
    with pytest.raises(Geor1Error, match=r"supported: .*Qwen3-VL"):
        adapter_for(LlamaConfig())


def test_unknown_processor_output_is_a_clear_error(tiny_policy):
    enc = tiny_policy.encode(_prompts())
    enc["pixel_values_extra"] = enc["pixel_values"]
    ids, mask = _random_completions(tiny_policy, 4)
    with pytest.raises(Geor1Error, match=r"'pixel_values_extra'.*Qwen2\.5-VL"):
        tiny_policy.token_logprobs(enc, ids, mask, 2, share_prefix=False)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_tiny_family_folder_loads_back_with_its_own_processor(tmp_path, family):
    """Qwen2-VL / Qwen3-VL folders: their own processor classes come back from disk, same inputs, same logits."""
    tiny = TinyPolicy(seed=0, family=family, hidden_size=64)
    loaded = Policy(str(tiny.save_pretrained(tmp_path / family)))
    assert type(loaded.processor) is type(tiny.processor)
    assert type(loaded.processor).__name__ == {"qwen2_vl": "Qwen2VLProcessor", "qwen3_vl": "Qwen3VLProcessor"}[family]
    prompts = _family_prompts()
    a, b = tiny.encode(prompts), loaded.encode(prompts)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        assert torch.equal(tiny.model(**a).logits, loaded.model(**b).logits)


# ---------------------------------------------------------------------------------------------- geor1 model export
_FIT = """seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  max_steps: 1
  limit_val_batches: 0
  enable_progress_bar: false
  default_root_dir: {root}
model:
  class_path: geor1.objectives.SFTModule
  init_args:
    policy:
      class_path: geor1.model.TinyPolicy
      init_args: {{hidden_size: 64, vision_hidden_size: 32}}
    optimizer:
      class_path: torch.optim.AdamW
      init_args: {{lr: 0.01}}
    max_length: 512
data:
  class_path: geor1.data.ToyPairingDataModule
  init_args: {{num_train: 8, num_val: 2, num_candidates: 2, batch_size: 2}}
"""


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory):
    """A real one-step SFT fit through `geor1 fit` (in-process): the run folder and its one checkpoint."""
    from geor1.cli import main

    tmp = tmp_path_factory.mktemp("fit")
    root = tmp / "run"
    (tmp / "launch.yaml").write_text(_FIT.format(root=root))
    main(["fit", "--config", str(tmp / "launch.yaml")])
    (ckpt,) = sorted(root.rglob("*.ckpt"))
    return root, ckpt


def _export(capsys, *args: str) -> tuple[int, str]:
    from geor1.cli import main

    capsys.readouterr()
    try:
        main(["model", "export", *args])
    except SystemExit as e:
        return int(e.code or 0), capsys.readouterr().err
    return 0, capsys.readouterr().err


def test_export_finds_the_runs_own_saved_config(fitted_run, tmp_path, capsys):
    """No --config: the config.yaml LightningCLI saved for the run (found from the checkpoint's place) builds the
    policy, and the exported folder holds the checkpoint's weights, loaded by plain transformers."""
    root, ckpt = fitted_run
    assert list(root.rglob("config.yaml")), "LightningCLI saved no config.yaml"
    code, err = _export(capsys, "--ckpt", str(ckpt), "--out", str(tmp_path / "hf"))
    assert code == 0, err
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    got = AutoModelForImageTextToText.from_pretrained(tmp_path / "hf", local_files_only=True).state_dict()
    want = {k[len("policy.model.") :]: v for k, v in state.items() if k.startswith("policy.model.")}
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    initial = TinyPolicy(seed=0, hidden_size=64, vision_hidden_size=32).model.state_dict()
    assert any(not torch.equal(want[k], initial[k]) for k in want)  # the step moved the weights: not the init


def test_export_with_a_wrong_yaml_points_at_the_runs_saved_config(fitted_run, tmp_path, capsys):
    """A YAML of another model (here LoRA on, so no tensor name matches): one line saying the checkpoint does not
    fit that config and naming the run's own saved config.yaml, instead of "N of N policy tensors missing" alone."""
    root, ckpt = fitted_run
    (saved,) = root.rglob("config.yaml")
    wrong = tmp_path / "other.yaml"
    wrong.write_text(_FIT.format(root=tmp_path).replace("vision_hidden_size: 32}", "lora: {r: 4, alpha: 8}}"))
    code, err = _export(capsys, "--ckpt", str(ckpt), "--config", str(wrong), "--out", str(tmp_path / "hf"))
    assert code == 2
    line = err.strip()
    assert "\n" not in line and "does not fit this config" in line and f"config '{wrong}'" in line
    assert f"the run's own saved config is '{saved}'" in line
    assert not (tmp_path / "hf").exists()


def _hand_made_checkpoint(path, hyper_parameters: dict | None = None):
    policy = TinyPolicy(seed=0, hidden_size=64, vision_hidden_size=32)
    with torch.no_grad():
        next(iter(policy.parameters())).add_(1.0)  # not the seed-0 init
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"state_dict": {f"policy.{k}": v for k, v in policy.state_dict().items()}}
    if hyper_parameters is not None:
        data["hyper_parameters"] = hyper_parameters
    torch.save(data, path)
    return policy


def test_run_configs_prefers_the_launch_that_wrote_the_checkpoint(tmp_path):
    """Two launches of a run (tb/version_0, tb/version_1) and a checkpoint written between them: the config of the
    launch before the checkpoint comes first; a config in the checkpoint's own folder wins over both."""
    import os

    from geor1.model.export import run_configs

    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    first, second = (tmp_path / "run" / "tb" / f"version_{i}" / "config.yaml" for i in (0, 1))
    for i, config in enumerate((first, second)):
        config.parent.mkdir(parents=True)
        config.write_text("model: {}\n")
        os.utime(config, (1000 + 200 * i, 1000 + 200 * i))
    os.utime(ckpt, (1100, 1100))
    assert run_configs(ckpt) == [first, second]
    os.utime(ckpt, (1300, 1300))
    assert run_configs(ckpt) == [second, first]
    own = ckpt.parent / "config.yaml"
    own.write_text("model: {}\n")
    assert run_configs(ckpt) == [own]
    assert run_configs(tmp_path / "elsewhere" / "x" / "y" / "z.ckpt") == []


def test_export_reads_the_policy_settings_a_checkpoint_holds(tmp_path, capsys):
    """A checkpoint whose hyper_parameters hold the policy's class_path and init_args needs no config; without
    them and with no saved config nearby, the error says to pass --config."""
    node = {"class_path": "geor1.model.TinyPolicy", "init_args": {"hidden_size": 64, "vision_hidden_size": 32}}
    trained = _hand_made_checkpoint(tmp_path / "a" / "b" / "c" / "own.ckpt", {"policy": node, "max_length": 512})
    code, err = _export(capsys, "--ckpt", str(tmp_path / "a/b/c/own.ckpt"), "--out", str(tmp_path / "hf"))
    assert code == 0, err
    exported = Policy(str(tmp_path / "hf"))
    want = trained.model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in exported.model.state_dict().items())
    _hand_made_checkpoint(tmp_path / "d" / "e" / "f" / "bare.ckpt")
    code, err = _export(capsys, "--ckpt", str(tmp_path / "d/e/f/bare.ckpt"), "--out", str(tmp_path / "hf2"))
    assert code == 2 and "no config.yaml of the run found" in err and "--config" in err


def test_export_of_a_checkpoint_without_policy_weights_says_so(tmp_path, capsys):
    """A checkpoint of another objective (the cross-view encoder's: no tensor under 'policy.')."""
    torch.save({"state_dict": {"encoder.proj.weight": torch.zeros(2, 2)}}, tmp_path / "enc.ckpt")
    (tmp_path / "config.yaml").write_text(_FIT.format(root=tmp_path))
    code, err = _export(capsys, "--ckpt", str(tmp_path / "enc.ckpt"), "--out", str(tmp_path / "hf"))
    assert code == 2 and "holds no policy weights" in err and "encoder.proj.weight" in err
