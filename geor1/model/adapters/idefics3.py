"""Idefics3 and SmolVLM: a SigLIP tower on fixed-size tiles, pixel-shuffle connector, Llama-style text model.

Processor outputs (images passed per prompt): input_ids / attention_mask run along the sequence; pixel_values is
[B, max_tiles, 3, H, W] and pixel_attention_mask [B, max_tiles, H, W], one row per prompt holding all tiles of all
its images (each large image gives rows x cols tiles plus a global view), padded with all-zero tiles that the model
drops. Every pixel key is therefore a "row" key: selecting prompts keeps each row's tiles with it, and the extra
zero tiles of a smaller prompt change nothing; a selection of text-only rows drops the pixel keys (all padding).

Shared prefix (`TextRoPEPrefix`): plain 1-D RoPE over mask-derived positions; exact (tests/test_families.py).
"""

from __future__ import annotations

from torch import Tensor
from transformers import BatchFeature

from geor1.model.adapters._parts import InnerModelParts, TextRoPEPrefix
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


@register_adapter
class Idefics3Adapter(_IdeficsLike):
    family = "Idefics3"
    model_types = ("idefics3",)


@register_adapter
class SmolVLMAdapter(_IdeficsLike):
    family = "SmolVLM"
    model_types = ("smolvlm",)
