"""The demo's sizes (`DemoConfig`), its stages in order, and where each stage writes (`DemoPaths`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STAGES = ("world", "retrieval", "index", "mine", "instruct", "base", "cot", "sft", "grpo", "zero", "eval", "report")
EPISODE_TYPES = ("random", "geo", "hard")
"""The evaluation's pairing episode types: negatives at random >= min_km away (the training episodes), from the
geo-neighbourhood (geo_min_km..geo_max_km), and the encoder's nearest tiles >= geo_min_km away (encoder-hard)."""


@dataclass
class DemoConfig:
    """Sizes of the demo; the defaults finish in under 20 minutes on 2 cores, `quick()` in about a minute."""

    seed: int = 0
    num_train: int = 2000
    num_val: int = 200
    num_test: int = 1200
    retrieval_epochs: int = 4
    retrieval_image: int = 96
    k: int = 2
    strategy: str = "random"
    min_km: float = 1000.0
    max_km: float = 20000.0
    geo_min_km: float = 100.0  # geo-neighbourhood and encoder-hard evaluation episodes: negatives this far at least
    geo_max_km: float = 1500.0  # ... and geo-neighbourhood negatives this far at most
    instruct_steps: int = 1000  # the instruction-following base (generic questions about images)
    sft_steps: int = 3600
    sft_geolocate_weight: int = 2  # geolocation traces per `sft_pairing_weight` pairing traces in SFT (0: none)
    sft_pairing_weight: int = 1
    compact_geolocate: bool = True  # short geolocation traces (geor1.cot.synthesize.geolocate_exemplar)
    grpo_steps: int = 300
    grpo_lr: float = 1.0e-4
    zero_steps: int = 300
    zero_lr: float = 3.0e-4  # from the base, a larger step: at 1e-4 and 5e-4 with a letter-biased base it stalled
    group_size: int = 8
    grpo_prompts: int = 8
    max_new_tokens: int = 80  # pairing completions (SFT traces are ~55 tokens at K=2)
    geolocate_tokens: int = 200  # geolocation completions (traces are ~125 tokens)
    eval_pairing: int = 1200  # random-negative test episodes (and the same episodes with the order shuffled)
    eval_hard: int = 400  # geo-neighbourhood, encoder-hard and shuffled-order test episodes, each
    eval_geolocate: int = 1200  # every test place
    eval_describe: int = 200

    @classmethod
    def quick(cls, seed: int = 0) -> DemoConfig:
        """Miniature sizes (about a minute): a smoke test of every stage, not a result."""
        return cls(
            seed=seed,
            num_train=24,
            num_val=6,
            num_test=8,
            retrieval_epochs=1,
            retrieval_image=48,
            k=3,
            min_km=50.0,
            max_km=20000.0,
            geo_min_km=0.0,
            geo_max_km=20000.0,
            instruct_steps=3,
            sft_steps=3,
            grpo_steps=2,
            zero_steps=2,
            group_size=2,
            grpo_prompts=2,
            max_new_tokens=12,
            geolocate_tokens=16,
            eval_pairing=6,
            eval_hard=4,
            eval_geolocate=4,
            eval_describe=4,
        )


@dataclass(frozen=True)
class DemoPaths:
    """Where every stage of a demo under `out` writes: each stage its own folder `out/<stage>` (with its `DONE`
    marker); the fit stages their TensorBoard logs, checkpoints and exported model there too."""

    out: Path

    def stage(self, name: str) -> Path:
        return self.out / name

    @property
    def world(self) -> Path:
        return self.out / "world" / "geoworld"

    @property
    def retrieval_ckpt(self) -> Path:
        return self.out / "retrieval" / "checkpoints" / "last.ckpt"

    @property
    def index(self) -> Path:
        return self.out / "index" / "index"

    @property
    def episodes(self) -> Path:
        """The training (and random-negative evaluation) episodes."""
        return self.out / "mine" / "episodes"

    def episodes_of(self, kind: str) -> Path:
        """The episodes of one of EPISODE_TYPES ("random" is `episodes`)."""
        return self.episodes if kind == "random" else self.out / "mine" / f"episodes_{kind}"

    @property
    def instruct(self) -> Path:
        """The instruction data (`geor1.data.instruct`): generic questions about the images."""
        return self.out / "instruct" / "describe"

    @property
    def sft_pairing(self) -> Path:
        return self.out / "cot" / "sft_pairing"

    @property
    def sft_geolocate(self) -> Path:
        return self.out / "cot" / "sft_geolocate"

    @property
    def configs(self) -> Path:
        """The exact config of every fit stage, `<stage>.yaml` (`geor1 fit --config` reruns one)."""
        return self.out / "configs"

    def config(self, stage: str) -> Path:
        return self.configs / f"{stage}.yaml"

    def model(self, stage: str) -> Path:
        """The Hugging Face folder a policy fit stage (base, sft, grpo, zero) exports."""
        return self.out / stage / "model"

    @property
    def base_model(self) -> Path:
        """The instruction-following base (the `base` stage's export): the table's base row, where SFT and Zero
        start."""
        return self.model("base")

    @property
    def eval(self) -> Path:
        return self.out / "eval"

    @property
    def results(self) -> Path:
        return self.out / "eval" / "results.json"

    @property
    def report(self) -> Path:
        return self.out / "report.md"
