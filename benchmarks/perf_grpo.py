"""Seconds per GRPO step: geor1's GRPOModule vs TRL's GRPOTrainer on the same tiny random-init Qwen2.5-VL (loaded
from the same local folder), the same B prompts x G samples, the same K+1 images per prompt, prompt and completion
lengths, temperature, beta and rewards, one run after the other on this machine. Prints the ratio, geor1's split into
rollout / scoring / update, and the image patches through the vision tower per step for both.

    pip install -e ".[bench]"          # TRL, for this benchmark only
    python benchmarks/perf_grpo.py     # B=2, G=4, K=2 (3 images of 112 px), 32 completion tokens, 12 steps
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _report import write_report

import geor1  # noqa: F401  (offline mode)
from geor1.data.toy import ToyPairing
from geor1.model.tiny import save_tiny_checkpoint
from geor1.rewards.builtin import accuracy, format_reward
from geor1.tasks import PairingTarget


class VisionCounter:
    """Counts image patches through the vision towers of the policy and of the reference model (forward hooks)."""

    def __init__(self, model) -> None:
        self.patches = 0
        self.calls = 0
        self.watch(model)

    def watch(self, model) -> None:
        inner = getattr(model, "model", model)
        inner = getattr(inner, "model", inner) if not hasattr(inner, "visual") else inner
        inner.visual.register_forward_hook(self._hook)

    def _hook(self, module, args, out) -> None:
        self.patches += int(args[0].shape[0])
        self.calls += 1


def run_trl(model_dir: Path, samples, args) -> dict:
    from datasets import Dataset, Image, Sequence
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    rows = []
    for s in samples:
        content = []
        for piece_i, piece in enumerate(s.prompt.text.split("<image>")):
            if piece:
                content.append({"type": "text", "text": piece})
            if piece_i < len(s.prompt.images):
                content.append({"type": "image"})  # TRL fills these from the "images" column, in order
        rows.append(
            {
                "prompt": [{"role": "user", "content": content}],
                "images": list(s.prompt.images),
                "answer": s.target.answer,
                "k": s.target.k,
            }
        )
    dataset = Dataset.from_list(rows).cast_column("images", Sequence(Image()))

    def reward(completions, answer, k, **_):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        targets = [PairingTarget(kk, a) for a, kk in zip(answer, k, strict=True)]
        return [a + f for a, f in zip(accuracy(texts, targets), format_reward(texts, targets), strict=True)]

    model = AutoModelForImageTextToText.from_pretrained(model_dir, local_files_only=True)
    processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    counter = VisionCounter(model)
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    cfg = GRPOConfig(
        output_dir=str(args.tmp / "trl"),
        per_device_train_batch_size=args.b * args.g,
        num_generations=args.g,
        max_completion_length=args.tokens,
        temperature=1.0,
        beta=args.beta,
        learning_rate=1e-6,
        max_steps=args.steps,
        logging_steps=1000,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=0,
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[reward],
        args=cfg,
        train_dataset=dataset,
        processing_class=processor,
        callbacks=[Clock()],
    )
    if getattr(trainer, "ref_model", None) is not None:
        counter.watch(trainer.ref_model)
    counter.patches = counter.calls = 0
    trainer.train()
    steady = times[args.warmup :]
    return {
        "s_per_step": float(np.mean(steady)),
        "vision_patches_per_step": counter.patches / len(times),
        "vision_calls_per_step": counter.calls / len(times),
    }


def run_geor1(model_dir: Path, samples, args) -> dict:
    import lightning as L
    from torch.utils.data import DataLoader

    from geor1.data.sample import collate_samples
    from geor1.model import Policy
    from geor1.objectives.grpo import GRPOModule
    from geor1.objectives.grpo_settings import LossSettings, RolloutSettings

    policy = Policy(str(model_dir))
    module = GRPOModule(
        policy,
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-6),
        rewards={"accuracy": 1.0, "format": 1.0},
        rollout=RolloutSettings(group_size=args.g, max_new_tokens=args.tokens, temperature=1.0),
        loss=LossSettings(beta=args.beta, max_grad_norm=None),
        log_completions_every_n_steps=0,
    )
    counter = VisionCounter(policy.model)
    times: list[float] = []
    split: dict[str, list[float]] = {"rollout": [], "score": [], "update": []}

    class Clock(L.Callback):
        def on_train_start(self, trainer, pl_module):
            if pl_module._reference is not None:
                counter.watch(pl_module._reference.model)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.t = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            times.append(time.perf_counter() - self.t)
            for name in split:
                split[name].append(float(trainer.callback_metrics[f"time/{name}_s"]))

    loader = DataLoader(samples, batch_size=args.b, collate_fn=collate_samples, shuffle=False)
    trainer = L.Trainer(
        max_steps=args.steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Clock()],
    )
    trainer.fit(module, train_dataloaders=loader)
    w = args.warmup
    return {
        "s_per_step": float(np.mean(times[w:])),
        "vision_patches_per_step": counter.patches / len(times),
        "vision_calls_per_step": counter.calls / len(times),
        **{f"{k}_s": float(np.mean(v[w:])) for k, v in split.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--b", type=int, default=2, help="prompts per step")
    ap.add_argument("--g", type=int, default=4, help="samples per prompt")
    ap.add_argument("--k", type=int, default=2, help="candidate tiles per prompt (+1 ground view)")
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--tokens", type=int, default=32, help="completion tokens")
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = Path(tmp)
        model_dir = save_tiny_checkpoint(args.tmp / "tiny", seed=0)
        samples = [
            ToyPairing(args.b * args.steps, args.k, args.image_size, seed=0)[i] for i in range(args.b * args.steps)
        ]
        ours = run_geor1(model_dir, samples, args)
        trl = run_trl(model_dir, samples, args)
    ratio = ours["s_per_step"] / trl["s_per_step"]
    lines = [
        f"perf_grpo: B={args.b} prompts x G={args.g} samples, {args.k + 1} images of {args.image_size} px, "
        f"{args.tokens} completion tokens, beta={args.beta}, {torch.get_num_threads()} threads, "
        f"mean of steps {args.warmup + 1}..{args.steps}",
        "| trainer | s/step | rollout s | scoring s | update s (ref + policy) | vision patches/step "
        "| vision calls/step |",
        "|---|---|---|---|---|---|---|",
        f"| geor1 GRPOModule | {ours['s_per_step']:.3f} | {ours['rollout_s']:.3f} | {ours['score_s']:.4f} | "
        f"{ours['update_s']:.3f} | {ours['vision_patches_per_step']:.0f} | {ours['vision_calls_per_step']:.1f} |",
        f"| TRL GRPOTrainer | {trl['s_per_step']:.3f} | - | - | - | {trl['vision_patches_per_step']:.0f} | "
        f"{trl['vision_calls_per_step']:.1f} |",
        f"geor1 / TRL time per step: {ratio:.2f}x",
    ]
    print("\n".join(lines))
    write_report(args.out, "perf_grpo", {"geor1": ours, "trl": trl, "ratio": ratio}, lines)


if __name__ == "__main__":
    main()
