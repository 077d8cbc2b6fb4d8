"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: multimodal RoPE families whose prompts may share one prefill.

Processor outputs: input_ids / attention_mask / mm_token_type_ids run along the sequence; pixel_values concatenates
each image's patches ([sum_i t*h*w, D]); image_grid_thw is [n_images, 3]. Each image opens with one
`<|vision_start|>` token followed by its `<|image_pad|>` tokens, which is how images are counted per row.

Shared prefix: the model keeps each row's RoPE offset (`model.model.rope_deltas`, [B, 1]) after a prefill; a
continuation's positions are its text positions (from the attention mask) plus that offset, on all three axes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformers import BatchFeature

from geor1 import Geor1Error
from geor1.model.adapters._parts import no_setting, side, text_positions
from geor1.model.adapters.base import ArchAdapter, HFModel, register_adapter


class _QwenVL(ArchAdapter):
    shared_prefix = True
    key_layouts = {
        "input_ids": "seq",
        "attention_mask": "seq",
        "mm_token_type_ids": "seq",
        "pixel_values": "patch",
        "image_grid_thw": "image",
    }
    seq_fill = {"attention_mask": 1, "mm_token_type_ids": 0}

    def images_per_row(self, inputs: BatchFeature, model: HFModel) -> Tensor:
        cfg = model.config
        ids = inputs["input_ids"]  # [B, L]
        opens = (ids[:, :-1] == cfg.vision_start_token_id) & (ids[:, 1:] == cfg.image_token_id)
        return opens.sum(-1)  # [B]

    def patches_per_image(self, inputs: BatchFeature, model: HFModel) -> Tensor:
        return inputs["image_grid_thw"].prod(-1)  # [n_images]

    def set_pixel_bounds(self, processor: Any, model: HFModel, min_pixels: int | None, max_pixels: int | None) -> str:
        """The processor's own bounds: `size.shortest_edge` / `size.longest_edge` are image areas in pixels (its
        `smart_resize` keeps each image's area between them, in whole image tokens of (patch * merge)^2 px)."""
        ip = processor.image_processor
        unit = int(ip.patch_size) * int(ip.merge_size)  # px per side of one image token
        lo = min_pixels if min_pixels is not None else side(ip.size, "shortest_edge")
        hi = max_pixels if max_pixels is not None else side(ip.size, "longest_edge")
        if lo is None or hi is None:
            raise Geor1Error(f"{self.name()}: the image processor's size {ip.size} has no shortest_edge/longest_edge")
        if hi < unit * unit:
            raise no_setting(
                self.name(),
                "size.longest_edge",
                f"max_pixels={hi} is below one image token ({unit}x{unit} = {unit * unit} px), the least an image gets",
            )
        if lo > hi and min_pixels is None:  # the processor's own minimum is above the budget: one token instead
            lo = unit * unit  # (not max_pixels: scaling a small image up rounds up, which could pass the maximum)
        elif lo > hi:  # a minimum above the processor's own maximum raises it
            hi = lo
        ip.size = {"shortest_edge": lo, "longest_edge": hi}
        return f"size.shortest_edge={lo}, size.longest_edge={hi} ({unit}x{unit} px per image token)"

    def vision_tower(self, model: HFModel) -> nn.Module:
        return model.model.visual

    def vision_blocks(self, model: HFModel) -> list[nn.Module]:
        return list(model.model.visual.blocks)

    def decoder_layers(self, model: HFModel) -> list[nn.Module]:
        return list(model.model.language_model.layers)

    def lm_head(self, model: HFModel) -> nn.Module:
        return model.lm_head

    def position_ids(self, model: HFModel, batch: dict[str, Tensor]) -> Tensor | None:
        """Text-only batches: positions from the attention mask on all three axes (so left padding does not shift
        them, as in `generate`); with images the model's own `get_rope_index` already does this."""
        if batch.get("image_grid_thw") is not None or batch.get("video_grid_thw") is not None:
            return None
        pos = text_positions(batch["attention_mask"])  # [N, L]
        return pos.unsqueeze(0).expand(3, -1, -1)  # [3, N, L]

    def begin_prefill(self, model: HFModel) -> None:
        model.model.rope_deltas = None

    def prefix_state(self, model: HFModel, inputs: BatchFeature, group_size: int) -> Tensor:
        deltas = model.model.rope_deltas  # [B, 1], None for text-only prompts (offset 0)
        if deltas is None:
            deltas = torch.zeros(inputs["input_ids"].shape[0], 1, dtype=torch.long, device=inputs["input_ids"].device)
        deltas = deltas.repeat_interleave(group_size, 0)  # [B*G, 1]
        model.model.rope_deltas = deltas  # `generate` continues from it
        return deltas

    def tail_position_ids(self, model: HFModel, state: Any, attention_mask: Tensor, tail: int) -> Tensor:
        pos = text_positions(attention_mask)[:, -tail:]  # [N, tail] text positions
        return (pos + state).unsqueeze(0).expand(3, -1, -1)  # [3, N, tail]


@register_adapter
class Qwen2VLAdapter(_QwenVL):
    family = "Qwen2-VL"
    model_types = ("qwen2_vl",)


@register_adapter
class Qwen2_5_VLAdapter(_QwenVL):
    family = "Qwen2.5-VL"
    model_types = ("qwen2_5_vl",)


@register_adapter
class Qwen3VLAdapter(_QwenVL):
    family = "Qwen3-VL"
    model_types = ("qwen3_vl",)
