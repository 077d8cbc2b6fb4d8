"""Peak memory of the log-prob / loss pass at Qwen's vocabulary (151,936): geor1 before tiling ("today", full
[N, T, V] logits), geor1 tiled (`geor1.model.logprobs`), and TRL (its `selective_log_softmax` on full logits, and
the fused LM head its 1.16 trainers patch in by default), for one GRPO update and one SFT step.

The model is a random-init Qwen2.5-VL with a tiny body (hidden 64, 2 layers) and the real vocabulary, float32, built
offline, so the LM head dominates, as it does for the transient memory of a 7B run. All variants see the same
weights and inputs, and print their loss: the values agree, only the memory differs.

- GRPO update: 1 text prompt of 64 tokens, G=8 completions of T=1024 tokens; a no-grad reference pass, then the
  policy pass, geor1's clipped surrogate + beta * k3 KL ("grpo" aggregation) and its backward.
- SFT step: B=8 rows of 1,024 tokens (256 prompt tokens masked, 768 response tokens), loss and backward.

Each variant runs in its own process. On a CUDA GPU the figure is `torch.cuda.max_memory_allocated` over the pass
minus the memory allocated before it (model, inputs); on CPU it is the process's peak resident set size during the
pass minus its resident size before it (after the model is built), read from /proc (peak reset through
/proc/self/clear_refs) or, where that is not possible, `ru_maxrss`. A variant that would not fit in the free memory
(the full-logits ones need ~4x the float32 logits) is skipped with the reason, and then every variant of that task
also runs at the largest halved length that fits, so the ratios stay like-for-like.

    pip install -e ".[bench]"                            # TRL, for its variants
    python benchmarks/perf_memory.py --out runs/bench    # ~24 GB free RAM for every variant at full size (CPU)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

from _report import write_report

GRPO_VARIANTS = ("geor1_today", "geor1_tiled", "trl_selective", "trl_fused")
LABELS = {
    "geor1_today": "geor1 today (full logits)",
    "geor1_tiled": "geor1 tiled",
    "trl_selective": "TRL selective_log_softmax (full logits)",
    "trl_fused": "TRL fused LM head (1.16 default)",
}
GB = 1e9


# ---------------------------------------------------------------------------------------------------- memory probes
def _status_kb(key: str) -> int | None:
    try:
        m = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


class CpuPeak:
    """Peak RSS of this process over a window, in bytes above the RSS at its start."""

    def start(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.method = "VmHWM"
        except OSError:
            self.method = "ru_maxrss"
        rss = _status_kb("VmRSS")
        self.base = rss * 1024 if rss is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def stop(self) -> float:
        peak = _status_kb("VmHWM") if self.method == "VmHWM" else None
        peak = peak * 1024 if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return (peak - self.base) / GB


class CudaPeak:
    def __init__(self, device) -> None:
        self.device = device
        self.method = "cuda max_memory_allocated"

    def start(self) -> None:
        import torch

        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.base = torch.cuda.memory_allocated(self.device)

    def stop(self) -> float:
        import torch

        torch.cuda.synchronize(self.device)
        return (torch.cuda.max_memory_allocated(self.device) - self.base) / GB


# ---------------------------------------------------------------------------------------------------- the child
def build_model(args, device):
    """A random-init Qwen2.5-VL with a tiny body and the real vocabulary (no tokenizer needed: ids are random)."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    h = args.hidden
    half = (h // 4) // 2
    section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=args.vocab,
            hidden_size=h,
            intermediate_size=2 * h,
            num_hidden_layers=args.layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=8192,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": section},
        ),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=h),
        image_token_id=args.vocab - 5,
        video_token_id=args.vocab - 4,
        vision_start_token_id=args.vocab - 3,
        vision_end_token_id=args.vocab - 2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration._from_config(config, attn_implementation="sdpa")
    return model.to(device).train()


def grpo_logprobs(variant: str, model, input_ids, attention, t: int, temperature: float, tile: int):
    """[N, T] log-probs of the last T tokens of each row, the way each variant computes them."""
    ids = input_ids[:, -t:]
    if variant == "geor1_today":  # Policy.token_logprobs before tiling (no shared prefix)
        from geor1.model.policy import selective_log_softmax as full_logits_logprobs  # the full-logits reference

        logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False, logits_to_keep=t + 1).logits[
            :, :-1
        ]  # [N, T, V]
        if temperature != 1.0:
            logits = logits / temperature
        return full_logits_logprobs(logits, ids)
    if variant == "geor1_tiled":
        from geor1.model.logprobs import tiled_token_logprobs

        hidden = model.model(input_ids=input_ids, attention_mask=attention, use_cache=False).last_hidden_state
        return tiled_token_logprobs(hidden[:, -(t + 1) : -1], model.lm_head, ids, temperature, tile)
    if variant == "trl_selective":  # GRPOTrainer's full-logits path: logits[:, :-1][:, -T:] -> selective_log_softmax
        from trl.trainer.utils import selective_log_softmax

        logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False, logits_to_keep=t + 1).logits[
            :, :-1
        ][:, -t:]
        return selective_log_softmax(logits, ids, temperature=temperature)
    if variant == "trl_fused":  # GRPOTrainer 1.16: model(..., labels, fused_lm_head=True), log-probs + entropy
        labels = input_ids.masked_fill(attention == 0, -100)
        labels[:, :-t] = -100
        out = model(input_ids=input_ids, attention_mask=attention, labels=labels, fused_lm_head=True)
        return out.log_probs[:, -t:]
    raise ValueError(variant)


def sft_loss(variant: str, model, input_ids, attention, labels, tile: int):
    """Mean next-token loss over the labelled positions, the way each variant computes it."""
    if variant == "geor1_today":  # SFTModule before tiling
        from geor1.objectives.sft import masked_lm_loss

        logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits  # [B, L, V]
        return masked_lm_loss(logits, labels)[0]
    if variant == "geor1_tiled":
        from geor1.model.logprobs import tiled_lm_loss

        hidden = model.model(input_ids=input_ids, attention_mask=attention, use_cache=False).last_hidden_state
        return tiled_lm_loss(hidden, model.lm_head, labels, tile=tile)[0]
    if variant == "trl_selective":
        from trl.trainer.utils import selective_log_softmax

        logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits[:, :-1]
        target = labels[:, 1:]
        keep = target != -100
        lp = selective_log_softmax(logits, target.clamp(min=0))
        return -(lp * keep).sum() / keep.sum()
    if variant == "trl_fused":  # SFTTrainer 1.16's default loss
        out = model(input_ids=input_ids, attention_mask=attention, labels=labels, fused_lm_head=True)
        return -out.log_probs.sum() / out.label_mask.sum().clamp(min=1)
    raise ValueError(variant)


def warm_up(args, model, device) -> None:
    """The variant once on 2 rows of 8 tokens, forward and backward, then gradients cleared."""
    import torch

    ids = torch.randint(0, args.vocab - 16, (2, 8), device=device)
    if args.task == "grpo":
        lp = grpo_logprobs(args.variant, model, ids, torch.ones_like(ids), 4, args.temperature, args.tile)
        lp.sum().backward()
    else:
        labels = ids.clone()
        labels[:, :2] = -100
        sft_loss(args.variant, model, ids, torch.ones_like(ids), labels, args.sft_tile).backward()
    model.zero_grad(set_to_none=True)


def run_child(args) -> dict:
    import torch

    from geor1.objectives.grpo_math import clipped_surrogate, kl_estimate

    with contextlib.suppress(OSError):  # if memory runs out, this process is the one the kernel stops, not a neighbour
        Path("/proc/self/oom_score_adj").write_text("1000")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(args, device)
    if args.variant == "trl_fused":
        from trl.trainer.utils import add_fused_lm_head

        outputs = ("log_probs", "entropy") if args.task == "grpo" else ("log_probs", "entropy", "is_top1")
        add_fused_lm_head(model, temperature=args.temperature if args.task == "grpo" else 1.0, outputs=outputs)
    g = torch.Generator().manual_seed(1)
    probe = CudaPeak(device) if device.type == "cuda" else CpuPeak()
    warm_up(args, model, device)  # one-time allocations (thread pools, kernel workspaces) stay out of the figure
    if args.task == "grpo":
        n, t = args.group, args.tokens
        prompt = torch.randint(0, args.vocab - 16, (1, args.prompt), generator=g).expand(n, -1)
        completions = torch.randint(0, args.vocab - 16, (n, t), generator=g)
        input_ids = torch.cat([prompt, completions], 1).to(device)
        attention = torch.ones_like(input_ids)
        mask = torch.ones(n, t, dtype=torch.bool, device=device)
        advantages = torch.randn(n, generator=g).to(device)
        probe.start()
        t0 = time.perf_counter()
        with torch.no_grad():  # the reference pass
            ref = grpo_logprobs(args.variant, model, input_ids, attention, t, args.temperature, args.tile) - 0.01
        lp = grpo_logprobs(args.variant, model, input_ids, attention, t, args.temperature, args.tile)  # [N, T]
        per_token, _ = clipped_surrogate(lp, lp.detach(), advantages, 0.2)
        per_token = per_token + 0.04 * kl_estimate(lp, ref, "k3")
        m = mask.float()
        loss = ((per_token * m).sum(1) / m.sum(1)).mean()
        value = float(lp.detach().double().mean())  # the log-probs themselves: comparable across variants
    else:
        b, length, p = args.sft_batch, args.sft_length, args.sft_prompt
        input_ids = torch.randint(0, args.vocab - 16, (b, length), generator=g).to(device)
        attention = torch.ones_like(input_ids)
        labels = input_ids.clone()
        labels[:, :p] = -100
        probe.start()
        t0 = time.perf_counter()
        loss = sft_loss(args.variant, model, input_ids, attention, labels, args.sft_tile)
        value = float(loss.detach())
    loss.backward()
    grad_norm = float(torch.stack([q.grad.double().norm() for q in model.parameters() if q.grad is not None]).norm())
    seconds = time.perf_counter() - t0
    peak = probe.stop()
    return {
        "task": args.task,
        "variant": args.variant,
        "peak_gb": peak,
        "seconds": seconds,
        "value": value,
        "grad_norm": grad_norm,
        "device": str(device),
        "method": probe.method,
    }


# ---------------------------------------------------------------------------------------------------- the parent
def mem_available_gb() -> float | None:
    try:
        m = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) * 1024 / GB if m else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=151_936)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--group", type=int, default=8, help="G completions of the one GRPO prompt")
    ap.add_argument("--tokens", type=int, default=1024, help="T completion tokens")
    ap.add_argument("--prompt", type=int, default=64, help="GRPO prompt tokens")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--tile", type=int, default=32, help="positions per LM-head tile, GRPO (tiled_token_logprobs)")
    ap.add_argument("--sft-batch", type=int, default=8)
    ap.add_argument("--sft-length", type=int, default=1024)
    ap.add_argument("--sft-prompt", type=int, default=256, help="masked prompt tokens per SFT row")
    ap.add_argument("--sft-tile", type=int, default=256, help="positions per LM-head tile, SFT (tiled_lm_loss)")
    ap.add_argument("--variants", nargs="+", default=list(GRPO_VARIANTS), choices=GRPO_VARIANTS)
    ap.add_argument("--tasks", nargs="+", default=["grpo", "sft"], choices=["grpo", "sft"])
    ap.add_argument("--wait", type=float, default=60, help="seconds to wait for free memory before skipping a variant")
    ap.add_argument("--out", default=None, help="folder for perf_memory.json / .md")
    ap.add_argument("--child", nargs=2, metavar=("TASK", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.task, args.variant = args.child
        print("RESULT " + json.dumps(run_child(args)), flush=True)
        return

    passthrough = list(sys.argv[1:])
    if "--out" in passthrough:
        i = passthrough.index("--out")
        del passthrough[i : i + 2]
    rows: list[dict] = []
    for task in args.tasks:
        full = args.tokens if task == "grpo" else args.sft_length
        skipped = [v for v in args.variants if not run_variant(args, passthrough, task, v, full, rows)]
        if skipped:  # like-for-like figures at the largest size that fits, for every variant
            size = full // 2
            while size >= 32 and max(need_gb(args, task, v, size) for v in args.variants) > free_gb():
                size //= 2
            if size >= 32:
                for v in args.variants:
                    run_variant(args, passthrough, task, v, size, rows)
    report(args, rows)


def run_variant(args, passthrough: list[str], task: str, variant: str, size: int, rows: list[dict]) -> bool:
    """Run one variant in its own process; False when it does not fit in the free memory (recorded as skipped)."""
    need = need_gb(args, task, variant, size)
    deadline = time.time() + args.wait
    while need > free_gb() and time.time() < deadline:
        time.sleep(5)
    avail = free_gb()
    base = {"task": task, "variant": variant, "size": size, "need_gb": need, "mem_available_gb": avail}
    if need > avail:
        rows.append({**base, "error": f"not run: needs about {need:.1f} GB, {avail:.1f} GB free"})
        print(f"{task} {variant} @{size}: {rows[-1]['error']}", flush=True)
        return False
    size_arg = (
        ["--tokens", str(size)]
        if task == "grpo"
        else ["--sft-length", str(size), "--sft-prompt", str(args.sft_prompt * size // args.sft_length)]
    )
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # freed tensors leave the RSS at once (no heap reuse)
    proc = subprocess.run(
        [sys.executable, __file__, *passthrough, *size_arg, "--child", task, variant],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
        env=env,
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-2:]
        killed = " (killed: out of memory?)" if proc.returncode < 0 else ""
        rows.append({**base, "error": f"exit code {proc.returncode}{killed}: {' | '.join(tail)}"})
        print(f"{task} {variant} @{size}: FAILED {rows[-1]['error']}", flush=True)
        return True
    rows.append({**base, **json.loads(line[len("RESULT ") :])})
    print(f"{task} {variant} @{size}: {rows[-1]['peak_gb']:.3f} GB, {rows[-1]['seconds']:.1f} s", flush=True)
    return True


def logits_gb(args, task: str, size: int) -> float:
    rows = args.group if task == "grpo" else args.sft_batch
    return rows * size * args.vocab * 4 / GB


def need_gb(args, task: str, variant: str, size: int) -> float:
    """Free memory a variant needs, with margin: the full-logits paths peak near 4x the float32 logits."""
    if variant in ("geor1_today", "trl_selective"):
        return 4.5 * logits_gb(args, task, size) + 1.5
    return 4.0 if variant == "trl_fused" else 2.5


def free_gb() -> float:
    avail = mem_available_gb()
    return float("inf") if avail is None else avail - 1.0  # 1 GB left to everything else on the machine


def report(args, rows: list[dict]) -> None:
    device = next((r["device"] for r in rows if "device" in r), "?")
    method = next((r["method"] for r in rows if "method" in r), "?")
    what = (
        "CUDA max_memory_allocated during the pass minus allocated before it"
        if device.startswith("cuda")
        else f"peak RSS during the pass minus RSS after the model was built and a warm-up pass ({method}; "
        f"MALLOC_MMAP_THRESHOLD_=65536 so freed tensors leave the RSS)"
    )
    lines = [
        f"Peak memory at vocab {args.vocab:,}, tiny body (hidden {args.hidden}, {args.layers} layers), float32, "
        f"on {device}: {what}.",
        f"GRPO update: 1 prompt of {args.prompt} tokens, G={args.group} completions of T tokens (reference "
        f"pass + policy pass + loss + backward; tile {args.tile}). SFT step: {args.sft_batch} rows of L tokens, "
        f"the first quarter prompt (masked; tile {args.sft_tile}).",
        "",
        "| task | T or L | full logits GB | variant | peak GB | seconds | mean log-prob (GRPO) / loss (SFT) | "
        "grad norm |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        head = f"| {r['task']} | {r['size']} | {logits_gb(args, r['task'], r['size']):.2f} | {LABELS[r['variant']]} |"
        if "error" in r:
            lines.append(f"{head} {r['error'][:160]} | | | |")
        else:
            lines.append(f"{head} {r['peak_gb']:.3f} | {r['seconds']:.1f} | {r['value']:.7f} | {r['grad_norm']:.7f} |")
    ratios = {}
    for task in args.tasks:
        for size in sorted({r["size"] for r in rows if r["task"] == task}, reverse=True):
            got = {
                r["variant"]: r["peak_gb"] for r in rows if r["task"] == task and r["size"] == size and "peak_gb" in r
            }
            if "geor1_tiled" not in got:
                continue
            for other, name in (
                ("geor1_today", "today"),
                ("trl_selective", "TRL selective"),
                ("trl_fused", "TRL fused"),
            ):
                if other in got and got[other] > 0:
                    ratios[f"{task} @{size}: tiled / {name}"] = got["geor1_tiled"] / got[other]
    lines.append("")
    lines += [f"- {k}: {v:.3f}" for k, v in ratios.items()]
    lines.append("- targets: tiled / today <= 0.1; tiled / TRL < 1")
    print("\n" + "\n".join(lines))
    write_report(
        args.out,
        "perf_memory",
        {"settings": {k: v for k, v in vars(args).items() if k != "child"}, "rows": rows, "ratios": ratios},
        lines,
    )


if __name__ == "__main__":
    main()
