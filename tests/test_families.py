"""Every supported VLM family, as a tiny random-init model with its own processor class built offline:

(a) grouped `Policy.token_logprobs` (G=2 completions of prompts with different numbers and sizes of images, a
    text-only prompt among them too) equal a plain forward of each prompt + completion on its own (processor called
    on that prompt alone, full logits, log_softmax, gather) within 1e-5 in float32, on the shared-prefix and per-row
    paths, tiled LM head or full logits -- and the check would fail if an image were lost or swapped; the sampling
    distribution of `generate` gives the same log-probs (on-policy); shared-prefix gradients under checkpointing
    equal per-row ones;
(b) one SFT step and one GRPO step run through Lightning and move the weights, the vision tower's included (so
    the images reached the loss); freeze_vision freezes exactly the vision side; a saved folder loads back;
(c) a model type with no adapter is refused with one line that lists the supported families.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from geor1 import Geor1Error
from geor1.data.sample import ChatSample, Prompt, collate_samples
from geor1.model.adapters import adapter_for, supported_families
from geor1.model.tiny_families import ALL_FAMILIES, build_family, save_family, tiny_family_policy
from geor1.rewards.registry import register
from geor1.tasks import PairingTarget

G = 2


def _image(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _prompts() -> list[Prompt]:
    """Two prompts with 1 and 2 images of different sizes and aspect ratios (28-64 px)."""
    return [
        Prompt(
            "Ground view: <image> Where on Earth was this picture taken?",
            [_image(40, 56, 1)],
            system="You are a helpful assistant.",
        ),
        Prompt("Candidates: A <image> B <image> Which one?", [_image(64, 28, 2), _image(30, 30, 3)]),
    ]


COMPLETIONS = [
    "<think>The ground view shows water.</think><answer>A</answer>",
    "So B.",
    "The answer is C",
    "<answer>D</answer> Rule out candidate A; keep B.",
]


@pytest.fixture(scope="module", params=ALL_FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def built(family):
    """(model, processor) of the family and a Policy around the same weights, built once per module, for scoring."""
    model, processor = build_family(family, seed=0)
    policy = tiny_family_policy(family, seed=0)  # same seed: the same weights as `model`
    policy.model.eval()
    return model.eval(), processor, policy


def _completions(tokenizer, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[2G, T] completion ids (right-padded; EOS closes all but the last) and their mask."""
    rows = []
    for i, text in enumerate(COMPLETIONS[: 2 * G]):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        rows.append(ids + ([eos_id] if i < 2 * G - 1 else []))
    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), eos_id, dtype=torch.long)
    mask = torch.zeros(len(rows), t, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = True
    return ids, mask


_REFERENCE: dict[tuple, torch.Tensor] = {}


def _single_forward_logprobs(model, processor, prompt: Prompt, completion: torch.Tensor) -> torch.Tensor:
    """Reference: the processor on this prompt alone, prompt + completion in one plain forward, full logits,
    log_softmax, gather -> [k] log-probs of the k completion tokens."""
    key = (
        model.config.model_type,
        prompt.text,
        tuple(im.tobytes() for im in prompt.images),
        tuple(completion.tolist()),
    )
    if key in _REFERENCE:
        return _REFERENCE[key]
    text = processor.apply_chat_template(prompt.messages(), tokenize=False, add_generation_prompt=True)
    enc = processor(text=[text], images=[prompt.images] if prompt.images else None, return_tensors="pt")
    k = completion.shape[0]
    batch = dict(enc)
    batch["input_ids"] = torch.cat([enc["input_ids"], completion[None]], 1)
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    for name in ("token_type_ids", "mm_token_type_ids"):  # image-token markers: completion tokens are text
        if name in enc:
            batch[name] = torch.cat([enc[name], torch.zeros(1, k, dtype=enc[name].dtype)], 1)
    with torch.no_grad():
        logits = model(**batch, use_cache=False).logits[0, -k - 1 : -1].float()  # [k, V]
    _REFERENCE[key] = torch.log_softmax(logits, -1).gather(-1, completion[:, None])[:, 0]
    return _REFERENCE[key]


PATHS = {"shared_tiled": (True, 32), "shared_full_logits": (True, None), "per_row_tiled": (False, 32)}
"""token_logprobs paths: (share_prefix, logprob_tile). share_prefix is honoured where the family supports it."""


def _group_vs_single(built, prompts: list[Prompt], paths: list[str]) -> dict[str, float]:
    """Max |Policy.token_logprobs - single-prompt reference| over G completions of each prompt, per path."""
    model, processor, policy = built
    ids, mask = _completions(policy.tokenizer, policy.eos_ids[0])
    reps = -(-len(prompts) * G // ids.shape[0])
    ids, mask = ids.repeat(reps, 1)[: len(prompts) * G], mask.repeat(reps, 1)[: len(prompts) * G]
    out = {}
    for path in paths:
        share, policy.logprob_tile = PATHS[path]
        with torch.no_grad():
            lp = policy.token_logprobs(policy.encode(prompts), ids, mask, group_size=G, share_prefix=share)
        worst = 0.0
        for n in range(ids.shape[0]):
            k = int(mask[n].sum())
            ref = _single_forward_logprobs(model, processor, prompts[n // G], ids[n, :k])
            worst = max(worst, float((ref - lp[n, :k]).abs().max()))
            assert torch.all(lp[n, k:] == 0)
        out[path] = worst
    policy.logprob_tile = 32
    return out


def test_group_logprobs_equal_single_prompt_forwards(family, built):
    diffs = _group_vs_single(built, _prompts(), list(PATHS))
    assert max(diffs.values()) <= 1e-5, f"{family}: max |group - single| = {diffs}"
    # The check can fail: the first prompt with its image mirrored scores differently by far more than 1e-5.
    model, processor, policy = built
    prompt = _prompts()[0]
    mirrored = Prompt(prompt.text, [prompt.images[0].transpose(Image.Transpose.FLIP_LEFT_RIGHT)], system=prompt.system)
    ids, mask = _completions(policy.tokenizer, policy.eos_ids[0])
    k = int(mask[0].sum())
    same = _single_forward_logprobs(model, processor, prompt, ids[0, :k])
    other = _single_forward_logprobs(model, processor, mirrored, ids[0, :k])
    assert float((other - same).abs().max()) > 1e-3


TEXT_ONLY = [
    Prompt("No image here. Where on Earth was this picture taken?", []),
    Prompt("Text only, a longer prompt: which candidate matches the ground view best?", []),
]


@pytest.mark.parametrize("path", ["shared_tiled", "per_row_tiled"])
def test_text_only_prompt_in_an_image_batch(family, built, path):
    """A prompt without images next to prompts with images: still exact (its row holds no image entries; every
    per-row key, LLaVA-OneVision's batch_num_images included, has one entry per prompt after `finish_inputs`)."""
    diffs = _group_vs_single(built, [*_prompts(), TEXT_ONLY[0]], [path])
    assert max(diffs.values()) <= 1e-5, f"{family}: max |group - single| = {diffs}"


def test_text_only_micro_batch_out_of_an_image_batch(family, built):
    """Text-only prompts selected out of a batch with images (a GRPO micro-batch) carry no image keys, as the
    processor gives for them alone, and score exactly like each prompt's plain single forward on both paths."""
    model, processor, policy = built
    base = policy.base_model()
    enc = policy.encode([*_prompts(), *TEXT_ONLY])
    assert all(enc[k].shape[0] == 4 for k in enc if policy.adapter.layout(k) in ("row", "seq"))
    if "patch" in policy.adapter.key_layouts.values():  # a fresh adapter splits the patches from the model alone
        patches = type(policy.adapter)().patches_per_image(enc, base)
        assert int(patches.sum()) == enc["pixel_values"].shape[0] and patches.shape[0] == 3
    sub = policy.select_prompts(enc, [3, 2])
    alone = processor(
        text=[processor.apply_chat_template(TEXT_ONLY[0].messages(), tokenize=False, add_generation_prompt=True)],
        return_tensors="pt",
    )
    assert set(sub) == {k for k, v in alone.items() if v is not None}, f"{family}: {sorted(sub)}"
    ids, mask = _completions(policy.tokenizer, policy.eos_ids[0])
    for share in (True, False):
        with torch.no_grad():
            lp = policy.token_logprobs(sub, ids, mask, group_size=G, share_prefix=share)
        for n in range(ids.shape[0]):
            k = int(mask[n].sum())
            ref = _single_forward_logprobs(model, processor, TEXT_ONLY[1 - n // G], ids[n, :k])
            assert float((ref - lp[n, :k]).abs().max()) <= 1e-5, f"{family} share={share} row {n}"


def test_sampling_logprobs_equal_token_logprobs(family, built):
    """On-policy: the log-probs of the distribution `generate` sampled from (shared prefix where supported) equal
    `token_logprobs` of the sampled tokens."""
    _, _, policy = built
    torch.manual_seed(1)
    rollout = policy.generate(_prompts(), group_size=G, max_new_tokens=6, output_logprobs=True)
    with torch.no_grad():
        lp = policy.token_logprobs(rollout.inputs, rollout.completion_ids, rollout.completion_mask, group_size=G)
    assert float((lp - rollout.sample_logprobs).abs().max()) <= 1e-5


def test_shared_prefix_gradients_equal_per_row_gradients(family):
    """The GRPO loss's gradients through the shared prefix (each prompt and its images run once for G completions)
    under gradient checkpointing equal those of the plain per-row pass, for every parameter (vision included)."""
    policy = tiny_family_policy(family, seed=0)
    policy.model.train()
    ids, mask = _completions(policy.tokenizer, policy.eos_ids[0])
    weights = torch.linspace(-1, 1, ids.numel()).view_as(ids)  # an advantage-like weight per token
    inputs = policy.encode(_prompts())
    grads = []
    for share, checkpointing in ((False, False), (True, True)):
        if checkpointing:
            policy.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        policy.model.zero_grad()
        lp = policy.token_logprobs(inputs, ids, mask, group_size=G, share_prefix=share)
        (lp * weights).sum().backward()
        grads.append(
            torch.cat(
                [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in policy.model.parameters()]
            )
        )  # (LLaVA-OV never reads post_layernorm)
    vision = sum(p.numel() for p in policy.adapter.vision_tower(policy.base_model()).parameters())
    assert vision > 0 and bool(grads[0].abs().gt(0).any())
    torch.testing.assert_close(grads[1], grads[0], atol=2e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- training steps


@register("families_test_length")
def _length_reward(completions: list[str], samples: list[dict], **_: object) -> list[float]:
    """A reward that differs between samples of a group (so advantages, hence gradients, are non-zero)."""
    return [len(c) / 10.0 for c in completions]


def _samples(n: int) -> list[ChatSample]:
    prompts = _prompts()
    return [
        ChatSample(
            key=f"s{i}",
            prompt=prompts[i % 2],
            response=COMPLETIONS[i % len(COMPLETIONS)],
            target=PairingTarget(k=2, answer=0),
        )
        for i in range(n)
    ]


def _snapshot(policy) -> dict[str, dict[str, torch.Tensor]]:
    base = policy.base_model()
    vision = {n: p.detach().clone() for n, p in policy.adapter.vision_tower(base).named_parameters()}
    text = {n: p.detach().clone() for n, p in policy.adapter.decoder_layers(base)[0].named_parameters()}
    return {"vision": vision, "text": text}


def _moved(before: dict[str, torch.Tensor], module_params) -> bool:
    return any(not torch.equal(before[n], p.detach()) for n, p in module_params)


def _fit_one_step(module, samples: list[ChatSample], tmp_path) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=DataLoader(samples, batch_size=2, collate_fn=collate_samples))
    assert trainer.global_step == 1
    return trainer


def _assert_trained(policy, before) -> None:
    base = policy.base_model()
    assert _moved(before["text"], policy.adapter.decoder_layers(base)[0].named_parameters())
    # plain SGD moves only parameters with a gradient: the vision tower moved, so the images reached the loss
    assert _moved(before["vision"], policy.adapter.vision_tower(base).named_parameters())


def test_one_sft_step_trains_text_and_vision(family, tmp_path):
    from geor1.objectives.sft import SFTModule

    L.seed_everything(0)
    policy = tiny_family_policy(family, seed=0)
    before = _snapshot(policy)
    module = SFTModule(policy, optimizer=lambda p: torch.optim.SGD(p, lr=0.1), max_length=512, num_val_generations=0)
    _fit_one_step(module, _samples(2), tmp_path)
    _assert_trained(policy, before)


def test_one_grpo_step_trains_text_and_vision(family, tmp_path):
    from geor1.objectives.grpo import GRPOModule
    from geor1.objectives.grpo_settings import LossSettings, RolloutSettings

    L.seed_everything(0)
    policy = tiny_family_policy(family, seed=0)
    before = _snapshot(policy)
    module = GRPOModule(
        policy,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        rollout=RolloutSettings(group_size=G, max_new_tokens=6),
        loss=LossSettings(beta=0.0),
        rewards={"families_test_length": 1.0},
        log_completions_every_n_steps=0,
    )
    _fit_one_step(module, _samples(2), tmp_path)
    _assert_trained(policy, before)


def test_default_lora_targets_the_text_projections_only(family):
    """The default LoraSpec builds for every family and puts adapters on all 7 attention / MLP projections of every
    text decoder layer (`language_model` or Idefics3's `text_model`) and nowhere else (no vision tower)."""
    from geor1.model import LoraSpec

    policy = tiny_family_policy(family, seed=0, lora=LoraSpec(r=4, alpha=8, dropout=0.0))
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in policy.model.named_modules() if n.endswith(".lora_A")}
    base = policy.base_model()
    expected = set()
    for layer in policy.adapter.decoder_layers(base):
        prefix = next(n for n, m in policy.model.named_modules() if m is layer)
        expected |= {
            f"{prefix}.{sub}"
            for sub in (
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj",
            )
        }
    assert adapted == expected, f"{family}: {sorted(adapted ^ expected)}"
    vision = {id(p) for p in policy.adapter.vision_tower(base).parameters()}
    trainable = [n for n, p in policy.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any(id(p) in vision for p in policy.model.parameters() if p.requires_grad)


def test_freeze_vision_freezes_exactly_the_vision_side(family):
    """The adapter's vision side (encoder, projector / merger, learned image tokens) is every parameter outside
    the text model and LM head; freeze_vision freezes it and nothing else."""
    policy = tiny_family_policy(family, seed=0, freeze_vision=True)
    base = policy.base_model()
    vision = {id(p) for p in policy.adapter.vision_tower(base).parameters()}
    text_side = ("language_model.", "text_model.", "lm_head.")
    for name, p in base.named_parameters():
        in_text = any(t in name for t in text_side)
        assert in_text != (id(p) in vision), f"{family}: {name} is {'both' if in_text else 'neither'} text and vision"
        assert p.requires_grad == in_text, name
    assert len(policy.adapter.vision_blocks(base)) == 2 and len(policy.adapter.decoder_layers(base)) == 2
    assert policy.adapter.lm_head(base) is base.get_output_embeddings()


def test_saved_folder_loads_back_through_policy(family, built, tmp_path):
    """`save_family` writes a folder that `Policy(path)` loads offline (processor class, special tokens and chat
    template included) with the same weights: same encoding, same log-probs."""
    from geor1.model import Policy

    _, _, policy = built
    loaded = Policy(str(save_family(family, tmp_path / family, seed=0)))
    loaded.model.eval()
    assert type(loaded.processor) is type(policy.processor) and type(loaded.adapter) is type(policy.adapter)
    ids, mask = _completions(policy.tokenizer, policy.eos_ids[0])
    a, b = policy.encode(_prompts()), loaded.encode(_prompts())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.token_logprobs(b, ids, mask, group_size=G),
            policy.token_logprobs(a, ids, mask, group_size=G),
            atol=1e-6,
            rtol=0,
        )


# ---------------------------------------------------------------------------------------------- refusal


def test_unsupported_family_is_one_line_listing_the_supported(tmp_path):
    from transformers import LlavaConfig

    from geor1.model import Policy

    assert set(ALL_FAMILIES) <= set(supported_families())
    for refuse in (lambda: adapter_for(LlavaConfig()), lambda: Policy(str(_write_config(tmp_path)))):
        with pytest.raises(Geor1Error) as err:
            refuse()
        msg = str(err.value)
        assert "\n" not in msg and "'llava'" in msg and "not supported" in msg
        for mt, name in supported_families().items():
            assert f"{name} ({mt})" in msg


def _write_config(tmp_path):
    from transformers import LlavaConfig

    out = tmp_path / "llava"
    LlavaConfig().save_pretrained(out)
    return out


def test_cli_tiny_writes_any_family(tmp_path):
    """`geor1 model tiny --family NAME` parses and writes that family's folder (config + processor); an unknown
    family is a one-line error listing the known ones."""
    import argparse

    from transformers import AutoConfig, AutoProcessor

    from geor1.model.commands import add_commands

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    ns = parser.parse_args(["model", "tiny", "--family", "smolvlm", "--out", str(tmp_path / "smol"), "--seed", "3"])
    ns.handler(ns)
    assert AutoConfig.from_pretrained(tmp_path / "smol").model_type == "smolvlm"
    assert type(AutoProcessor.from_pretrained(tmp_path / "smol")).__name__ == "SmolVLMProcessor"
    ns = parser.parse_args(["model", "tiny", "--family", "llava", "--out", str(tmp_path / "x")])
    with pytest.raises(Geor1Error, match=r"--family llava .*internvl"):
        ns.handler(ns)
    assert not (tmp_path / "x").exists()
