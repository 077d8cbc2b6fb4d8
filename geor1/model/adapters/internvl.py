"""InternVL: an InternViT tower on 1..max_patches crops of each image (+ a thumbnail when cropped), pixel-shuffle
downsampling, MLP projector, Qwen2 text model.

Processor outputs: input_ids / attention_mask run along the sequence; pixel_values is [sum_i tiles_i, 3, H, W], each
image's tiles in prompt order (the processor drops its `num_patches`). Each image is `<img>` + tiles *
tokens_per_tile `<IMG_CONTEXT>` + `</img>`: images per row = runs of the image token, tiles per image = run length /
tokens_per_tile, with tokens_per_tile = (image_size / patch_size)^2 * downsample_ratio^2 from the model config.

Shared prefix (`TextRoPEPrefix`): plain 1-D RoPE over mask-derived positions; exact (tests/test_families.py).

Pixel budget: an image is cut into n tiles of `size` (T x T, the vision tower's input), min_patches <= n <=
max_patches, the grid closest to its aspect ratio, plus a T x T thumbnail when n > 1: (n + 1) * T^2 pixels, or T^2
for one tile. max_pixels sets max_patches and min_pixels sets min_patches.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from transformers import BatchFeature

from geor1 import Geor1Error
from geor1.model.adapters._parts import InnerModelParts, TextRoPEPrefix, image_setting, no_setting, side, token_runs
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

    def set_pixel_bounds(self, processor: Any, model: HFModel, min_pixels: int | None, max_pixels: int | None) -> str:
        ip = processor.image_processor
        h, w = side(ip.size, "height"), side(ip.size, "width")
        if h is None or w is None:
            raise Geor1Error(f"{self.name()}: the image processor's size {ip.size} has no height/width")
        area = h * w
        if not image_setting(processor, "crop_to_patches"):  # one T x T view per image
            if (max_pixels is not None and max_pixels < area) or (min_pixels is not None and min_pixels > area):
                raise no_setting(self.name(), "size / crop_to_patches", f"every image is one {h}x{w} view ({area} px)")
            return f"one {h}x{w} view per image (crop_to_patches is off)"

        def pixels(n: int) -> int:  # n tiles, plus the thumbnail when n > 1
            return (n + (n > 1)) * area

        lo_n, hi_n = int(ip.min_patches), int(ip.max_patches)
        if max_pixels is not None:
            if max_pixels < area:
                raise no_setting(
                    self.name(),
                    "max_patches",
                    f"max_pixels={max_pixels} is below one {h}x{w} tile ({area} px), the least an image gets",
                )
            hi_n = 1 if max_pixels < pixels(2) else max_pixels // area - 1
        if min_pixels is not None:
            lo_n = 1 if min_pixels <= area else max(2, -(-min_pixels // area) - 1)
        if lo_n > hi_n and min_pixels is None:
            lo_n = hi_n  # the processor's own minimum would break the maximum given: lowered to it
        elif lo_n > hi_n and max_pixels is None:
            hi_n = lo_n  # the minimum given is above the processor's own maximum: raised to it
        if lo_n > hi_n:
            raise no_setting(
                self.name(),
                "min_patches / max_patches",
                f"min_pixels={min_pixels} needs at least {lo_n} {h}x{w} tiles per image, "
                + (f"max_pixels={max_pixels}" if max_pixels is not None else "the processor's max_patches")
                + f" allows at most {hi_n}",
            )
        ip.min_patches, ip.max_patches = lo_n, hi_n
        return f"min_patches={lo_n}, max_patches={hi_n}: {pixels(lo_n)} to {pixels(hi_n)} px per image"
