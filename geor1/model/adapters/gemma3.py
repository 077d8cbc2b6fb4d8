"""Gemma3: a SigLIP tower on one fixed-size square per image, average-pooled to `mm_tokens_per_image` soft tokens,
Gemma3 text model (sliding-window + global layers, bidirectional attention inside each image).

Processor outputs (images passed per prompt): input_ids / attention_mask / token_type_ids run along the sequence
(token_type_ids is 1 on image soft tokens: the model's bidirectional image mask; 0 over completions); pixel_values is
[n_images, 3, H, W], one entry per image in prompt order. Images per row = runs of token_type_ids == 1, so tokens a
completion happens to sample never count as images.

Shared prefix (`TextRoPEPrefix`): plain 1-D RoPE over mask-derived positions; the bidirectional image mask lives
inside the prompt, so a continuation over the prefilled cache is exact (tests/test_families.py).

Pixel budget: every image is resized to the processor's `size` (the vision tower's fixed input, e.g. 896 x 896), so
there is nothing to map: a budget that this one size meets is accepted as it is, any other is refused. (Pan-and-scan
crops, off by default in the processor, would add up to `pan_and_scan_max_num_crops` more views of that size.)
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from transformers import BatchFeature

from geor1 import Geor1Error
from geor1.model.adapters._parts import InnerModelParts, TextRoPEPrefix, image_setting, no_setting, side, token_runs
from geor1.model.adapters.base import ArchAdapter, HFModel, register_adapter


@register_adapter
class Gemma3Adapter(TextRoPEPrefix, InnerModelParts, ArchAdapter):
    family = "Gemma3"
    model_types = ("gemma3",)
    nested_images = True  # the processor fails on a flat image list with 2+ prompts
    key_layouts = {
        "input_ids": "seq",
        "attention_mask": "seq",
        "token_type_ids": "seq",
        "pixel_values": "image",  # [n_images, 3, H, W]
    }
    seq_fill = {"attention_mask": 1, "token_type_ids": 0}
    vision_modules = ("vision_tower", "multi_modal_projector")
    vision_layers = "vision_tower.encoder.layers"
    text_model = "language_model"  # model.lm_head: Gemma3ForConditionalGeneration applies no final logit soft-capping

    def images_per_row(self, inputs: BatchFeature, model: HFModel) -> Tensor:
        per_row, _ = token_runs(inputs["token_type_ids"], 1)  # [B]: one run of soft tokens per image
        return per_row

    def set_pixel_bounds(self, processor: Any, model: HFModel, min_pixels: int | None, max_pixels: int | None) -> str:
        size = processor.image_processor.size
        h, w = side(size, "height"), side(size, "width")
        if h is None or w is None:
            raise Geor1Error(f"{self.name()}: the image processor's size {size} has no height/width")
        views = 1 + (
            int(image_setting(processor, "pan_and_scan_max_num_crops") or 0)
            if image_setting(processor, "do_pan_and_scan")
            else 0
        )
        least, most = h * w, views * h * w
        knob = "size (the vision tower's input)" + (" / pan_and_scan_max_num_crops" if views > 1 else "")
        if max_pixels is not None and most > max_pixels:
            raise no_setting(
                self.name(),
                knob,
                f"max_pixels={max_pixels} is below the {most} px an image gets ({views} view(s) of {h}x{w})",
            )
        if min_pixels is not None and least < min_pixels:
            raise no_setting(
                self.name(), knob, f"min_pixels={min_pixels} is above the {least} px an image gets (one {h}x{w} view)"
            )
        return f"every image is {h}x{w} ({least} px{f', up to {views} views' if views > 1 else ''}); unchanged"
