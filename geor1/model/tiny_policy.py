"""`TinyPolicy`: a `Policy` around a tiny random-init Qwen2.5-VL built in-process (tests, demo, debug configs)."""

from __future__ import annotations

from torch import nn

from geor1.model.policy import LoraSpec, Policy
from geor1.model.tiny import build_tiny_model, build_tiny_processor


class TinyPolicy(Policy):
    """A tiny Qwen2.5-VL policy built offline in a fraction of a second; `save_pretrained` writes a folder that
    `Policy(path)` and plain `transformers` load back.

    Args:
        seed: weights initialisation seed (the tokenizer is the same for every seed).
        hidden_size: text hidden size (4 heads, 2 KV heads).
        num_layers: text decoder layers.
        vision_hidden_size: vision tower width.
        vision_depth: vision tower blocks.
        lora: LoRA settings; None means full fine-tuning.
        freeze_vision: keep the vision tower fixed.
        min_pixels: smallest image area after resizing.
        max_pixels: largest image area after resizing (28*28*16 -> at most 16 tokens per image).
        gradient_checkpointing: recompute activations in backward.
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
        min_pixels: int = 28 * 28 * 4,
        max_pixels: int = 28 * 28 * 16,
        gradient_checkpointing: bool = False,
    ) -> None:
        nn.Module.__init__(self)
        processor = build_tiny_processor(min_pixels=min_pixels, max_pixels=max_pixels)
        model = build_tiny_model(processor, seed=seed, hidden_size=hidden_size, num_layers=num_layers,
                                 vision_hidden_size=vision_hidden_size, vision_depth=vision_depth)
        self._setup(model, processor, lora, freeze_vision, None, None, gradient_checkpointing)
        self.source = f"tiny(seed={seed}, hidden={hidden_size}, layers={num_layers})"
