"""Plot TensorBoard scalars of a run (moving average) to a PNG, e.g. the reward curve of a GRPO run.

    python benchmarks/plot_run.py runs/grpo/geoworld_tiny/tb --tags rewards/total/mean train/pairing_acc \\
        --out docs/grpo_reward.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def load_scalars(logdir: str, tags: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(Path(logdir).rglob("events.out.tfevents.*"))
    if not files:
        raise SystemExit(f"no TensorBoard event file under {logdir}")
    acc = EventAccumulator(str(files[-1]))
    acc.Reload()
    out = {}
    for tag in tags:
        events = acc.Scalars(tag)
        out[tag] = (np.array([e.step for e in events]), np.array([e.value for e in events]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logdir")
    ap.add_argument("--tags", nargs="+", required=True)
    ap.add_argument("--window", type=int, default=20, help="moving-average window (steps)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default=None)
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = load_scalars(args.logdir, args.tags)
    fig, axes = plt.subplots(1, len(args.tags), figsize=(4.2 * len(args.tags), 3.2))
    for ax, tag in zip(np.atleast_1d(axes), args.tags, strict=True):
        steps, values = data[tag]
        ax.plot(steps, values, alpha=0.25, lw=0.8)
        if len(values) >= args.window:
            smooth = np.convolve(values, np.ones(args.window) / args.window, mode="valid")
            ax.plot(steps[args.window - 1 :], smooth, lw=2, label=f"mean of {args.window} steps")
            ax.legend(fontsize=8)
        ax.set_title(tag, fontsize=10)
        ax.set_xlabel("step")
    if args.title:
        fig.suptitle(args.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"plot written to {args.out}")


if __name__ == "__main__":
    main()
