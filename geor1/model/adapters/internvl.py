"""InternVL: an InternViT tower on 1..max_patches crops of each image (+ a thumbnail when cropped), pixel-shuffle
downsampling, MLP projector, Qwen2 text model.

Processor outputs: input_ids / attention_mask run along the sequence; pixel_values is [sum_i tiles_i, 3, H, W], each
image's tiles in prompt order (the processor drops its `num_patches`). Each image is `<img>` + tiles *
tokens_per_tile `<IMG_CONTEXT>` + `</img>`: images per row = runs of the image token, tiles per image = run length /
tokens_per_tile, with tokens_per_tile = (image_size / patch_size)^2 * downsample_ratio^2 from the model config.

Shared prefix (`TextRoPEPrefix`): plain 1-D RoPE over mask-derived positions; exact (tests/test_families.py).
"""

from __future__ import annotations

from torch import Tensor
from transformers import BatchFeature

from geor1 import Geor1Error
from geor1.model.adapters._parts import InnerModelParts, TextRoPEPrefix, token_runs
from geor1.model.adapters.base import ArchAdapter, HFModel, register_adapter


def _side(v: int | list[int] | tuple[int, ...]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


@register_adapter
class InternVLAdapter(TextRoPEPrefix, InnerModelParts, ArchAdapter):
    family = "InternVL"
    model_types = ("internvl",)
    nested_images = True
    key_layouts = {
        "input_ids": "seq",
        "attention_mask": "seq",
        "pixel_values": "patch",  # [sum_i tiles_i, 3, H, W]
    }
    seq_fill = {"attention_mask": 1}
    vision_modules = ("vision_tower", "multi_modal_projector")
    vision_layers = "vision_tower.encoder.layer"
    text_model = "language_model"

    def images_per_row(self, inputs: BatchFeature, model: HFModel) -> Tensor:
        per_row, _ = token_runs(inputs["input_ids"], model.config.image_token_id)
        return per_row  # [B]

    def patches_per_image(self, inputs: BatchFeature, model: HFModel) -> Tensor:
        cfg = model.config
        _, lengths = token_runs(inputs["input_ids"], cfg.image_token_id)  # [n_images] image tokens per image
        h, w = _side(cfg.vision_config.image_size)
        ph, pw = _side(cfg.vision_config.patch_size)
        per_tile = round((h // ph) * (w // pw) * cfg.downsample_ratio**2)
        if bool((lengths % per_tile).any()):
            raise Geor1Error(
                f"{self.name()}: image token runs {lengths.tolist()} are not multiples of the "
                f"{per_tile} tokens per tile the vision config gives"
            )
        return lengths // per_tile
