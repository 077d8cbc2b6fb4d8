"""`TinyPolicy`: a `Policy` around a tiny random-init Qwen2-VL, Qwen2.5-VL or Qwen3-VL built in-process (tests,
demo, debug configs)."""

from __future__ import annotations

from torch import nn

from geor1.model.policy import LoraSpec, Policy
from geor1.model.tiny import build_tiny_model, build_tiny_processor, default_pixels


class TinyPolicy(Policy):
    """A tiny Qwen-VL policy built offline in a fraction of a second; `save_pretrained` writes a folder that
    `Policy(path)` and plain `transformers` load back.

    Args:
        seed: weights initialisation seed (the tokenizer is the same for every seed).
        hidden_size: text hidden size (4 heads, 2 KV heads).
        num_layers: text decoder layers.
        vision_hidden_size: vision tower width.
        vision_depth: vision tower blocks.
        lora: LoRA settings; None means full fine-tuning.
        freeze_vision: keep the vision tower fixed.
        min_pixels: smallest image area after resizing (None: 4 image tokens' worth).
        max_pixels: largest image area after resizing (None: 16 image tokens' worth, 28*28*16 for Qwen2.5-VL).
        gradient_checkpointing: recompute activations in backward.
        family: "qwen2_5_vl" (default), "qwen2_vl" or "qwen3_vl".
        logprob_tile: LM-head tile in `token_logprobs` (None: full logits).
    """

    def __init__(
        self,
        seed: int = 0,
        hidden_size: int = 128,
        num_layers: int = 2,
        vision_hidden_size: int = 64,
        vision_depth: int = 2,
        lora: LoraSpec | None = None,
        freeze_vision: bool = False,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        gradient_checkpointing: bool = False,
        family: str = "qwen2_5_vl",
        logprob_tile: int | None = 32,
    ) -> None:
        nn.Module.__init__(self)
        lo, hi = default_pixels(family)
        processor = build_tiny_processor(
            min_pixels=lo if min_pixels is None else min_pixels,
            max_pixels=hi if max_pixels is None else max_pixels,
            family=family,
        )
        model = build_tiny_model(
            processor,
            seed=seed,
            hidden_size=hidden_size,
            num_layers=num_layers,
            vision_hidden_size=vision_hidden_size,
            vision_depth=vision_depth,
            family=family,
        )
        self._setup(model, processor, lora, freeze_vision, None, None, gradient_checkpointing, logprob_tile)
        self.source = f"tiny(family={family}, seed={seed}, hidden={hidden_size}, layers={num_layers})"
