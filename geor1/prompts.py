"""The task prompts, one place for training, synthesis and evaluation. `<image>` marks where each image goes."""

from __future__ import annotations

import string

PAIRING_QUESTION = ("Which satellite tile shows the place where the ground-level photo was taken? "
                    "Think step by step inside <think></think>, then give only the letter inside <answer></answer>.")
GEOLOCATE_QUESTION = ("Where on Earth was this picture taken? Think step by step inside <think></think>, then answer "
                      "inside <answer></answer> with the latitude and longitude in decimal degrees followed by "
                      "(City, country code), e.g. <answer>48.85660, 2.35220 (Paris, FR)</answer>.")


def pairing_prompt(k: int) -> str:
    """1 ground view + K candidate tiles (images in that order)."""
    letters = string.ascii_uppercase[:k]
    return "Ground view: <image>\nCandidates:" + "".join(f" {x} <image>" for x in letters) + "\n" + PAIRING_QUESTION


def geolocate_prompt() -> str:
    """1 ground view."""
    return "<image>\n" + GEOLOCATE_QUESTION
