"""The demo's sizes (`DemoConfig`), its stages in order, and where each stage writes (`DemoPaths`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STAGES = ("world", "retrieval", "index", "mine", "cot", "sft", "grpo", "zero", "eval", "report")


@dataclass
class DemoConfig:
    """Sizes of the demo; the defaults finish in about 15 minutes on 2 cores, `quick()` in about a minute."""

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
    sft_steps: int = 600
    sft_geolocate: bool = False  # mix geolocation traces into SFT (1 shard in 7): costs pairing accuracy here
    grpo_steps: int = 500
    zero_steps: int = 50  # the untrained base never earned a format or accuracy reward in 200 steps
    group_size: int = 8
    grpo_prompts: int = 8
    max_new_tokens: int = 80  # pairing completions (SFT traces are ~55 tokens at K=2)
    geolocate_tokens: int = 200  # geolocation completions (traces are ~125 tokens)
    eval_pairing: int = 1200
    eval_geolocate: int = 200

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
            sft_steps=3,
            grpo_steps=2,
            zero_steps=2,
            group_size=2,
            grpo_prompts=2,
            max_new_tokens=12,
            geolocate_tokens=16,
            eval_pairing=6,
            eval_geolocate=4,
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
        return self.out / "mine" / "episodes"

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
        """The Hugging Face folder a policy fit stage (sft, grpo, zero) exports."""
        return self.out / stage / "model"

    @property
    def base_model(self) -> Path:
        """The untrained tiny model, the evaluation's baseline row (the same weights Zero and SFT start from)."""
        return self.out / "base_model"

    @property
    def eval(self) -> Path:
        return self.out / "eval"

    @property
    def results(self) -> Path:
        return self.out / "eval" / "results.json"

    @property
    def report(self) -> Path:
        return self.out / "report.md"
