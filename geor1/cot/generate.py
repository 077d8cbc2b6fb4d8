"""`geor1 cot generate`: chain-of-thought traces written by a local teacher VLM, filtered, as SFT shards.

For every item of the source shards (pair shards for geolocation, episode shards for pairing) the teacher sees the
item's images and a prompt made of the versioned teacher prompt (`geor1/cot/prompts/teacher_v1.txt`), the task's
own question and a hint made from the metadata: the true place, or the true tile (rationalisation: the teacher must
reach the known answer from visible cues, in geor1's template, without citing the hint). With `hint=False` the
teacher answers blind and only correct traces survive the fact-check (rejection sampling, STaR-style: the teacher
can be the policy itself, for self-distillation rounds). The teacher writes N samples per item; the filters of
`geor1.cot.filters` keep at most one.

The teacher is any callable `(prompts: list[Prompt], n: int) -> list[list[str]]` (n texts per prompt):
`HFTeacher` (a geor1 `Policy` loaded from a local folder), `VLLMTeacher` (vLLM, when installed), or a stand-in.

Resuming: every item done (kept, dropped or skipped as unreadable) is appended to `<out>/generations.jsonl` as
soon as its batch is done (flushed and synced), so an interrupted run loses at most the batch in flight; a re-run
with the same settings skips the items in it. The SFT shards, `exemplars.jsonl`, `factcheck_summary.json` and the
manifest are (re)written from that journal and the source shards at the end of every run, so a resumed run ends
with the same files as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from geor1 import Geor1Error
from geor1.cot.filters import FilterSettings, Hint, NearDuplicateIndex, select_best
from geor1.data.sample import Prompt
from geor1.tasks import GeoTarget, PairingTarget, Target, Task, get_task

log = logging.getLogger(__name__)

DEFAULT_PROMPT = "teacher_v1"
JOURNAL = "generations.jsonl"
SETTINGS_FILE = "generate_settings.json"
Teacher = Callable[[list[Prompt], int], list[list[str]]]
# the settings a resumed run must share with the run it continues (the others, e.g. batch size, may change)
_RESUME_KEYS = (
    "task",
    "teacher",
    "teacher_settings",
    "prompt_version",
    "prompt_sha256",
    "hint",
    "seed",
    "sampling",
    "filters",
)


# ---------------------------------------------------------------------- the teacher's prompt
@dataclass(frozen=True)
class TeacherPrompt:
    """A teacher prompt file: its version (the file's stem), its full text and its sections (see the file's header).

    >>> p = TeacherPrompt.load()
    >>> p.version, sorted(p.sections)[:3]
    ('teacher_v1', ['blind', 'hint', 'hint:geolocate'])
    """

    version: str
    text: str
    sections: dict[str, str]
    source: str

    REQUIRED = ("system", "user", "hint", "hint:geolocate", "hint:pairing", "blind")

    @classmethod
    def load(cls, path: str | Path | None = None) -> TeacherPrompt:
        """The packaged prompt (`path` None: `teacher_v1.txt`, read with importlib.resources) or a file of one's own."""
        if path is None:
            res = resources.files("geor1.cot").joinpath(f"prompts/{DEFAULT_PROMPT}.txt")
            text, version, source = (
                res.read_text(encoding="utf-8"),
                DEFAULT_PROMPT,
                f"geor1/cot/prompts/{DEFAULT_PROMPT}.txt",
            )
        else:
            p = Path(path)
            if not p.is_file():
                raise Geor1Error(f"teacher prompt file '{p}' does not exist")
            text, version, source = p.read_text(encoding="utf-8"), p.stem, str(p)
        sections: dict[str, list[str]] = {}
        current: list[str] | None = None
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            stripped = line.strip()
            if stripped.startswith("[") and stripped.endswith("]") and " " not in stripped:
                current = sections.setdefault(stripped[1:-1], [])
            elif current is not None:
                current.append(line)
        missing = [s for s in cls.REQUIRED if s not in sections]
        if missing:
            raise Geor1Error(f"teacher prompt {source} lacks the section(s) {', '.join(f'[{m}]' for m in missing)}")
        return cls(version, text, {k: "\n".join(v).strip() for k, v in sections.items()}, source)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def _fill(self, section: str, **fields: Any) -> str:
        try:
            return self.sections[section].format_map(fields)
        except (KeyError, IndexError, ValueError) as e:
            raise Geor1Error(f"teacher prompt {self.source}: section [{section}] has a bad field ({e!r})") from None

    def hint(self, target: Target, meta: dict[str, Any]) -> Hint:
        """The hint of one item, from its target (and its metadata's city and country)."""
        if isinstance(target, PairingTarget):
            text = self._fill("hint:pairing", letter=target.letter)
            return Hint(self._fill("hint", hint=text), letter=target.letter)
        if not isinstance(target, GeoTarget):
            raise Geor1Error(f"cot generate writes pairing and geolocation traces, not {target.task!r}")
        city, country = meta.get("city"), meta.get("country")
        place = f" ({city}, {country})" if city and country else ""
        text = self._fill("hint:geolocate", lat=f"{target.lat:.4f}", lon=f"{target.lon:.4f}", place=place)
        return Hint(self._fill("hint", hint=text), lat=target.lat, lon=target.lon)

    def build(self, task: Task, target: Target, meta: dict[str, Any], hint: bool) -> tuple[Prompt, Hint | None]:
        """The teacher's prompt of one item (its images not yet attached) and the hint it contains."""
        h = self.hint(target, meta) if hint else None
        guide = h.text if h is not None else self._fill("blind")
        user = self._fill("user", question=task.prompt(target), guide=guide)
        return Prompt(user, [], system=self._fill("system")), h


# ---------------------------------------------------------------------- teachers
def _grouped(texts: list[str], n: int) -> list[list[str]]:
    return [texts[i : i + n] for i in range(0, len(texts), n)]


class HFTeacher:
    """A geor1 `Policy` loaded from a local model folder (never a hub id) as the teacher: `Policy.generate` with
    `group_size=n`, sampling at `temperature` (greedy when 0, then n must be 1), on `device` (default: the GPU when
    there is one). The whole model sits on that one device: a teacher that does not fit one GPU needs the vLLM
    backend (tensor parallelism)."""

    def __init__(
        self,
        model_dir: str | Path,
        max_new_tokens: int = 512,
        temperature: float = 0.7,
        top_p: float = 1.0,
        dtype: str = "float32",
        max_pixels: int | None = None,
        device: str | None = None,
    ) -> None:
        import torch

        from geor1.model.loading import check_model_dir
        from geor1.model.policy import Policy

        path = check_model_dir(model_dir)
        self.policy = Policy(str(path), dtype=dtype, max_pixels=max_pixels)
        self.policy.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p

    def __call__(self, prompts: list[Prompt], n: int) -> list[list[str]]:
        rollout = self.policy.generate(
            prompts,
            group_size=n,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            do_sample=self.temperature > 0,
        )
        return _grouped(rollout.texts, n)


def require_vllm_teacher() -> Any:
    """The `vllm` module, or a Geor1Error saying how to get it or to use the HF backend."""
    from geor1.model.vllm_rollout import require_vllm

    return require_vllm("cot generate --backend vllm", "--backend hf")


class VLLMTeacher:
    """A vLLM engine on a local model folder as the teacher (`SamplingParams(n=...)`; the chat template is the
    folder's processor's). The engine's `seed` seeds its sampling; `engine_kwargs` go to `vllm.LLM` (e.g.
    tensor_parallel_size=4 for a 72B teacher)."""

    def __init__(
        self,
        model_dir: str | Path,
        max_new_tokens: int = 512,
        temperature: float = 0.7,
        top_p: float = 1.0,
        seed: int = 0,
        dtype: str = "bfloat16",
        max_images: int = 1,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        from transformers import AutoProcessor, GenerationConfig

        from geor1.model.loading import check_model_dir

        vllm = require_vllm_teacher()
        path = check_model_dir(model_dir)
        self._vllm = vllm
        self.processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
        tok = self.processor.tokenizer
        eos: Any = tok.eos_token_id
        if (path / "generation_config.json").is_file():
            gc = GenerationConfig.from_pretrained(str(path), local_files_only=True)
            eos = gc.eos_token_id if gc.eos_token_id is not None else eos
        self.stop_ids = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None]
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        kwargs: dict[str, Any] = {
            "model": str(path),
            "seed": seed,
            "dtype": dtype,
            "enable_prefix_caching": True,
            "limit_mm_per_prompt": {"image": max_images},
        }
        kwargs.update(engine_kwargs or {})
        self.llm = vllm.LLM(**kwargs)

    def __call__(self, prompts: list[Prompt], n: int) -> list[list[str]]:
        requests = []
        for p in prompts:
            text = self.processor.apply_chat_template(p.messages(), tokenize=False, add_generation_prompt=True)
            request: dict[str, Any] = {"prompt": text}
            if p.images:
                request["multi_modal_data"] = {"image": [im.convert("RGB") for im in p.images]}
            requests.append(request)
        params = self._vllm.SamplingParams(
            n=n,
            max_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop_token_ids=self.stop_ids,
        )
        outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)
        tok = self.processor.tokenizer
        return [[tok.decode(list(o.token_ids), skip_special_tokens=True) for o in out.outputs] for out in outputs]


# ---------------------------------------------------------------------- settings and report
@dataclass(frozen=True)
class GenerateSettings:
    """How traces are sampled and filtered (all of it goes to the manifest)."""

    task: str
    samples: int = 4
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 512
    batch_size: int = 8
    seed: int = 0
    hint: bool = True
    splits: tuple[str, ...] = ("train", "val", "test")
    limit: int | None = None
    filters: FilterSettings = field(default_factory=FilterSettings)

    def __post_init__(self) -> None:
        get_task(self.task)  # Geor1Error for an unknown task
        if self.samples < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise Geor1Error(
                f"samples, batch_size and max_new_tokens must be >= 1, got {self.samples}, {self.batch_size}, "
                f"{self.max_new_tokens}"
            )
        if self.temperature < 0 or (self.temperature == 0 and self.samples > 1):
            raise Geor1Error(
                f"temperature must be >= 0, and > 0 for more than one sample per item (got {self.temperature} with "
                f"{self.samples} samples)"
            )
        if self.limit is not None and self.limit < 0:
            raise Geor1Error(f"limit must be >= 0, got {self.limit}")
        self.filters.window  # noqa: B018  (checks the window now)


@dataclass
class GenerationReport:
    """Counts over every item in the journal (this run's and earlier runs'); `samples == kept + sum(dropped)`."""

    items: int = 0  # items met: generated + skipped
    items_generated: int = 0
    items_new: int = 0  # generated in this run
    samples: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    factcheck_reasons: Counter = field(default_factory=Counter)
    splits: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, rec: dict[str, Any]) -> None:
        self.items += 1
        split = self.splits.setdefault(rec["split"], {"items": 0, "kept": 0})
        split["items"] += 1
        if "skipped" in rec:
            self.skipped[rec["skipped"]] += 1
            return
        self.items_generated += 1
        self.samples += len(rec["reasons"])
        for r in rec["reasons"]:
            if r != "kept":
                self.dropped[r] += 1
        self.factcheck_reasons.update(rec.get("factcheck", {}))
        if rec["chosen"] is not None:
            self.kept += 1
            split["kept"] += 1

    @property
    def kept_share(self) -> float:
        """Items kept / items generated (0 before any)."""
        return self.kept / self.items_generated if self.items_generated else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "items_generated": self.items_generated,
            "items_new_this_run": self.items_new,
            "skipped": dict(sorted(self.skipped.items())),
            "samples": self.samples,
            "kept": self.kept,
            "kept_share": round(self.kept_share, 4),
            "dropped": dict(sorted(self.dropped.items())),
            "factcheck_reasons": dict(sorted(self.factcheck_reasons.items())),
            "splits": dict(sorted(self.splits.items())),
        }


# ---------------------------------------------------------------------- the run
@dataclass
class _Item:
    split: str
    key: str
    meta: dict[str, Any]
    target: Target
    prompt: Prompt
    hint: Hint | None


def _read_journal(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """The journal's records. Its end, after the last newline, is a line cut by an interruption: with `repair` it is
    cut off the file (its item is generated again, and the next record starts on a line of its own)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        log.warning("%s: the last line is incomplete (an interrupted run); its item is generated again", path)
        if repair:
            with open(path, "r+b") as f:
                f.truncate(end)
    records = []
    for n, line in enumerate(data[:end].decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            raise Geor1Error(f"{path}:{n}: not a JSON line; the journal is damaged") from None
    return records


def _check_resume(out: Path, settings: dict[str, Any]) -> None:
    """Write the run's settings, or, when the folder holds an earlier run, refuse settings that differ."""
    path = out / SETTINGS_FILE
    if path.exists() and (out / JOURNAL).exists():
        before = json.loads(path.read_text())
        differ = [k for k in _RESUME_KEYS if before.get(k) != settings.get(k)]
        if differ:
            raise Geor1Error(
                f"{out} holds traces generated with other settings ({', '.join(differ)}: "
                f"{ {k: before.get(k) for k in differ} } then, { {k: settings.get(k) for k in differ} } now); "
                f"resume with the same settings or write to a new --out"
            )
    path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")


def _seed_batch(seed: int, items: list[_Item]) -> None:
    """Sampling seed of a batch from the run's seed and its first item: a resumed run samples as a fresh one would
    for the same batches."""
    import torch

    torch.manual_seed(zlib.crc32(f"{seed}:{items[0].split}:{items[0].key}".encode()))


def _decode(
    raw: dict[str, Any], split: str, task: Task, teacher_prompt: TeacherPrompt, hint: bool
) -> tuple[_Item | None, str | None, str | None]:
    """(item, None, None) or (None, skip reason, error message) for one raw sample."""
    from geor1.data.schema import SampleError, decode_image, validate_meta

    key = raw["__key__"]
    try:
        meta = validate_meta(key, json.loads(raw["json"]))
        target = task.target_from_meta(key, meta)
    except (SampleError, KeyError, ValueError, TypeError) as e:
        return None, "corrupt_sample", str(e)
    images = []
    for name in task.image_names(target):
        if name not in raw:
            return None, "missing_image", f"sample '{key}': field '{name}': missing"
        try:
            images.append(decode_image(key, name, raw[name]))
        except SampleError as e:
            return None, "unreadable_image", str(e)
    prompt, h = teacher_prompt.build(task, target, meta, hint)
    prompt.images = images
    return _Item(split, key, meta, target, prompt, h), None, None


def _items(
    shards: Path, settings: GenerateSettings, done: set[tuple[str, str]], task: Task, teacher_prompt: TeacherPrompt
) -> Iterator[tuple[_Item | None, dict[str, Any] | None]]:
    """(item to generate, None) or (None, journal record of a skipped sample), in shard order, done keys left out."""
    from geor1.data.reader import iter_raw_samples, split_shards

    for split in settings.splits:
        for raw in iter_raw_samples(split_shards(shards, split)):
            if (split, raw["__key__"]) in done:
                continue
            item, reason, error = _decode(raw, split, task, teacher_prompt, settings.hint)
            if item is None:
                log.warning("cot generate: skipping %s/%s (%s)", split, raw["__key__"], error)
                yield None, {"split": split, "key": raw["__key__"], "skipped": reason, "error": error}
            else:
                yield item, None


def _total_items(shards: Path, splits: tuple[str, ...]) -> int | None:
    """The number of source samples from the source manifest (None without one: the bar then counts up)."""
    manifest = shards / "manifest.json"
    if not manifest.exists():
        return None
    info = json.loads(manifest.read_text()).get("splits", {})
    counts = [info.get(s, {}).get("samples") for s in splits if s in info]
    return sum(counts) if counts and all(isinstance(c, int) for c in counts) else None


def generate(
    teacher: Teacher,
    shards: str | Path,
    out: str | Path,
    settings: GenerateSettings,
    teacher_name: str = "teacher",
    teacher_prompt: TeacherPrompt | None = None,
    progress: bool | None = None,
    teacher_settings: dict[str, Any] | None = None,
) -> GenerationReport:
    """Generate, filter and write traces; see the module docstring. Returns the counts over the whole journal.

    `teacher_name` is recorded in the manifest (the teacher's folder name), and `teacher_settings` (JSON values:
    the backend, the weights' dtype, ..., whatever changes what the teacher writes) beside it: a resumed run must
    share both; `progress` None shows the bar on a terminal only."""
    from tqdm import tqdm

    shards, out = Path(shards), Path(out)
    if not shards.is_dir():
        raise Geor1Error(f"source shard folder '{shards}' does not exist")
    task = get_task(settings.task)
    tp = teacher_prompt or TeacherPrompt.load()
    out.mkdir(parents=True, exist_ok=True)
    recorded = {
        "task": settings.task,
        "teacher": teacher_name,
        "teacher_settings": dict(teacher_settings or {}),
        "prompt_version": tp.version,
        "prompt_sha256": tp.sha256,
        "hint": settings.hint,
        "seed": settings.seed,
        "sampling": {
            "samples_per_item": settings.samples,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "max_new_tokens": settings.max_new_tokens,
        },
        "filters": asdict(settings.filters),
    }
    _check_resume(out, recorded)
    journal_path = out / JOURNAL
    records = _read_journal(journal_path, repair=True)
    done = {(r["split"], r["key"]) for r in records}
    report = GenerationReport()
    kept_index = NearDuplicateIndex(settings.filters.dedup_ngram, settings.filters.dedup_threshold)
    for r in records:
        report.add(r)
        if r.get("chosen"):
            kept_index.add(r["chosen"])
    if records:
        log.info("cot generate: resuming, %d items already done in %s", len(records), journal_path)

    total = _total_items(shards, settings.splits)
    if settings.limit is not None and total is not None:
        total = min(total, len(done) + settings.limit)
    bar = tqdm(
        total=total,
        initial=len(done),
        desc=f"cot generate {settings.task}",
        unit="item",
        disable=None if progress is None else not progress,
        dynamic_ncols=True,
    )
    with open(journal_path, "a", encoding="utf-8") as journal:

        def commit(recs: list[dict[str, Any]]) -> None:
            for rec in recs:
                journal.write(json.dumps(rec, ensure_ascii=False) + "\n")
                report.add(rec)
            journal.flush()
            os.fsync(journal.fileno())
            bar.update(len(recs))
            bar.set_postfix_str(f"kept {report.kept}/{report.items_generated} ({report.kept_share:.0%})")

        batch: list[_Item] = []
        for item, skipped in _items(shards, settings, done, task, tp):
            if settings.limit is not None and report.items_new >= settings.limit:
                break
            if skipped is not None:
                commit([skipped])
                continue
            assert item is not None
            batch.append(item)
            report.items_new += 1
            if len(batch) == settings.batch_size:
                commit(_run_batch(teacher, batch, settings, kept_index))
                batch = []
        if batch:
            commit(_run_batch(teacher, batch, settings, kept_index))
    bar.close()
    records = _read_journal(journal_path)
    _write_outputs(shards, out, settings, task, records, report, recorded)
    return report


def _run_batch(
    teacher: Teacher, batch: list[_Item], settings: GenerateSettings, kept: NearDuplicateIndex
) -> list[dict[str, Any]]:
    """The teacher's samples for a batch, filtered -> one journal record per item."""
    _seed_batch(settings.seed, batch)
    texts = teacher([it.prompt for it in batch], settings.samples)
    if len(texts) != len(batch) or any(len(t) != settings.samples for t in texts):
        raise Geor1Error(
            f"the teacher returned {[len(t) for t in texts]} samples for {len(batch)} prompts; expected "
            f"{settings.samples} per prompt"
        )
    recs = []
    for item, samples in zip(batch, texts, strict=True):
        result = select_best(samples, item.target, item.hint, settings.filters, kept)
        recs.append(
            {
                "split": item.split,
                "key": item.key,
                "chosen": result.chosen,
                "reasons": result.reasons,
                "factcheck": dict(result.factcheck),
                "samples": list(samples),
            }
        )
    return recs


def _write_outputs(
    shards: Path,
    out: Path,
    settings: GenerateSettings,
    task: Task,
    records: list[dict[str, Any]],
    report: GenerationReport,
    recorded: dict[str, Any],
) -> None:
    """SFT shards of the kept traces (the source sample's images and JSON + task, the task's prompt, the response),
    exemplars.jsonl, factcheck_summary.json and manifest.json, all from the journal."""
    from geor1.data.reader import iter_raw_samples, split_shards
    from geor1.data.shards import ShardWriter, write_manifest

    chosen = {(r["split"], r["key"]): r for r in records if r.get("chosen")}
    stats = {}
    with open(out / "exemplars.jsonl", "w", encoding="utf-8") as jl:
        for split in settings.splits:
            for old in out.glob(f"{split}-*.tar"):
                old.unlink()  # shards of an earlier run of this folder: rewritten in full below
            with ShardWriter(out, split) as writer:
                for raw in iter_raw_samples(split_shards(shards, split)):
                    rec = chosen.get((split, raw["__key__"]))
                    if rec is None:
                        continue
                    key = raw["__key__"]
                    meta = json.loads(raw["json"])
                    target = task.target_from_meta(key, meta)
                    names = task.image_names(target)
                    record = {**meta, "task": task.name, "prompt": task.prompt(target), "response": rec["chosen"]}
                    writer.write_files(key, {n: raw[n] for n in names}, record)
                    jl.write(
                        json.dumps(
                            {
                                "key": key,
                                "split": split,
                                "task": task.name,
                                "response": rec["chosen"],
                                "reasons": rec["reasons"],
                            },
                            ensure_ascii=False,
                        )
                        + "\n"
                    )
            stats[split] = writer.close()
    write_manifest(
        out,
        stats,
        f"cot-teacher-{task.name}",
        "derived from the source shards (their licence applies) and the teacher's outputs (its licence applies)",
        extra={**recorded, "source_shards": str(shards)},
    )
    summary = {
        **{k: recorded[k] for k in ("task", "teacher", "prompt_version", "hint")},
        **report.as_dict(),
        "sampling": recorded["sampling"],
        "filters": recorded["filters"],
    }
    (out / "factcheck_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
