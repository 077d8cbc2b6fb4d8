"""Gemma3: a SigLIP tower on one fixed-size square per image, average-pooled to `mm_tokens_per_image` soft tokens,
Gemma3 text model (sliding-window + global layers, bidirectional attention inside each image).

Processor outputs (images passed per prompt): input_ids / attention_mask / token_type_ids run along the sequence
(token_type_ids is 1 on image soft tokens: the model's bidirectional image mask; 0 over completions); pixel_values is
[n_images, 3, H, W], one entry per image in prompt order. Images per row = runs of token_type_ids == 1, so tokens a
completion happens to sample never count as images.

Shared prefix (`TextRoPEPrefix`): plain 1-D RoPE over mask-derived positions; the bidirectional image mask lives
inside the prompt, so a continuation over the prefilled cache is exact (tests/test_families.py).
"""

from __future__ import annotations

from torch import Tensor
from transformers import BatchFeature

from geor1.model.adapters._parts import InnerModelParts, TextRoPEPrefix, token_runs
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
