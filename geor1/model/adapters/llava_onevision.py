"""LLaVA-OneVision: a SigLIP tower on a base view plus an any-resolution grid of tiles (single-image prompts) or the
base view only (prompts with several images), an MLP projector, a learned newline token, Qwen2 text model.

Processor outputs (images passed per prompt, so that `batch_num_images` is per prompt and the multi-image rule sees
each prompt's own count): input_ids / attention_mask run along the sequence; pixel_values is
[n_images, max_tiles, 3, H, W] (padded tiles are cut by the model from image_sizes), image_sizes [n_images, 2]
(the original (H, W), which sets the grid and the unpadding), batch_num_images [B] (images per prompt; the
processor omits text-only prompts, which `finish_inputs` puts back as 0 so that the key is per row).

Shared prefix (`TextRoPEPrefix`): plain 1-D RoPE over mask-derived positions; exact (tests/test_families.py).
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import BatchFeature

from geor1 import Geor1Error
from geor1.model.adapters._parts import InnerModelParts, TextRoPEPrefix
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
