"""Prompt batching over every processor output (geor1.model.batching), driven only by the family adapter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_image
from transformers import BatchFeature

from geor1 import Geor1Error
from geor1.data.sample import Prompt
from geor1.model.adapters import ArchAdapter
from geor1.model.batching import append_completions, repeat_rows, select_rows, slice_rows


def _prompts() -> list[Prompt]:
    rng = np.random.default_rng(1)
    return [
        Prompt("A <image> B <image>", [random_image(rng, 64, 64), random_image(rng, 80, 150)]),
        Prompt("text only", []),
        Prompt(
            "C <image> D <image> E <image>",
            [random_image(rng, 140, 90), random_image(rng, 56, 56), random_image(rng, 100, 100)],
        ),
    ]


def _unpadded(enc: BatchFeature, row: int, key: str) -> torch.Tensor:
    return enc[key][row][enc["attention_mask"][row].bool()]


def test_select_rows_equals_encoding_the_chosen_prompts(tiny_policy):
    """Any order, repeats: every key of the selection equals the processor's output for those prompts alone."""
    prompts = _prompts()
    enc = tiny_policy.encode(prompts)
    assert set(enc) == {"input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"}
    rows = [2, 0, 2, 1]
    sel = select_rows(enc, rows, tiny_policy.adapter, tiny_policy.base_model())
    alone = [tiny_policy.encode([prompts[r]]) for r in rows]
    for i, single in enumerate(alone):
        for key in ("input_ids", "mm_token_type_ids"):
            assert torch.equal(_unpadded(sel, i, key), single[key][0])
    with_images = [a for a in alone if "pixel_values" in a]
    assert torch.equal(sel["image_grid_thw"], torch.cat([a["image_grid_thw"] for a in with_images]))
    assert torch.equal(sel["pixel_values"], torch.cat([a["pixel_values"] for a in with_images]))


def test_repeat_and_slice_rows(tiny_policy):
    enc = tiny_policy.encode(_prompts())
    adapter, model = tiny_policy.adapter, tiny_policy.base_model()
    rep = repeat_rows(enc, 2, adapter, model)
    ref = select_rows(enc, [0, 0, 1, 1, 2, 2], adapter, model)
    assert rep.keys() == ref.keys() and all(torch.equal(rep[k], ref[k]) for k in rep)
    assert rep["image_grid_thw"].shape[0] == 10  # (2 + 0 + 3) images, twice
    assert repeat_rows(enc, 1, adapter, model) is enc
    part = slice_rows(enc, slice(1, 3), adapter, model)
    ref = select_rows(enc, [1, 2], adapter, model)
    assert all(torch.equal(part[k], ref[k]) for k in part)
    text_only = select_rows(enc, [1, 1], adapter, model)  # no image keys, as the processor gives text-only prompts
    assert set(text_only) == {"input_ids", "attention_mask", "mm_token_type_ids"}
    assert torch.equal(text_only["input_ids"], enc["input_ids"][[1, 1]])


def test_append_completions_extends_every_sequence_key(tiny_policy):
    enc = tiny_policy.encode(_prompts()[:2])
    ids = torch.tensor([[11, 12, 13], [14, 15, 16]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    out = append_completions(enc, ids, mask, tiny_policy.adapter)
    p = enc["input_ids"].shape[1]
    assert torch.equal(out["input_ids"][:, p:], ids)
    assert torch.equal(out["attention_mask"][:, p:], mask.long())
    assert torch.equal(out["mm_token_type_ids"][:, p:], torch.zeros_like(ids))
    assert torch.equal(out["pixel_values"], enc["pixel_values"])  # per-patch keys untouched


def test_unknown_key_and_count_mismatch_are_errors(tiny_policy):
    enc = tiny_policy.encode(_prompts())
    adapter, model = tiny_policy.adapter, tiny_policy.base_model()
    bad = BatchFeature({**enc, "image_sizes": torch.zeros(5, 2)})
    with pytest.raises(Geor1Error, match=r"'image_sizes'.*Qwen2\.5-VL"):
        select_rows(bad, [0], adapter, model)
    short = BatchFeature({**enc, "image_grid_thw": enc["image_grid_thw"][:-1]})
    with pytest.raises(Geor1Error, match="images"):
        select_rows(short, [0], adapter, model)


class _Rows(ArchAdapter):
    """A family whose pixels are one row per prompt ([B, I, C, H, W], Idefics3-like) and sizes one per image."""

    family = "TestRows"
    model_types = ("test_rows",)
    key_layouts = {
        "input_ids": "seq",
        "attention_mask": "seq",
        "token_type_ids": "seq",
        "pixel_values": "row",
        "image_sizes": "image",
    }
    seq_fill = {"attention_mask": 1, "token_type_ids": 0}

    def images_per_row(self, inputs, model):
        return (inputs["input_ids"] == 9).sum(-1)


def test_row_and_image_layouts_of_another_family():
    inputs = BatchFeature(
        {
            "input_ids": torch.tensor([[9, 1, 9], [0, 9, 2]]),
            "attention_mask": torch.tensor([[1, 1, 1], [0, 1, 1]]),
            "token_type_ids": torch.tensor([[1, 0, 1], [0, 1, 0]]),
            "pixel_values": torch.arange(2 * 2 * 3).view(2, 2, 3),
            "image_sizes": torch.tensor([[10, 10], [20, 20], [30, 30]]),
        }
    )
    out = select_rows(inputs, [1, 0, 1], _Rows(), None)
    assert out["pixel_values"].tolist() == inputs["pixel_values"][[1, 0, 1]].tolist()
    assert out["image_sizes"].tolist() == [[30, 30], [10, 10], [20, 20], [30, 30]]
    ext = append_completions(out, torch.tensor([[5, 6]] * 3), torch.tensor([[True, False]] * 3), _Rows())
    assert ext["token_type_ids"][:, 3:].tolist() == [[0, 0]] * 3
    assert ext["attention_mask"][:, 3:].tolist() == [[1, 0]] * 3


class _RowsWithImageRows(_Rows):
    family = "TestRowsImageRows"
    model_types = ("test_rows_image_rows",)
    image_row_keys = ("pixel_values",)


def test_selection_without_images_drops_every_image_key():
    """Rows holding no image: "image" keys and the adapter's image "row" keys are left out; a selection with one
    image keeps them all."""
    inputs = BatchFeature(
        {
            "input_ids": torch.tensor([[9, 1, 9], [0, 3, 2], [4, 5, 6]]),
            "attention_mask": torch.tensor([[1, 1, 1], [0, 1, 1], [1, 1, 1]]),
            "token_type_ids": torch.tensor([[1, 0, 1], [0, 0, 0], [0, 0, 0]]),
            "pixel_values": torch.arange(3 * 2).view(3, 2),
            "image_sizes": torch.tensor([[10, 10], [20, 20]]),
        }
    )
    out = select_rows(inputs, [2, 1, 2], _RowsWithImageRows(), None)
    assert set(out) == {"input_ids", "attention_mask", "token_type_ids"}
    assert out["input_ids"].tolist() == [[4, 5, 6], [0, 3, 2], [4, 5, 6]]
    keep = select_rows(inputs, [1, 0], _RowsWithImageRows(), None)
    assert keep["pixel_values"].tolist() == [[2, 3], [0, 1]] and keep["image_sizes"].shape[0] == 2
