"""Selecting, repeating and extending prompt batches over *every* processor output, driven by the family adapter.

A processor batch of B prompts holds tensors indexed in different ways along dim 0 (the adapter's `key_layouts`):
per row ("row", "seq"), per image ("image") or per image patch chunk ("patch"). Selecting prompts must carry each
prompt's images along, whatever keys hold them; a key with no layout is refused (Geor1Error), never dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from transformers import BatchFeature

from geor1 import Geor1Error
from geor1.model.adapters import ArchAdapter


def _index(value: Any, idx: list[int], key: str) -> Any:
    if isinstance(value, Tensor):
        return value[torch.as_tensor(idx, dtype=torch.long, device=value.device)]
    if isinstance(value, (list, tuple)):
        return [value[i] for i in idx]
    raise Geor1Error(f"processor output '{key}' is a {type(value).__name__}, which geor1 cannot index by prompt")


def _starts(counts: Tensor) -> list[int]:
    return (torch.cumsum(counts, 0) - counts).tolist()


def select_rows(inputs: BatchFeature, rows: Sequence[int], adapter: ArchAdapter, model: nn.Module) -> BatchFeature:
    """The prompts `rows` (any order, repeats allowed) of a batch, each with its own images, over every key.

    inputs: B prompts as the processor returned them (possibly extended by `append_completions`);
    model: the transformers model (for token ids the adapter reads) -> a batch of len(rows) prompts. When none of
    the selected prompts holds an image, the image keys (`adapter.image_keys`) are left out, as the processor does
    for text-only prompts.
    """
    rows = [int(r) for r in rows]
    layouts = {k: adapter.layout(k) for k, v in inputs.items() if v is not None}
    b = inputs["input_ids"].shape[0]
    if any(not 0 <= r < b for r in rows):
        raise IndexError(f"rows {rows} out of range for a batch of {b} prompts")
    drop: set[str] = set()
    image_keys = adapter.image_keys(list(layouts))
    if image_keys:
        has_images = adapter.rows_with_images(inputs, model).bool().cpu()  # [B]
        if not any(bool(has_images[r]) for r in rows):
            # text-only prompts out of a batch with images: what the processor gives for them alone (no image
            # keys); empty image tensors would reach the vision tower and fail (or, as padding tiles, be dropped)
            drop = set(image_keys)
    image_idx: list[int] = []  # filled below when an image / patch key is kept
    patch_idx: list[int] = []
    if any(lay in ("image", "patch") for k, lay in layouts.items() if k not in drop):
        per_row = adapter.images_per_row(inputs, model).long().cpu()  # [B]
        first = _starts(per_row)
        image_idx = [first[r] + j for r in rows for j in range(int(per_row[r]))]
        n_images = int(per_row.sum())
        if "patch" in layouts.values():
            patches = adapter.patches_per_image(inputs, model).long().cpu()  # [n_images]
            if patches.shape[0] != n_images:
                raise Geor1Error(
                    f"{adapter.name()}: {n_images} images counted in the prompts' tokens but "
                    f"{patches.shape[0]} patch counts; cannot split the images between prompts"
                )
            start = _starts(patches)
            patch_idx = [start[i] + j for i in image_idx for j in range(int(patches[i]))]
    out: dict[str, Any] = {}
    for key, value in inputs.items():
        if value is None or key in drop:
            continue
        lay = layouts[key]
        n = value.shape[0] if isinstance(value, Tensor) else len(value)
        if lay in ("row", "seq"):
            expect, idx = b, rows
        elif lay == "image":
            expect, idx = n_images, image_idx
        else:
            expect, idx = int(patches.sum()), patch_idx
        if n != expect:
            raise Geor1Error(
                f"{adapter.name()}: processor output '{key}' ({lay} layout) has {n} entries along dim 0, "
                f"expected {expect}"
            )
        out[key] = _index(value, idx, key)
    return BatchFeature(out)


def repeat_rows(inputs: BatchFeature, group_size: int, adapter: ArchAdapter, model: nn.Module) -> BatchFeature:
    """Each of B prompts `group_size` (G) times (rows b*G .. b*G+G-1 = prompt b), images included."""
    if group_size == 1:
        return inputs
    b = inputs["input_ids"].shape[0]
    return select_rows(inputs, [r for r in range(b) for _ in range(group_size)], adapter, model)


def slice_rows(inputs: BatchFeature, prompts: slice, adapter: ArchAdapter, model: nn.Module) -> BatchFeature:
    """Prompts `prompts.start .. prompts.stop - 1` of a batch, images included."""
    return select_rows(inputs, list(range(inputs["input_ids"].shape[0]))[prompts], adapter, model)


def append_completions(
    inputs: BatchFeature, completion_ids: Tensor, completion_mask: Tensor, adapter: ArchAdapter
) -> BatchFeature:
    """Prompt rows followed by their completions: every "seq" key is extended over the T completion tokens.

    inputs: N prompt rows (already repeated to match); completion_ids, completion_mask: [N, T] ->
    input_ids [N, P+T]; other "seq" keys get `adapter.seq_fill[key]` where the completion mask is True, else 0
    (attention_mask: the completion mask itself).
    """
    n = completion_ids.shape[0]
    out = dict(inputs)
    for key, value in inputs.items():
        if value is None or adapter.layout(key) != "seq":
            continue
        if value.shape[0] != n:
            raise ValueError(f"'{key}' has {value.shape[0]} rows but the completions {n}")
        if key == "input_ids":
            ext = completion_ids.to(value.dtype)
        else:
            ext = (completion_mask.to(value.dtype) * adapter.fill(key)).to(value.dtype)
        out[key] = torch.cat([value, ext.to(value.device)], 1)
    return BatchFeature(out)
