"""`geor1 cot synthesize|import|generate`: fact-checked chain-of-thought exemplars as SFT shards."""

from __future__ import annotations

import argparse
import json


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cot", help="synthesize or import fact-checked chain-of-thought exemplars")
    csub = p.add_subparsers(dest="cot_command", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--shards", required=True, help="episode shards (pairing) or pair shards (geolocate)")
    common.add_argument("--out", required=True, help="folder for SFT shards, exemplars.jsonl, factcheck_summary.json")
    common.add_argument("--task", choices=["pairing", "geolocate"], required=True)
    common.add_argument("--tolerance-km", type=float, default=25.0, help="coordinates further off fail the check")
    common.add_argument("--splits", default="train,val,test")
    s = csub.add_parser("synthesize", parents=[common], help="template exemplars grounded in each sample's cues")
    s.add_argument("--seed", type=int, default=0, help="phrasing seed")
    s.add_argument(
        "--compact",
        action="store_true",
        help="geolocation: short traces (cover, relief, latitude band, hemispheres, continent) and a 1-decimal point",
    )
    s.set_defaults(handler=_run)
    i = csub.add_parser("import", parents=[common], help="exemplars from a JSONL of key, reasoning, answer")
    i.add_argument("--jsonl", required=True)
    i.set_defaults(handler=_run, seed=0, compact=False)
    _add_generate(csub)


def _add_generate(csub: argparse._SubParsersAction) -> None:
    g = csub.add_parser(
        "generate",
        help="traces written by a local teacher VLM from the images (+ a hint from the metadata), filtered",
        description="Chain-of-thought traces written by a local teacher VLM, fact-checked and filtered, as SFT shards "
        "(see docs/training.md, 'Chain-of-thought from a teacher VLM').",
    )
    g.add_argument("--teacher", help="local model folder of the teacher (never a hub id)")
    g.add_argument("--shards", help="episode shards (pairing) or pair shards (geolocate)")
    g.add_argument("--task", choices=["pairing", "geolocate"])
    g.add_argument("--out", help="folder for SFT shards, generations.jsonl, exemplars.jsonl, factcheck_summary.json")
    g.add_argument("--samples", type=int, default=4, help="samples per item (best-of-N keeps at most one)")
    g.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (0: greedy, one sample)")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--batch-size", type=int, default=8, help="items per teacher call")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--max-new-tokens", type=int, default=512)
    g.add_argument("--backend", choices=["hf", "vllm"], default="hf", help="hf: a geor1 Policy; vllm: when installed")
    g.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default=None,
        help="teacher weights dtype (default: bfloat16 on a GPU, float32 on CPU)",
    )
    g.add_argument("--max-pixels", type=int, default=None, help="largest image area for the teacher (hf backend)")
    g.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs per vLLM engine (vllm backend)")
    g.add_argument(
        "--no-hint",
        action="store_true",
        help="answer blind; only correct traces are kept (rejection sampling, STaR-style)",
    )
    g.add_argument("--prompt-file", default=None, help="a teacher prompt file of one's own (default: teacher_v1)")
    g.add_argument(
        "--show-prompt",
        action="store_true",
        help="print the teacher prompt file (and, with --shards and --task, the first item's prompt) and exit",
    )
    g.add_argument("--limit", type=int, default=None, help="generate for at most N new items in this run")
    g.add_argument("--splits", default="train,val,test")
    g.add_argument("--tolerance-km", type=float, default=25.0, help="coordinates further off fail the fact-check")
    g.add_argument("--min-words", type=int, default=20, help="fewest words of reasoning kept")
    g.add_argument("--max-words", type=int, default=400, help="most words of reasoning kept")
    g.add_argument("--dedup-ngram", type=int, default=4, help="word n-gram size of the near-duplicate check")
    g.add_argument(
        "--dedup-threshold",
        type=float,
        default=0.8,
        help="a trace whose n-gram Jaccard overlap with a kept trace reaches this is dropped",
    )
    g.set_defaults(handler=_generate)


def _run(ns: argparse.Namespace) -> None:
    from geor1.cot.synthesize import read_import, synthesize

    imported = read_import(ns.jsonl) if getattr(ns, "jsonl", None) else None
    report = synthesize(
        ns.shards,
        ns.out,
        ns.task,
        seed=ns.seed,
        tolerance_km=ns.tolerance_km,
        splits=tuple(s for s in ns.splits.split(",") if s),
        imported=imported,
        compact=ns.compact,
    )
    summary = report.as_dict()
    print(
        f"{summary['kept']} of {summary['total']} exemplars kept; dropped by reason: {json.dumps(summary['dropped'])}"
    )
    if summary.get("templates_on_real_photos"):
        print(
            "warning: template exemplars of real photos (per data set: "
            f"{json.dumps(summary['templates_on_real_photos'])}): their colour cues mean nothing there; use "
            "`geor1 cot generate` with a teacher, or `geor1 cot import`"
        )


def _generate(ns: argparse.Namespace) -> None:
    from pathlib import Path

    from geor1 import Geor1Error
    from geor1.cot.filters import FilterSettings
    from geor1.cot.generate import GenerateSettings, HFTeacher, TeacherPrompt, VLLMTeacher, generate

    prompt = TeacherPrompt.load(ns.prompt_file)
    if ns.show_prompt:
        print(f"# teacher prompt {prompt.version} ({prompt.source}, sha256 {prompt.sha256[:12]})")
        print(prompt.text)
        if ns.shards and ns.task:
            _show_first_prompt(ns, prompt)
        return
    missing = [f"--{n}" for n in ("teacher", "shards", "task", "out") if not getattr(ns, n)]
    if missing:
        raise Geor1Error(f"cot generate needs {', '.join(missing)} (or --show-prompt)")
    settings = GenerateSettings(
        task=ns.task,
        samples=ns.samples,
        temperature=ns.temperature,
        top_p=ns.top_p,
        max_new_tokens=ns.max_new_tokens,
        batch_size=ns.batch_size,
        seed=ns.seed,
        hint=not ns.no_hint,
        splits=tuple(s for s in ns.splits.split(",") if s),
        limit=ns.limit,
        filters=FilterSettings(ns.tolerance_km, ns.min_words, ns.max_words, ns.dedup_ngram, ns.dedup_threshold),
    )
    import torch

    dtype = ns.dtype or ("bfloat16" if torch.cuda.is_available() else "float32")
    teacher: HFTeacher | VLLMTeacher
    if ns.backend == "vllm":
        k = _max_images(ns.shards, ns.task, settings.splits)
        engine = {"tensor_parallel_size": ns.tensor_parallel_size} if ns.tensor_parallel_size > 1 else {}
        teacher = VLLMTeacher(ns.teacher, ns.max_new_tokens, ns.temperature, ns.top_p, ns.seed, dtype, k, engine)
    else:
        teacher = HFTeacher(ns.teacher, ns.max_new_tokens, ns.temperature, ns.top_p, dtype, ns.max_pixels)
    teacher_settings = {"backend": ns.backend, "dtype": dtype, "max_pixels": ns.max_pixels}
    report = generate(
        teacher, ns.shards, ns.out, settings, Path(ns.teacher).name, prompt, teacher_settings=teacher_settings
    )
    s = report.as_dict()
    print(
        f"{s['kept']} traces kept of {s['items_generated']} items ({s['samples']} samples; {s['items_new_this_run']} "
        f"items new in this run); skipped: {json.dumps(s['skipped'])}; dropped by reason: {json.dumps(s['dropped'])}"
    )
    print(f"wrote {ns.out} (factcheck_summary.json, exemplars.jsonl, manifest.json)")


def _max_images(shards: str, task_name: str, splits: tuple[str, ...]) -> int:
    """Images per prompt for the vLLM engine's limit: those of the first readable item (every item of a shard
    folder has as many)."""
    from geor1.data.reader import iter_raw_samples, split_shards
    from geor1.tasks import get_task

    task = get_task(task_name)
    for split in splits:
        for raw in iter_raw_samples(split_shards(shards, split)):
            try:
                return len(task.image_names(task.target_from_meta(raw["__key__"], json.loads(raw["json"]))))
            except (ValueError, KeyError):
                continue
    return 1


def _show_first_prompt(ns: argparse.Namespace, prompt) -> None:
    """Print the teacher's prompt of the first item of the first split that has one."""
    from geor1.cot.generate import _decode
    from geor1.data.reader import iter_raw_samples, split_shards
    from geor1.tasks import get_task

    task = get_task(ns.task)
    for split in (s for s in ns.splits.split(",") if s):
        for raw in iter_raw_samples(split_shards(ns.shards, split)):
            item, _, _ = _decode(raw, split, task, prompt, not ns.no_hint)
            if item is not None:
                print(f"\n# the prompt of {split}/{item.key} ({len(item.prompt.images)} images)")
                print(f"[system]\n{item.prompt.system}\n[user]\n{item.prompt.text}")
                return
