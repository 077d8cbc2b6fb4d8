"""Idefics3 and SmolVLM: a SigLIP tower on fixed-size tiles, pixel-shuffle connector, Llama-style text model.

Processor outputs (images passed per prompt): input_ids / attention_mask run along the sequence; pixel_values is
[B, max_tiles, 3, H, W] and pixel_attention_mask [B, max_tiles, H, W], one row per prompt holding all tiles of all
its images (each large image gives rows x cols tiles plus a global view), padded with all-zero tiles that the model
drops. Every pixel key is therefore a "row" key: selecting prompts keeps each row's tiles with it, and the extra
zero tiles of a smaller prompt change nothing; a selection of text-only rows drops the pixel keys (all padding).

Shared prefix (`TextRoPEPrefix`): plain 1-D RoPE over mask-derived positions; exact (tests/test_families.py).

Pixel budget: with image splitting, an image is resized to a longest edge of `size.longest_edge`, rounded up to
whole tiles of `max_image_size.longest_edge` (T, the vision tower's input side) and cut into them, plus a T x T
global view when there are several tiles. A longest edge of k*T gives at most k^2 tiles (a square image) and at
least k (the most elongated), so `size.longest_edge` = k*T is the knob: min_pixels / max_pixels pick k.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from transformers import BatchFeature

from geor1 import Geor1Error
from geor1.model.adapters._parts import InnerModelParts, TextRoPEPrefix, image_setting, no_setting, side
from geor1.model.adapters.base import ArchAdapter, HFModel, register_adapter


class _IdeficsLike(TextRoPEPrefix, InnerModelParts, ArchAdapter):
    nested_images = True  # SmolVLM's processor fails on a flat image list with 2+ prompts; Idefics3 takes both
    key_layouts = {
        "input_ids": "seq",
        "attention_mask": "seq",
        "pixel_values": "row",  # [B, max_tiles, 3, H, W], zero tiles pad
        "pixel_attention_mask": "row",  # [B, max_tiles, H, W]
    }
    seq_fill = {"attention_mask": 1}
    image_row_keys = ("pixel_values", "pixel_attention_mask")
    vision_modules = ("vision_model", "connector")
    vision_layers = "vision_model.encoder.layers"
    text_model = "text_model"

    def rows_with_images(self, inputs: BatchFeature, model: HFModel) -> Tensor:
        """[B] bool: rows holding image tokens (a text-only row's tiles are all padding, which the model drops)."""
        return (inputs["input_ids"] == model.config.image_token_id).any(-1)

    def set_pixel_bounds(self, processor: Any, model: HFModel, min_pixels: int | None, max_pixels: int | None) -> str:
        ip = processor.image_processor
        tile = side(ip.max_image_size, "longest_edge")
        if tile is None:
            raise Geor1Error(
                f"{self.name()}: the image processor's max_image_size {ip.max_image_size} has no longest_edge"
            )
        area = tile * tile
        if not image_setting(processor, "do_image_splitting"):  # every image is one T x T view
            if (max_pixels is not None and max_pixels < area) or (min_pixels is not None and min_pixels > area):
                raise no_setting(
                    self.name(),
                    "max_image_size / do_image_splitting",
                    f"without image splitting every image is one {tile}x{tile} view ({area} px)",
                )
            return f"one {tile}x{tile} view per image (do_image_splitting is off)"
        k_cap = max(1, _MAX_IMAGE_SIZE // tile)

        def most(k: int) -> int:  # a square image: k^2 tiles, plus the global view when k > 1
            return (k * k + (k > 1)) * area

        def least(k: int) -> int:  # the most elongated image: k tiles in one row (+ the global view)
            return (k + (k > 1)) * area

        current = min(k_cap, max(1, -(-(side(ip.size, "longest_edge") or tile) // tile)))
        fits = [k for k in range(1, k_cap + 1) if max_pixels is None or most(k) <= max_pixels]
        if not fits:
            raise no_setting(
                self.name(),
                "size.longest_edge",
                f"max_pixels={max_pixels} is below one {tile}x{tile} tile ({area} px), the least an image gets",
            )
        fits = [k for k in fits if min_pixels is None or least(k) >= min_pixels]
        if not fits:
            raise no_setting(
                self.name(),
                "size.longest_edge",
                f"min_pixels={min_pixels} cannot be met within max_pixels={max_pixels}: a longest edge of k*{tile} px "
                f"gives an image between (k+1) and (k*k+1) {tile}x{tile} tiles (k > 1)",
            )
        # a maximum given: the most detail within it; else the processor's own setting when it meets the minimum
        k = max(fits) if max_pixels is not None else (current if current in fits else min(fits))
        ip.size = {"longest_edge": k * tile}
        return (
            f"size.longest_edge={k * tile}: {least(k)} to {most(k)} px per image ({k}x{k} {tile}-px tiles at most"
            f"{', plus a global view' if k > 1 else ''})"
        )


_MAX_IMAGE_SIZE = 4096  # transformers' Idefics3 / SmolVLM image processors cap the longest edge here


@register_adapter
class Idefics3Adapter(_IdeficsLike):
    family = "Idefics3"
    model_types = ("idefics3",)


@register_adapter
class SmolVLMAdapter(_IdeficsLike):
    family = "SmolVLM"
    model_types = ("smolvlm",)
