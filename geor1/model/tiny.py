"""Tiny random-init Qwen2-VL / Qwen2.5-VL / Qwen3-VL models with an offline tokenizer and processor (tests, CPU demo).

Same architecture as the paper's Qwen2.5-VL-7B-Instruct (multimodal RoPE, windowed vision tower with patch merging,
`<|image_pad|>` expansion by the processor), scaled down to about a million parameters. The tokenizer is a
byte-level BPE trained in-process on the prompt / chain-of-thought vocabulary geor1 uses, plus Qwen's special tokens
and chat template, so nothing is downloaded. Training is deterministic: the same call gives the same vocabulary.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

log = logging.getLogger(__name__)

# Qwen2-VL's special tokens, in Qwen's order (ids follow the BPE vocabulary here, not Qwen's 151643+).
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# One chat turn of Qwen's templates, reduced to what geor1 sends (text and image items; string content too).
_TURN = (
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
)
_GENERATION_PROMPT = "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"

# Qwen2-VL's chat template: a default system message before the first turn unless the conversation gives one.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}" + _TURN + "{% endfor %}" + _GENERATION_PROMPT
)

# Qwen3-VL's template: no default system message (otherwise the same image items and turn markers).
QWEN3_CHAT_TEMPLATE = "{% for message in messages %}" + _TURN + "{% endfor %}" + _GENERATION_PROMPT

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
"""config.model_type of the tiny families built here."""

# Words the tiny models will read and write: prompts, CoT template, place vocabulary, answer tags.
_CORPUS = """
You are a helpful assistant. system user assistant
<think> </think> <answer> </answer> The answer is A B C D E F G H
Which satellite tile shows the place where the ground-level photo was taken? Answer with the letter.
Ground view: Candidates: Candidate A B C D E F G H. Where on Earth was this picture taken?
Give the latitude and longitude in decimal degrees, then the city and the country.
The ground view shows water to the north east south west, a coastline, sand, desert, snow, ice, forest,
grassland, cropland, mountains, hills, relief, flat plains, a river, a lake, the sea, the ocean, clouds, blue sky.
Cross-check: the tile matches the view; the tile does not match because it shows more water, less vegetation,
no coast, a different colour, brighter, darker, greener, browner, whiter. Rule out candidate. Keep candidate.
Geographic priors: tropical, arid, temperate, continental, polar climate; northern southern hemisphere;
eastern western; latitude band; equator; near the coast; inland; high altitude; low altitude.
Region: Africa Asia Europe North America South America Oceania. City country lat lon km degrees N S E W
0 1 2 3 4 5 6 7 8 9 10 25 200 750 2500 . , : ; - + ( ) ° ' " ? ! %
View: Near the camera: Foreground: green bare dark water snow matches fits consistent ruled out no vs
A: B: C: D: So A. So B. So C. So D. Only A fits. Answer B. 10% 20% 30% 40% 50% 60% 70% 80% 90% 100%
The ground view shows mostly vegetation with some water and fairly flat terrain. rugged, broken terrain.
Open water is in view, so the place is near a coast or a large lake. This suggests a tropical humid climate,
typical of tropical latitudes. Geographic priors: the northern hemisphere and the eastern hemisphere, in Europe.
The region fits My estimate is Looking at the ground-level photo, I see In the ground view there is
"""


def _train_tokenizer(vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in _CORPUS.splitlines() if line.strip()]
    tok.train_from_iterator(lines * 4, trainer=trainer)
    return tok


def _tiny_tokenizer(vocab_size: int, chat_template: str) -> PreTrainedTokenizerFast:
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(vocab_size),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        chat_template=chat_template,
        padding_side="left",
        model_max_length=32768,
    )
    tokenizer.image_token = "<|image_pad|>"
    tokenizer.video_token = "<|video_pad|>"
    return tokenizer


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"tiny family '{family}' is not one of {FAMILIES}")


def default_pixels(family: str = "qwen2_5_vl") -> tuple[int, int]:
    """(min_pixels, max_pixels) giving 4 to 16 image tokens: (patch * merge)^2 * (4, 16)."""
    _check_family(family)
    unit = 32 if family == "qwen3_vl" else 28
    return unit * unit * 4, unit * unit * 16


def build_tiny_processor(
    vocab_size: int = 1024,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    family: str = "qwen2_5_vl",
) -> Qwen2VLProcessor | Qwen2_5_VLProcessor | Qwen3VLProcessor:
    """The family's own processor class built offline: in-process BPE + the family's image processor (+ the video
    processor it insists on). Qwen2-VL / Qwen2.5-VL use 14-px patches merged 2x2 (28 px per image token), Qwen3-VL
    16-px patches (32 px) with mean/std 0.5. Default pixel bounds give 4 to 16 tokens per image."""
    lo, hi = default_pixels(family)
    min_pixels = lo if min_pixels is None else min_pixels
    max_pixels = hi if max_pixels is None else max_pixels
    if family == "qwen3_vl":
        tokenizer = _tiny_tokenizer(vocab_size, QWEN3_CHAT_TEMPLATE)
        size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
        image_processor = Qwen2VLImageProcessor(
            size=size,
            patch_size=16,
            merge_size=2,
            temporal_patch_size=2,
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
        )
        return Qwen3VLProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=Qwen3VLVideoProcessor(),
            chat_template=QWEN3_CHAT_TEMPLATE,
        )
    tokenizer = _tiny_tokenizer(vocab_size, CHAT_TEMPLATE)
    image_processor = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    cls = Qwen2_5_VLProcessor if family == "qwen2_5_vl" else Qwen2VLProcessor
    return cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_model(
    processor: Qwen2VLProcessor | Qwen2_5_VLProcessor | Qwen3VLProcessor,
    seed: int = 0,
    hidden_size: int = 128,
    num_layers: int = 2,
    vision_hidden_size: int = 64,
    vision_depth: int = 2,
    family: str = "qwen2_5_vl",
) -> PreTrainedModel:
    """A random-init model of `family` whose token ids agree with `processor`'s tokenizer."""
    _check_family(family)
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    num_heads = 4
    head_dim = hidden_size // num_heads
    half = head_dim // 2  # multimodal RoPE splits half the head dim into (temporal, height, width) sections
    mrope_section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    text = dict(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": mrope_section},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    token_ids = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    config: PretrainedConfig
    cls: type[Qwen2VLForConditionalGeneration | Qwen2_5_VLForConditionalGeneration | Qwen3VLForConditionalGeneration]
    if family == "qwen2_5_vl":
        config = Qwen2_5_VLConfig(
            text_config=text,
            vision_config=dict(
                depth=vision_depth,
                hidden_size=vision_hidden_size,
                intermediate_size=vision_hidden_size * 2,
                num_heads=4,
                out_hidden_size=hidden_size,
                window_size=112,
                fullatt_block_indexes=[vision_depth - 1],
            ),
            **token_ids,
        )
        cls = Qwen2_5_VLForConditionalGeneration
    elif family == "qwen2_vl":
        config = Qwen2VLConfig(
            text_config=text,
            vision_config=dict(
                depth=vision_depth, embed_dim=vision_hidden_size, hidden_size=hidden_size, mlp_ratio=2, num_heads=4
            ),
            **token_ids,
        )
        cls = Qwen2VLForConditionalGeneration
    else:  # qwen3_vl: interleaved mRoPE, explicit head_dim, deepstack features from the first vision block
        text.update(
            head_dim=head_dim,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 5_000_000.0,
                "mrope_section": mrope_section,
                "mrope_interleaved": True,
            },
        )
        config = Qwen3VLConfig(
            text_config=text,
            vision_config=dict(
                depth=vision_depth,
                hidden_size=vision_hidden_size,
                intermediate_size=vision_hidden_size * 2,
                num_heads=4,
                out_hidden_size=hidden_size,
                patch_size=16,
                num_position_embeddings=256,
                deepstack_visual_indexes=[0],
            ),
            **token_ids,
        )
        cls = Qwen3VLForConditionalGeneration
    model = _seeded_model(cls, config, seed)
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = ids["<|endoftext|>"]
    return model


def _seeded_model(cls: Callable[[Any], PreTrainedModel], config: PretrainedConfig, seed: int) -> PreTrainedModel:
    """`cls(config)` with weights drawn from `seed`, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(config)


def save_tiny_checkpoint(out_dir: str | Path, seed: int = 0, family: str = "qwen2_5_vl", **model_kwargs: int) -> Path:
    """Write a tiny model + processor folder that `Policy(path)` and plain `transformers` load back offline."""
    out = Path(out_dir)
    processor = build_tiny_processor(family=family)
    model = build_tiny_model(processor, seed=seed, family=family, **model_kwargs)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    log.info("tiny %s (%d parameters) written to %s", family, sum(p.numel() for p in model.parameters()), out)
    return out
