"""Policy's image budget (min_pixels / max_pixels) means the same for every family: the pixels the vision tower
receives per image, every tile and global view counted, measured here on what the processor actually produced
(`pixel_values`: elements / 3 channels; Qwen's from image_grid_thw and the patch side), never on the adapter's own
arithmetic. Each family's tiny model with its own processor class, built offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from geor1 import Geor1Error
from geor1.data.sample import Prompt
from geor1.model.tiny_families import ALL_FAMILIES, save_family, tiny_family_policy

# (width, height): square, wide, tall, smaller than one tile, large
SIZES = [(300, 300), (400, 100), (90, 360), (40, 30), (1000, 700), (64, 64)]
TILE_AREA = 32 * 32  # the tiny non-Qwen families' vision input (geor1.model.tiny_families.TILE)


def _image(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _pixels(policy, w: int, h: int, seed: int = 0) -> int:
    """Pixels the vision tower gets for one image (a prompt of its own), from the processor's output."""
    enc = policy.encode([Prompt("Where was this taken? <image>", [_image(w, h, seed)])])
    if "image_grid_thw" in enc:  # Qwen: [1, 3] grid of patches (t, h, w); pixel_values repeats frames in time
        patch = int(policy.processor.image_processor.patch_size)
        return int(enc["image_grid_thw"][0, 1:].prod()) * patch * patch
    return enc["pixel_values"].numel() // 3


def _all_pixels(policy) -> list[int]:
    return [_pixels(policy, w, h, i) for i, (w, h) in enumerate(SIZES)]


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_max_pixels_bounds_the_pixels_of_every_image(family):
    """Every image of every size and aspect ratio stays within max_pixels; a bigger budget gives some image more
    pixels (the budget is mapped onto the processor, not ignored), except Gemma3's fixed size, which meets both."""
    small, large = (
        3 * TILE_AREA,
        12544,
    )  # 12544: the tiny recipes' value (16 Qwen2.5-VL tokens)
    got = {budget: _all_pixels(tiny_family_policy(family, max_pixels=budget)) for budget in (small, large)}
    for budget, pixels in got.items():
        assert max(pixels) <= budget, (family, budget, pixels)
    if family == "gemma3":
        assert set(got[small]) == set(got[large]) == {TILE_AREA}  # one 32x32 view, whatever the budget
    else:
        assert max(got[large]) > small, (family, got)
        assert any(a < b for a, b in zip(got[small], got[large], strict=True)), (
            family,
            got,
        )


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_a_budget_too_small_for_the_family_is_refused_naming_its_knob(family):
    """500 px is below one image token (Qwen: 28x28 / 32x32) and one 32x32 tile (the others): a one-line
    Geor1Error at load that names the family and its own setting, never a silently larger image."""
    knob = {
        "qwen2_vl": "size.longest_edge",
        "qwen2_5_vl": "size.longest_edge",
        "qwen3_vl": "size.longest_edge",
        "idefics3": "size.longest_edge",
        "smolvlm": "size.longest_edge",
        "gemma3": "size",
        "llava_onevision": "image_grid_pinpoints",
        "internvl": "max_patches",
    }[family]
    with pytest.raises(Geor1Error, match="max_pixels=500") as err:
        tiny_family_policy(family, max_pixels=500)
    assert knob in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "idefics3", "smolvlm", "internvl"])
def test_min_pixels_is_met_where_the_family_has_a_knob_for_it(family):
    """min_pixels 6000 (above each processor's own minimum and, for InternVL, its own max_patches): every image, the
    40x30 one included, gets at least that many pixels; without it some image gets fewer (the minimum did
    something)."""
    lo = 6000
    pixels = _all_pixels(tiny_family_policy(family, min_pixels=lo))
    assert min(pixels) >= lo, (family, pixels)
    plain = _all_pixels(tiny_family_policy(family))
    assert min(plain) < lo, (family, plain)


@pytest.mark.parametrize(
    ("family", "lo", "hi", "knob"),
    [
        ("gemma3", 2000, None, "size"),  # every image is one 32x32 view: 1024 px
        (
            "llava_onevision",
            2000,
            None,
            "size",
        ),  # several images in a prompt: the 32x32 base view alone
        (
            "idefics3",
            4000,
            5000,
            "size.longest_edge",
        ),  # 1 tile (1024) or 2x2 + global (up to 5120): neither fits
        (
            "internvl",
            4500,
            5000,
            "min_patches / max_patches",
        ),  # 4 tiles + thumbnail (5120) needed, 3 + 1 allowed
    ],
)
def test_a_minimum_the_family_cannot_meet_is_refused(family, lo, hi, knob):
    with pytest.raises(Geor1Error, match=f"min_pixels={lo}") as err:
        tiny_family_policy(family, min_pixels=lo, max_pixels=hi)
    assert knob in str(err.value)


@pytest.mark.parametrize(
    ("lo", "hi", "message"),
    [
        (5000, 4000, r"min_pixels \(5000\) is larger than max_pixels \(4000\)"),
        (None, 0, "max_pixels must be"),
    ],
)
def test_inconsistent_bounds_are_refused(lo, hi, message):
    with pytest.raises(Geor1Error, match=message):
        tiny_family_policy("internvl", min_pixels=lo, max_pixels=hi)


@pytest.mark.parametrize("family", ["llava_onevision", "idefics3", "internvl", "qwen2_5_vl"])
def test_budgeted_prompts_run_through_the_model_and_survive_save_and_load(family, tmp_path):
    """The settings the budget chose reach the model too (LLaVA-OneVision's grid lives in the processor and the
    model config: a mismatch is an error in the forward), and a saved folder loads back with the same budget."""
    from geor1.model.policy import Policy

    policy = tiny_family_policy(family, max_pixels=3 * TILE_AREA)
    prompts = [Prompt("A <image>", [_image(w, h, i)]) for i, (w, h) in enumerate(SIZES[:3])]
    prompts.append(Prompt("Two: <image> <image>", [_image(80, 50, 7), _image(50, 90, 8)]))
    with torch.no_grad():
        logits = policy.model(**policy.encode(prompts)).logits
    assert torch.isfinite(logits).all()
    policy.save_pretrained(tmp_path / "m")
    loaded = Policy(str(tmp_path / "m"))  # no budget given: the saved processor's own settings
    assert _all_pixels(loaded) == _all_pixels(policy)


def test_policy_from_a_folder_maps_max_pixels_for_smolvlm(tmp_path):
    """The path a recipe takes (`Policy(path, max_pixels=...)` on a saved folder): SmolVLM accepted it, bounded."""
    from geor1.model.policy import Policy

    save_family("smolvlm", tmp_path / "smol")
    policy = Policy(str(tmp_path / "smol"), max_pixels=5 * TILE_AREA)
    pixels = _all_pixels(policy)
    assert max(pixels) == 5 * TILE_AREA and min(pixels) >= TILE_AREA  # 2x2 tiles + the global view at most


@pytest.mark.parametrize(
    "flag",
    [
        "--model.policy.init_args.max_pixels",
        "--model.init_args.policy.init_args.max_pixels",
    ],
)
def test_max_pixels_null_on_the_command_line_unsets_it(flag, capsys):
    """`--model.policy.init_args.max_pixels null` (jsonargparse loses a null two classes deep unless geor1 passes
    it on as the mapping it means): the recipe's 12544 becomes null; a number still overrides."""
    import yaml

    from geor1.cli import main

    def policy_args(*extra: str) -> dict:
        capsys.readouterr()
        with pytest.raises(SystemExit) as done:
            main(
                [
                    "fit",
                    "--config",
                    "configs/sft/geoworld_tiny.yaml",
                    *extra,
                    "--print_config",
                ]
            )
        assert done.value.code in (0, None)
        return yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["policy"]["init_args"]

    assert policy_args()["max_pixels"] == 12544
    assert policy_args(flag, "null")["max_pixels"] is None
    assert policy_args(f"{flag}=null")["max_pixels"] is None
    assert policy_args(flag, "777")["max_pixels"] == 777
