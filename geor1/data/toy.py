"""A toy colour-matching pairing task, generated in memory: the fastest way to smoke-test an objective.

Each sample is one "ground view" (sky above, a coloured ground below) and K "tiles" of solid colours with noise;
exactly one tile has the ground's colour. It has the shape of Geo-R1's pairing prompt (1 ground + K candidates,
images of different sizes) with none of its difficulty; GeoWorld is the real default data set.
"""

from __future__ import annotations

import string

import lightning as L
import numpy as np
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from geor1.data.sample import ChatSample, Prompt, collate_samples
from geor1.tasks import PairingTarget

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 70, 200),
    "yellow": (220, 200, 50),
    "white": (235, 235, 235),
    "brown": (120, 80, 40),
    "black": (20, 20, 20),
    "purple": (130, 50, 160),
}
PAIRING_QUESTION = (
    "Which satellite tile shows the place where the ground-level photo was taken? Answer with the letter."
)


class ToyPairing(Dataset):
    """Deterministic map-style data set: sample i depends only on (seed, i)."""

    def __init__(self, size: int, num_candidates: int = 2, image_size: int = 56, seed: int = 0) -> None:
        if not 2 <= num_candidates <= len(COLOURS):
            raise ValueError(f"num_candidates must be in 2..{len(COLOURS)}, got {num_candidates}")
        self.size, self.k, self.image_size, self.seed = size, num_candidates, image_size, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> ChatSample:
        rng = np.random.default_rng([self.seed, i])
        names = list(COLOURS)
        picked = [names[j] for j in rng.choice(len(names), self.k, replace=False)]
        answer = int(rng.integers(self.k))
        truth = picked[answer]
        s = self.image_size
        ground = np.empty((s, s + 16, 3), dtype=np.float32)  # wider than tall, like a perspective photo
        ground[: s // 2] = (135, 190, 235)
        ground[s // 2 :] = COLOURS[truth]
        tiles = [np.broadcast_to(np.array(COLOURS[c], np.float32), (s, s, 3)) for c in picked]
        images = [_to_image(ground, rng)] + [_to_image(t, rng) for t in tiles]
        letters = string.ascii_uppercase[: self.k]
        text = "Ground view: <image>\nCandidates:" + "".join(f" {x} <image>" for x in letters) + "\n" + PAIRING_QUESTION
        others = ", ".join(f"{letters[j]} is {c}" for j, c in enumerate(picked) if j != answer)
        response = (
            f"<think>The ground view shows {truth} ground. Candidate {letters[answer]} is {truth}; "
            f"{others}.</think><answer>{letters[answer]}</answer>"
        )
        return ChatSample(
            key=f"toy-{self.seed}-{i:06d}",
            prompt=Prompt(text, images),
            target=PairingTarget(self.k, answer),
            response=response,
        )


def _to_image(arr: np.ndarray, rng: np.random.Generator) -> Image.Image:
    noisy = arr + rng.normal(0, 12, arr.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


class ToyPairingDataModule(L.LightningDataModule):
    """Toy pairing prompts for smoke tests and debug configs.

    Args:
        num_train: training samples.
        num_val: validation samples (a different seed stream than training).
        num_candidates: K tiles per prompt.
        image_size: tile side in pixels.
        batch_size: prompts per batch.
        num_workers: DataLoader workers.
        seed: data seed.
    """

    def __init__(
        self,
        num_train: int = 64,
        num_val: int = 16,
        num_candidates: int = 2,
        image_size: int = 56,
        batch_size: int = 4,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train_set = ToyPairing(num_train, num_candidates, image_size, seed)
        self.val_set = ToyPairing(num_val, num_candidates, image_size, seed + 1_000_003)

    def _loader(self, ds: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=self.hparams["batch_size"],
            shuffle=shuffle,
            collate_fn=collate_samples,
            num_workers=self.hparams["num_workers"],
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)
