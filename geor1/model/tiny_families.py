"""Tiny random-init models of the non-Qwen VLM families geor1 supports, with their own processor classes, offline.

Idefics3, SmolVLM, Gemma3, LLaVA-OneVision and InternVL, scaled down to 2 text layers, a hidden size of 64 and a
2-block vision tower on 32-px tiles, so a forward takes milliseconds. The tokenizer is an in-process byte-level BPE on
geor1's vocabulary (as in `geor1.model.tiny`) plus the family's special tokens; the chat template is the family's,
reduced to what geor1 sends (`Prompt.messages()`: a string system turn, a user turn of text and image items). Image
settings keep every family's real behaviour at a small scale: Idefics3 / SmolVLM split large images into tiles plus a
global view, LLaVA-OneVision picks an any-resolution grid, InternVL crops into 1-4 tiles, Gemma3 resizes to one square.

    model, processor = build_family("smolvlm")      # any of ALL_FAMILIES, Qwen's included
    policy = tiny_family_policy("gemma3")           # the same behind `Policy`
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn
from transformers import PreTrainedTokenizerFast

from geor1.model.policy import LoraSpec, Policy
from geor1.model.tiny import _CORPUS, build_tiny_model, build_tiny_processor
from geor1.model.tiny import FAMILIES as QWEN_FAMILIES

log = logging.getLogger(__name__)

TILE = 32  # vision tower input side (px) of every family here
PATCH = 8  # vision patch side (px): 4x4 patches per tile

# ---------------------------------------------------------------------------------------------- tokenizers

# Chat templates: each family's own, reduced to geor1's messages (string or [text/image items] content).
_CONTENT = (
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}IMAGE{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
)

# Qwen2-style turns: LLaVA-OneVision (Qwen2 text model, `<image>`) and InternVL (Qwen2 text model, `<IMG_CONTEXT>`).
_QWEN_TURNS = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n" + _CONTENT + "<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Idefics3 / SmolVLM: "<|im_start|>User:<image>text<end_of_utterance>\nAssistant:"
_IDEFICS_TURNS = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is not string and message['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
    + _CONTENT.replace("IMAGE", "<image>")
    + "<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

# Gemma3: the system text opens the first user turn; the assistant is "model"; an image is `<start_of_image>`.
_GEMMA_TURNS = (
    "{{ bos_token }}{% set first = '' %}"
    "{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\n\n' %}"
    "{% set messages = messages[1:] %}{% endif %}"
    "{% for message in messages %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if loop.first %}{{ first }}{% endif %}"
    + _CONTENT.replace("IMAGE", "<start_of_image>")
    + "<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def _bpe(special_tokens: list[str], vocab_size: int = 768) -> Tokenizer:
    """A byte-level BPE trained in-process on geor1's corpus; `special_tokens` get the first ids, in order."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in _CORPUS.splitlines() if line.strip()]
    tok.train_from_iterator(lines * 4, trainer=trainer)
    return tok


def _tokenizer(special: list[str], named: dict[str, str], template: str, **kw: str) -> PreTrainedTokenizerFast:
    """Fast tokenizer over `_bpe(special)`; `named` are the family's model-specific tokens (`tokenizer.image_token`,
    `tokenizer.image_token_id`, ... as its processor reads them)."""
    return PreTrainedTokenizerFast(
        tokenizer_object=_bpe(special),
        extra_special_tokens=named,
        chat_template=template,
        padding_side="left",
        model_max_length=32768,
        **kw,
    )


def _id(tok: PreTrainedTokenizerFast, token: str) -> int:
    i = tok.convert_tokens_to_ids(token)
    if not isinstance(i, int):  # one token in, one id out; the annotation also covers lists
        raise TypeError(f"token {token!r} gave {i!r}, not one id")
    return i


def _ids(tok: PreTrainedTokenizerFast, *tokens: str) -> list[int]:
    return [_id(tok, t) for t in tokens]


def _text_config(tok: PreTrainedTokenizerFast, hidden: int, layers: int, pad: str, eos: str, bos: str, **extra) -> dict:
    """A Llama / Qwen2 / Gemma3 text body: `layers` blocks of width `hidden`, 4 heads, 2 KV heads."""
    pad_id, eos_id, bos_id = _ids(tok, pad, eos, bos)
    return dict(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=bos_id,
        **extra,
    )


def _vision(hidden: int = 32, depth: int = 2, **extra) -> dict:
    """A 2-block, 32-wide vision tower on 32-px tiles of 8-px patches."""
    return dict(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=depth,
        num_attention_heads=2,
        image_size=TILE,
        patch_size=PATCH,
        **extra,
    )


def _siglip() -> dict:
    """SigLIP as Gemma3 and LLaVA-OneVision configure it: no pooling head (they read the patch features)."""
    return _vision(model_type="siglip_vision_model", vision_use_head=False)


def _seeded(cls, config, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    return model


def _generation(model, tok: PreTrainedTokenizerFast, eos: list[str], pad: str, bos: str):
    model.generation_config.eos_token_id = _ids(tok, *eos)
    model.generation_config.pad_token_id = tok.convert_tokens_to_ids(pad)
    model.generation_config.bos_token_id = tok.convert_tokens_to_ids(bos)
    return model


# ---------------------------------------------------------------------------------------------- Idefics3 / SmolVLM

_ROW_COL = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
_IDEFICS_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
    "<video>",
    *_ROW_COL,
]


def _idefics_like(smol: bool, seed: int, hidden_size: int, num_layers: int):
    """Idefics3 / SmolVLM: images are resized to a longest edge of 2 tiles and split into up to 2x2 tiles of 32 px
    plus a 32-px global view; each tile gives (32/8)^2 / 2^2 = 4 `<image>` tokens."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
        LlamaConfig,
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
    )

    # SmolVLM's classes are Idefics3's, renamed (and a mandatory video processor)
    Config: type[Idefics3Config | SmolVLMConfig] = SmolVLMConfig if smol else Idefics3Config
    Model: type[Idefics3ForConditionalGeneration | SmolVLMForConditionalGeneration] = (
        SmolVLMForConditionalGeneration if smol else Idefics3ForConditionalGeneration
    )
    ImageProcessor: type[Idefics3ImageProcessor | SmolVLMImageProcessor] = (
        SmolVLMImageProcessor if smol else Idefics3ImageProcessor
    )
    named = {
        "image_token": "<image>",
        "fake_image_token": "<fake_token_around_image>",
        "global_image_token": "<global-img>",
        "end_of_utterance_token": "<end_of_utterance>",
        "video_token": "<video>",
    }
    tok = _tokenizer(
        _IDEFICS_SPECIAL,
        named,
        _IDEFICS_TURNS,
        eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>",
        bos_token="<|im_start|>",
    )
    scale = 2
    seq_len = (TILE // PATCH) ** 2 // scale**2
    ip_kw = dict(size={"longest_edge": 2 * TILE}, max_image_size={"longest_edge": TILE}, do_image_splitting=True)
    if smol:
        # SmolVLM's video processor is mandatory in its processor; geor1 sends no video.
        vp = SmolVLMVideoProcessor(size={"longest_edge": TILE}, max_image_size={"longest_edge": TILE})
        processor: Idefics3Processor | SmolVLMProcessor = SmolVLMProcessor(
            image_processor=ImageProcessor(**ip_kw),
            tokenizer=tok,
            video_processor=vp,
            image_seq_len=seq_len,
            chat_template=_IDEFICS_TURNS,
        )
    else:
        processor = Idefics3Processor(
            image_processor=ImageProcessor(**ip_kw), tokenizer=tok, image_seq_len=seq_len, chat_template=_IDEFICS_TURNS
        )
    text = _text_config(tok, hidden_size, num_layers, "<|endoftext|>", "<end_of_utterance>", "<|im_start|>")
    # the pad id lives in text_config (a top-level pad_token_id is deprecated in transformers 5)
    config = Config(
        text_config=LlamaConfig(**text), vision_config=_vision(), scale_factor=scale, image_token_id=_id(tok, "<image>")
    )
    model = _seeded(Model, config, seed)
    return _generation(model, tok, ["<end_of_utterance>"], "<|endoftext|>", "<|im_start|>"), processor


def build_idefics3(seed: int = 0, hidden_size: int = 64, num_layers: int = 2):
    return _idefics_like(False, seed, hidden_size, num_layers)


def build_smolvlm(seed: int = 0, hidden_size: int = 64, num_layers: int = 2):
    return _idefics_like(True, seed, hidden_size, num_layers)


# ---------------------------------------------------------------------------------------------- Gemma3

_GEMMA_SPECIAL = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
]


def build_gemma3(seed: int = 0, hidden_size: int = 64, num_layers: int = 2):
    """Gemma3: every image is resized to one 32-px square (no pan-and-scan) -> 4 `<image_soft_token>`s between
    `<start_of_image>` / `<end_of_image>`; a SigLIP tower; sliding-window layers (16 tokens, shorter than the test
    prompts, so the window is exercised) then one global layer."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor

    named = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    tok = _tokenizer(
        _GEMMA_SPECIAL, named, _GEMMA_TURNS, eos_token="<eos>", pad_token="<pad>", bos_token="<bos>", unk_token="<unk>"
    )
    tokens_per_image = 4
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": TILE, "width": TILE}),
        tokenizer=tok,
        image_seq_length=tokens_per_image,
        chat_template=_GEMMA_TURNS,
    )
    text = _text_config(
        tok,
        hidden_size,
        num_layers,
        "<pad>",
        "<eos>",
        "<bos>",
        head_dim=hidden_size // 4,
        query_pre_attn_scalar=hidden_size // 4,
        sliding_window=16,
        layer_types=["sliding_attention"] * (num_layers - 1) + ["full_attention"],
    )
    boi, eoi, img = _ids(tok, "<start_of_image>", "<end_of_image>", "<image_soft_token>")
    config = Gemma3Config(
        text_config=text,
        vision_config=_siglip(),
        mm_tokens_per_image=tokens_per_image,
        boi_token_index=boi,
        eoi_token_index=eoi,
        image_token_index=img,
    )  # the pad id lives in text_config
    model = _seeded(Gemma3ForConditionalGeneration, config, seed)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        # transformers initialises the image projection to zeros: images would not change a single logit
        torch.manual_seed(seed + 1)
        proj = model.model.multi_modal_projector.mm_input_projection_weight
        proj.normal_(0.0, proj.shape[0] ** -0.5)
    return _generation(model, tok, ["<end_of_turn>", "<eos>"], "<pad>", "<bos>"), processor


# ---------------------------------------------------------------------------------------------- LLaVA-OneVision

_QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_llava_onevision(seed: int = 0, hidden_size: int = 64, num_layers: int = 2):
    """LLaVA-OneVision: a 32-px base view plus an any-resolution grid of 32-px tiles (1x1 .. 2x2), unpadded to the
    image's aspect ratio; 16 tokens per tile, one newline token per feature row. Prompts with several images use the
    base view only (the processor's multi-image rule)."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    named = {"image_token": "<image>", "video_token": "<video>"}
    template = _QWEN_TURNS.replace("IMAGE", "<image>\n")
    tok = _tokenizer(
        [*_QWEN_SPECIAL, "<image>", "<video>"], named, template, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    pinpoints = [[TILE, TILE], [TILE, 2 * TILE], [2 * TILE, TILE], [2 * TILE, 2 * TILE]]
    ip = LlavaOnevisionImageProcessor(size={"height": TILE, "width": TILE}, image_grid_pinpoints=pinpoints)
    vp = LlavaOnevisionVideoProcessor(size={"height": TILE, "width": TILE})
    processor = LlavaOnevisionProcessor(
        image_processor=ip,
        tokenizer=tok,
        video_processor=vp,
        num_image_tokens=(TILE // PATCH) ** 2,
        vision_feature_select_strategy="full",
        chat_template=template,
        vision_aspect_ratio="anyres_max_9",
    )
    text = _text_config(tok, hidden_size, num_layers, "<|endoftext|>", "<|im_end|>", "<|endoftext|>")
    img, vid = _ids(tok, "<image>", "<video>")
    config = LlavaOnevisionConfig(
        text_config={"model_type": "qwen2", **text},
        vision_config=_siglip(),
        image_token_index=img,
        video_token_index=vid,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
        vision_aspect_ratio="anyres_max_9",
    )
    model = _seeded(LlavaOnevisionForConditionalGeneration, config, seed)
    return _generation(model, tok, ["<|im_end|>", "<|endoftext|>"], "<|endoftext|>", "<|endoftext|>"), processor


# ---------------------------------------------------------------------------------------------- InternVL


def build_internvl(seed: int = 0, hidden_size: int = 64, num_layers: int = 2):
    """InternVL: images are cropped into 1-4 tiles of 32 px (+ a thumbnail when tiled); each tile gives
    (32/8)^2 * 0.5^2 = 4 `<IMG_CONTEXT>` tokens between `<img>` / `</img>`."""
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
    )

    named = {
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    }
    template = _QWEN_TURNS.replace("IMAGE", "<IMG_CONTEXT>\n")
    tok = _tokenizer(
        [*_QWEN_SPECIAL, "<img>", "</img>", "<IMG_CONTEXT>", "<video>"],
        named,
        template,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokens_per_tile = 4
    ip = GotOcr2ImageProcessor(size={"height": TILE, "width": TILE}, crop_to_patches=True, min_patches=1, max_patches=4)
    vp = InternVLVideoProcessor(size={"height": TILE, "width": TILE})
    processor = InternVLProcessor(
        image_processor=ip, tokenizer=tok, video_processor=vp, image_seq_length=tokens_per_tile, chat_template=template
    )
    text = _text_config(tok, hidden_size, num_layers, "<|endoftext|>", "<|im_end|>", "<|endoftext|>")
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=[TILE, TILE],
        patch_size=[PATCH, PATCH],
    )
    config = InternVLConfig(
        text_config={"model_type": "qwen2", **text},
        vision_config=vision,
        image_token_id=_id(tok, "<IMG_CONTEXT>"),
        image_seq_length=tokens_per_tile,
        downsample_ratio=0.5,
    )
    model = _seeded(InternVLForConditionalGeneration, config, seed)
    return _generation(model, tok, ["<|im_end|>", "<|endoftext|>"], "<|endoftext|>", "<|endoftext|>"), processor


# ---------------------------------------------------------------------------------------------- registry

BUILDERS: dict[str, Callable] = {
    "idefics3": build_idefics3,
    "smolvlm": build_smolvlm,
    "gemma3": build_gemma3,
    "llava_onevision": build_llava_onevision,
    "internvl": build_internvl,
}
ALL_FAMILIES: tuple[str, ...] = (*QWEN_FAMILIES, *BUILDERS)
"""config.model_type of every family with a tiny builder (Qwen's from `geor1.model.tiny`, the others here)."""


def build_family(family: str, seed: int = 0, **kw: int):
    """(model, processor) of a tiny random-init `family` (one of `ALL_FAMILIES`), built offline."""
    if family in QWEN_FAMILIES:  # as small as the others here: 64-wide text, 32-wide vision
        processor = build_tiny_processor(family=family)
        kw = {"hidden_size": 64, "vision_hidden_size": 32, **kw}
        return build_tiny_model(processor, seed=seed, family=family, **kw), processor
    if family not in BUILDERS:
        raise ValueError(f"no tiny builder for '{family}'; known: {list(ALL_FAMILIES)}")
    return BUILDERS[family](seed=seed, **kw)


def tiny_family_policy(
    family: str,
    seed: int = 0,
    lora: LoraSpec | None = None,
    freeze_vision: bool = False,
    gradient_checkpointing: bool = False,
    logprob_tile: int | None = 32,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> Policy:
    """A `Policy` around a tiny `family` model built in-process (what `Policy(path)` gives for its saved folder);
    min_pixels / max_pixels: Policy's image budget, mapped onto the family's processor settings."""
    model, processor = build_family(family, seed=seed)
    policy = Policy.__new__(Policy)
    nn.Module.__init__(policy)
    policy._setup(model, processor, lora, freeze_vision, min_pixels, max_pixels, gradient_checkpointing, logprob_tile)
    policy.source = f"tiny(family={family}, seed={seed})"
    return policy


def save_family(family: str, out_dir: str | Path, seed: int = 0, **kw: int) -> Path:
    """Write a tiny `family` model + processor folder that `Policy(path)` and plain `transformers` load offline."""
    model, processor = build_family(family, seed=seed, **kw)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    log.info("tiny %s (%d parameters) written to %s", family, sum(p.numel() for p in model.parameters()), out)
    return out
