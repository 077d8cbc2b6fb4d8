"""LLaVA-OneVision: a SigLIP tower on a base view plus an any-resolution grid of tiles (single-image prompts) or the
base view only (prompts with several images), an MLP projector, a learned newline token, Qwen2 text model.

Processor outputs (images passed per prompt, so that `batch_num_images` is per prompt and the multi-image rule sees
each prompt's own count): input_ids / attention_mask run along the sequence; pixel_values is
[n_images, max_tiles, 3, H, W] (padded tiles are cut by the model from image_sizes), image_sizes [n_images, 2]
(the original (H, W), which sets the grid and the unpadding), batch_num_images [B] (images per prompt; the
processor omits text-only prompts, which `finish_inputs` puts back as 0 so that the key is per row).

Shared prefix (`TextRoPEPrefix`): plain 1-D RoPE over mask-derived positions; exact (tests/test_families.py).

Pixel budget: a single-image prompt's image gets the base view (`size`, e.g. 384 x 384) plus one of the
`image_grid_pinpoints` resolutions (the best fit to its aspect ratio), cut into tiles; a prompt with several images
gets the base view alone. max_pixels keeps the pinpoints whose grid plus the base view fits it, in the processor and
in the model config alike (both choose the grid, and must agree); min_pixels above the base view cannot be met.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers import BatchFeature

from geor1 import Geor1Error
from geor1.model.adapters._parts import InnerModelParts, TextRoPEPrefix, no_setting, side
from geor1.model.adapters.base import ArchAdapter, HFModel, register_adapter


@register_adapter
class LlavaOnevisionAdapter(TextRoPEPrefix, InnerModelParts, ArchAdapter):
    family = "LLaVA-OneVision"
    model_types = ("llava_onevision",)
    nested_images = True  # a flat list makes batch_num_images per image: multi-image prompts would be tiled
    key_layouts = {
        "input_ids": "seq",
        "attention_mask": "seq",
        "pixel_values": "image",  # [n_images, max_tiles, 3, H, W]
        "image_sizes": "image",  # [n_images, 2]
        "batch_num_images": "row",  # [B]
    }
    seq_fill = {"attention_mask": 1}
    image_row_keys = ("batch_num_images",)
    vision_modules = ("vision_tower", "multi_modal_projector")
    vision_params = ("image_newline",)
    vision_layers = "vision_tower.encoder.layers"
    text_model = "language_model"

    def images_per_row(self, inputs: BatchFeature, model: HFModel) -> Tensor:
        per_row = inputs["batch_num_images"]  # [B]
        n_images = inputs["image_sizes"].shape[0]
        if per_row.shape[0] != inputs["input_ids"].shape[0] or int(per_row.sum()) != n_images:
            raise Geor1Error(
                f"{self.name()}: batch_num_images {per_row.tolist()} does not split {n_images} images "
                f"between {inputs['input_ids'].shape[0]} prompts (call the processor with images per "
                f"prompt)"
            )
        return per_row

    def finish_inputs(self, inputs: BatchFeature, model: HFModel) -> BatchFeature:
        """The processor leaves text-only prompts out of `batch_num_images`; make it one entry per prompt row (0 for
        a text-only row, which the model's multi-image rule ignores), so that it is a plain "row" key."""
        per = inputs.get("batch_num_images")
        b = inputs["input_ids"].shape[0]
        if per is None or per.shape[0] == b:
            return inputs
        has_image = (inputs["input_ids"] == model.config.image_token_index).any(-1)  # [B]
        if int(has_image.sum()) != per.shape[0]:
            raise Geor1Error(
                f"{self.name()}: {int(has_image.sum())} of {b} prompts hold image tokens but "
                f"batch_num_images has {per.shape[0]} entries"
            )
        full = torch.zeros(b, dtype=per.dtype, device=per.device)
        full[has_image.to(per.device)] = per
        inputs["batch_num_images"] = full
        return inputs

    def set_pixel_bounds(self, processor: Any, model: HFModel, min_pixels: int | None, max_pixels: int | None) -> str:
        ip = processor.image_processor
        h, w = side(ip.size, "height"), side(ip.size, "width")
        if h is None or w is None:
            raise Geor1Error(f"{self.name()}: the image processor's size {ip.size} has no height/width")
        base = h * w
        pinpoints = [[int(a), int(b)] for a, b in ip.image_grid_pinpoints]
        if min_pixels is not None and min_pixels > base:
            raise no_setting(
                self.name(),
                "size",
                f"min_pixels={min_pixels} is above the {base} px of the {h}x{w} base view, all that an image of a "
                f"prompt with several images gets",
            )
        kept = [p for p in pinpoints if max_pixels is None or base + p[0] * p[1] <= max_pixels]
        if not kept:
            smallest = min(pinpoints, key=lambda p: p[0] * p[1])
            raise no_setting(
                self.name(),
                "image_grid_pinpoints",
                f"max_pixels={max_pixels} is below the {base + smallest[0] * smallest[1]} px of a single-image "
                f"prompt's image at the smallest grid ({smallest[0]}x{smallest[1]}) plus the {h}x{w} base view",
            )
        if kept != pinpoints:
            ip.image_grid_pinpoints = kept
            model.config.image_grid_pinpoints = kept
        most = base + max(p[0] * p[1] for p in kept)
        return (
            f"image_grid_pinpoints: {len(kept)} of {len(pinpoints)} kept (processor and model config), "
            f"{base} to {most} px per image"
        )
