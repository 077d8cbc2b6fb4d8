"""`geor1 cot generate`: teacher-written traces through the filters (each bad sample dropped and counted under its
reason), SFT shards ChatShardDataModule reads, resuming by key, unreadable images, blind rejection sampling, the
tiny model as the teacher end to end, and the optional vLLM teacher."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from geor1 import Geor1Error
from geor1.cot.filters import (
    FilterSettings,
    Hint,
    NearDuplicateIndex,
    hint_leak,
    jaccard,
    ngrams,
    select_best,
)
from geor1.cot.generate import GenerateSettings, TeacherPrompt, generate
from geor1.tasks import GeoTarget, PairingTarget, get_task

_WORDS = (
    "pine oak birch palm cactus grass moss fern shrub heath dune cliff ridge valley river lake marsh delta fjord "
    "glacier plateau mesa canyon steppe tundra savanna jungle meadow orchard vineyard terrace basalt granite "
    "limestone sandstone clay loam gravel asphalt cobble brick stucco timber slate thatch tile adobe concrete"
)
VOCAB = _WORDS.split(" ")
TARGET = GeoTarget(-33.9249, 18.4241, "Cape Town", "ZA")
HINT = Hint("The true location of this photo is -33.9249, 18.4241 (Cape Town, ZA).", -33.9249, 18.4241)
_HINT_RE = re.compile(r"true location of this photo is (-?\d+\.\d+), (-?\d+\.\d+)(?: \(([^,]+), (\w+)\))?\.")


def reasoning(seed: int, n: int = 30) -> str:
    """n words drawn from VOCAB by `seed` (different seeds: no shared 4-grams to speak of)."""
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(VOCAB, size=n))


def trace(think: str, lat: float | str, lon: float | str, city: str | None, cc: str | None) -> str:
    place = f" ({city}, {cc})" if city and cc else ""
    return f"<think>{think}</think><answer>{lat}, {lon}{place}</answer>"


def test_each_filter_drops_what_it_should():
    good = trace(reasoning(1), -33.92, 18.42, "Cape Town", "ZA")
    samples = [
        trace(reasoning(2, 40), -33.92, 18.42, "Cape Town", "ZA"),  # valid, longer: not the best of N
        trace(reasoning(3), -33.92, 18.42, "Atlantis", "ZA"),  # wrong city
        trace(reasoning(4) + " as the hint says", -33.92, 18.42, "Cape Town", "ZA"),  # says it was told
        trace(reasoning(5) + " near -33.92 S", -33.92, 18.42, "Cape Town", "ZA"),  # quotes the hint's latitude
        good.replace("</think>", ""),  # malformed tags
        trace(reasoning(6, 5), -33.92, 18.42, "Cape Town", "ZA"),  # too short
        trace(reasoning(7, 500), -33.92, 18.42, "Cape Town", "ZA"),  # too long
        good,  # valid, the shortest: kept
        good,  # the same again: valid but not the first of the shortest
        trace(reasoning(8), 33.92, 18.42, "Cape Town", "ZA"),  # wrong coordinates
    ]
    kept = NearDuplicateIndex()
    result = select_best(samples, TARGET, HINT, FilterSettings(), kept)
    assert result.chosen == good and len(kept) == 1
    assert result.reasons == [
        "not_best_of_n",
        "wrong_city",
        "hint_leak",
        "hint_leak",
        "format",
        "too_short",
        "too_long",
        "kept",
        "not_best_of_n",
        "coordinates_off",
    ]
    assert result.factcheck["wrong_city"] == 1 and result.factcheck["format"] == 1
    # the next item: its best trace is a near duplicate of the one kept, so its other valid trace is kept instead
    dup = trace(reasoning(1) + " moss", -33.92, 18.42, "Cape Town", "ZA")
    other = trace(reasoning(9, 35), -33.92, 18.42, "Cape Town", "ZA")
    result = select_best([other, dup], TARGET, HINT, FilterSettings(), kept)
    assert result.reasons == ["kept", "near_duplicate"] and result.chosen == other
    # without a hint (blind sampling) nothing is a leak; a pairing target is checked by its letter
    assert select_best([samples[2]], TARGET, None, FilterSettings(), NearDuplicateIndex()).reasons == ["kept"]
    ok = f"<think>{reasoning(10)}</think><answer>B</answer>"
    wrong = ok.replace("<answer>B", "<answer>A")
    told = ok.replace("</think>", " I was told it is B.</think>")
    pair = select_best([wrong, told, ok], PairingTarget(3, 1), Hint("x", letter="B"), FilterSettings(), kept)
    assert pair.reasons == ["wrong_letter", "hint_leak", "kept"]


@pytest.mark.parametrize(
    "think, leaks",
    [
        ("Table Mountain above a bay.", False),
        ("around -33.92, 18.42 by the bay", True),  # rounded
        ("latitude 33.9249 south", True),
        ("longitude 18.4 east", False),  # one decimal is not a quote
        ("at 18.43 degrees", False),  # neither rounded nor cut
        ("at 18.42 degrees", True),  # cut (and rounded)
        ("My estimate is 12.34, 56.78.", False),
        ("Given the hint, Cape Town.", True),
        ("The correct answer is Cape Town.", True),
        ("Given the dry slopes, the Cape.", False),  # "given" alone is ordinary English
        ("The true location of this photo is Cape Town.", True),  # the hint's own words
        ("near 33°55′S, 18°25′E by the bay", True),  # degrees and minutes, cut
        ("at 33° 55' 30\" S", True),  # degrees, minutes and seconds, rounded
        ("at 33°55.5′ S", True),  # decimal minutes, rounded
        ("at 33°56′ S", False),  # neither rounded nor cut
        ("at 33°54′ S, 18°27′ E", False),
    ],
)
def test_hint_leak(think, leaks):
    assert hint_leak(f"<think>{think}</think><answer>-33.9, 18.4</answer>", HINT) is leaks


def test_near_duplicate_index_equals_brute_force_jaccard():
    rng = np.random.default_rng(0)
    base = [reasoning(s, 40) for s in range(6)]
    texts = []
    for b in base:  # each base text and copies of it with a few words changed
        for _ in range(4):
            w = b.split()
            for j in rng.choice(len(w), size=int(rng.integers(0, 4)), replace=False):
                w[j] = str(rng.choice(VOCAB))
            texts.append(f"<think>{' '.join(w)}</think><answer>B</answer>")
    dropped = 0
    for n, threshold in itertools.product((2, 4), (0.5, 0.8)):
        index = NearDuplicateIndex(n, threshold)
        kept: list[str] = []
        for t in texts:
            brute = any(jaccard(ngrams(t, n), ngrams(k, n)) >= threshold for k in kept)
            assert index.is_near_duplicate(t) is brute
            if not brute:
                index.add(t)
                kept.append(t)
        assert len(kept) >= 6
        dropped += len(texts) - len(kept)
    assert dropped > 0  # both outcomes were compared
    with pytest.raises(Geor1Error, match="threshold"):
        NearDuplicateIndex(4, 0.0)


def test_the_teacher_prompt_is_packaged_versioned_and_shown(tmp_path):
    p = TeacherPrompt.load()
    assert p.version == "teacher_v1" and "<think></think>" in p.sections["system"]
    prompt, hint = p.build(get_task("geolocate"), TARGET, {"city": "Cape Town", "country": "ZA"}, hint=True)
    assert prompt.text.startswith("<image>\nWhere on Earth") and "-33.9249, 18.4241 (Cape Town, ZA)" in prompt.text
    assert hint is not None and hint.lat == TARGET.lat and prompt.system == p.sections["system"]
    bad = tmp_path / "mine_v2.txt"
    bad.write_text("[system]\nx\n[user]\n{question}\n")
    with pytest.raises(Geor1Error, match=r"lacks the section\(s\) \[hint\]"):
        TeacherPrompt.load(bad)
    res = run_cli("cot", "generate", "--show-prompt")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0].startswith("# teacher prompt teacher_v1") and p.text in res.stdout


# ---------------------------------------------------------------------- runs on GeoWorld with a stand-in teacher
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from geor1.data.geoworld import build_geoworld

    return build_geoworld(tmp_path_factory.mktemp("gw"), num_train=5, num_val=1, num_test=1, seed=3)


class StandIn:
    """A teacher that reads the hint in each prompt and returns, per prompt, chosen texts: a good trace (its words
    drawn from the place), a wrong city, a leaked hint, malformed tags, too short, and a copy of the good one."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, prompts, n):
        self.calls.append(len(prompts))
        out = []
        for p in prompts:
            assert len(p.images) == 1 and p.system and "<image>" in p.text
            lat, lon, city, cc = _HINT_RE.search(p.text).groups()
            good = trace(reasoning(zlib.crc32(f"{lat},{lon}".encode())), lat, lon, city, cc)
            out.append(
                [
                    good,
                    trace(reasoning(1), lat, lon, "Atlantis", cc),
                    trace(reasoning(2) + " hint", lat, lon, city, cc),
                    good.replace("<answer>", ""),
                    trace("too short", lat, lon, city, cc),
                    good,
                ][:n]
            )
        return out


def test_generate_writes_sft_shards_and_counts_every_drop(world, tmp_path):
    from geor1.data.chat import ChatShardDataModule
    from geor1.tasks.geolocation import QUESTION

    teacher = StandIn()
    settings = GenerateSettings(task="geolocate", samples=6, batch_size=2, seed=5)
    report = generate(teacher, world, tmp_path / "out", settings, teacher_name="Qwen2.5-VL-7B-Instruct")
    assert teacher.calls == [2, 2, 2, 1]  # 7 items (train, val, test in order) in batches of 2
    summary = json.loads((tmp_path / "out" / "factcheck_summary.json").read_text())
    assert summary["items"] == 7 and summary["samples"] == 42 and summary["kept"] == 7
    assert summary["dropped"] == {"format": 7, "hint_leak": 7, "not_best_of_n": 7, "too_short": 7, "wrong_city": 7}
    assert summary["samples"] == summary["kept"] + sum(summary["dropped"].values())
    assert summary["kept_share"] == 1.0 and report.kept == 7
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["teacher"] == "Qwen2.5-VL-7B-Instruct" and manifest["prompt_version"] == "teacher_v1"
    assert manifest["sampling"] == {"samples_per_item": 6, "temperature": 0.7, "top_p": 1.0, "max_new_tokens": 512}
    assert manifest["seed"] == 5 and manifest["hint"] is True and manifest["splits"]["train"]["samples"] == 5
    exemplars = [json.loads(x) for x in (tmp_path / "out" / "exemplars.jsonl").read_text().splitlines()]
    assert len(exemplars) == 7 and all(e["reasons"][0] == "kept" for e in exemplars)
    dm = ChatShardDataModule(str(tmp_path / "out"), batch_size=5, shuffle_buffer=0)
    batch = next(iter(dm.train_dataloader()))
    assert len(batch) == 5
    for s in batch:  # the task's own prompt (never the teacher's, with its hint), the kept trace, the target
        assert s.prompt.text == "<image>\n" + QUESTION and len(s.prompt.images) == 1
        assert s.response.startswith("<think>") and "Atlantis" not in s.response
        assert s.meta["task"] == "geolocate" and s.target.lat == s.meta["lat"]


def test_a_rerun_skips_done_items_and_ends_as_one_run_would(world, tmp_path):
    settings = GenerateSettings(task="geolocate", samples=2, batch_size=2)
    one = StandIn()
    generate(one, world, tmp_path / "whole", settings)
    first, second = StandIn(), StandIn()
    part = generate(
        first, world, tmp_path / "part", GenerateSettings(task="geolocate", samples=2, batch_size=2, limit=3)
    )
    assert part.items_new == 3 and sum(first.calls) == 3
    rest = generate(second, world, tmp_path / "part", GenerateSettings(task="geolocate", samples=2, batch_size=3))
    assert sum(second.calls) == 4 and rest.items_new == 4 and rest.items == 7  # only the items not done
    keys = [json.loads(x)["key"] for x in (tmp_path / "part" / "generations.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 7
    for name in ("exemplars.jsonl", "train-000000.tar"):
        assert (tmp_path / "part" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    # a third run has nothing left to do; other sampling settings in the same folder are refused
    third = StandIn()
    generate(third, world, tmp_path / "part", settings)
    assert third.calls == []
    with pytest.raises(Geor1Error, match=r"other settings.*sampling"):
        generate(StandIn(), world, tmp_path / "part", GenerateSettings(task="geolocate", samples=2, temperature=1.0))
    # so is the same teacher loaded otherwise (another backend or dtype changes what it writes)
    hf32 = {"backend": "hf", "dtype": "float32", "max_pixels": None}
    generate(StandIn(), world, tmp_path / "tsettings", settings, teacher_settings=hf32)
    with pytest.raises(Geor1Error, match=r"other settings.*teacher_settings"):
        generate(StandIn(), world, tmp_path / "tsettings", settings, teacher_settings={**hf32, "dtype": "bfloat16"})
    # a run cut in the middle of writing a journal line: that item is generated again
    journal = tmp_path / "part" / "generations.jsonl"
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    fourth = StandIn()
    generate(fourth, world, tmp_path / "part", settings)
    assert sum(fourth.calls) == 1
    fifth = StandIn()
    report = generate(fifth, world, tmp_path / "part", settings)
    assert fifth.calls == [] and report.items == 7
    assert (tmp_path / "part" / "exemplars.jsonl").read_bytes() == (tmp_path / "whole" / "exemplars.jsonl").read_bytes()


def test_an_unreadable_image_is_skipped_and_counted(world, tmp_path):
    from geor1.data.reader import iter_raw_samples, split_shards
    from geor1.data.shards import ShardWriter, write_manifest

    src = tmp_path / "src"
    with ShardWriter(src, "train") as w:
        for i, raw in enumerate(iter_raw_samples(split_shards(world, "train"))):
            ground = b"\xff\xd8 not a jpeg" if i == 1 else raw["ground.jpg"]
            w.write_files(raw["__key__"], {"ground.jpg": ground}, json.loads(raw["json"]))
        stats = w.close()
    write_manifest(src, {"train": stats}, "test", "test")
    teacher = StandIn()
    report = generate(teacher, src, tmp_path / "out", GenerateSettings(task="geolocate", samples=1, splits=("train",)))
    assert report.skipped == {"unreadable_image": 1} and report.items == 5 and report.kept == 4
    assert sum(teacher.calls) == 4
    again = StandIn()
    generate(again, src, tmp_path / "out", GenerateSettings(task="geolocate", samples=1, splits=("train",)))
    assert again.calls == []  # the unreadable sample is done too (and still counted)
    summary = json.loads((tmp_path / "out" / "factcheck_summary.json").read_text())
    assert summary["skipped"] == {"unreadable_image": 1} and summary["kept"] == 4


def test_no_hint_keeps_only_correct_blind_answers(world, tmp_path):
    from geor1.data.reader import iter_raw_samples, split_shards

    metas = [json.loads(r["json"]) for r in iter_raw_samples(split_shards(world, "train"))]
    seen: list[str] = []

    def blind(prompts, n):  # every prompt gets one guess per train place: exactly one of them is right
        seen.extend(p.text for p in prompts)
        return [
            [trace(reasoning(100 * k + j), m["lat"], m["lon"], None, None) for j, m in enumerate(metas)]
            for k, _ in enumerate(prompts, start=len(seen))
        ]

    settings = GenerateSettings(task="geolocate", samples=len(metas), hint=False, splits=("train",))
    report = generate(blind, world, tmp_path / "out", settings)
    assert all("true location" not in t and "alone" in t for t in seen)  # no hint given
    assert report.kept == len(metas) and report.dropped == {"coordinates_off": len(metas) * (len(metas) - 1)}
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["hint"] is False


def test_pairing_traces_from_a_standin_teacher(world, tmp_path):
    from conftest import random_episodes

    episodes = random_episodes(world, tmp_path / "ep")

    def teacher(prompts, n):
        out = []
        for i, p in enumerate(prompts):
            assert len(p.images) == 3 and p.text.startswith("Ground view: <image>")
            letter = re.search(r"The true tile is candidate ([A-Z])\.", p.text).group(1)
            wrong = "A" if letter != "A" else "B"
            out.append([f"<think>{reasoning(i + 20 * len(out))}</think><answer>{x}</answer>" for x in (wrong, letter)])
        return out

    report = generate(
        teacher, episodes, tmp_path / "out", GenerateSettings(task="pairing", samples=2, splits=("train",))
    )
    assert report.items_generated == report.kept == 5 and report.dropped == {"wrong_letter": 5}


# ---------------------------------------------------------------------- real teachers
def test_the_tiny_model_as_teacher_end_to_end(world, tmp_path, capsys):
    from geor1.cli import main
    from geor1.model.tiny import save_tiny_checkpoint

    model = save_tiny_checkpoint(tmp_path / "tiny-teacher")  # what `geor1 model tiny --out` writes
    out = tmp_path / "out"
    args = [
        "cot",
        "generate",
        "--teacher",
        str(model),
        "--shards",
        str(world),
        "--task",
        "geolocate",
        "--out",
        str(out),
        "--samples",
        "2",
        "--max-new-tokens",
        "6",
        "--batch-size",
        "3",
        "--splits",
        "train,val",
    ]
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "factcheck_summary.json").read_text())
    assert summary["items"] == summary["items_generated"] == 6 and summary["samples"] == 12
    assert summary["samples"] == summary["kept"] + sum(summary["dropped"].values())
    assert summary["dropped"].get("format", 0) >= 11  # a random tiny model writes no well-formed trace
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["teacher"] == "tiny-teacher" and manifest["sampling"]["max_new_tokens"] == 6
    assert "6 items" in res.stdout or "of 6 items" in res.stdout
    capsys.readouterr()
    main(args)  # the re-run (in this process) generates nothing
    assert "0 items new in this run" in capsys.readouterr().out


def test_the_vllm_teacher_is_optional_and_runs_on_the_standin_engine(monkeypatch, tmp_path):
    import importlib.util

    from geor1.cot.generate import VLLMTeacher, require_vllm_teacher
    from geor1.data.sample import Prompt
    from geor1.model.tiny import save_tiny_checkpoint

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(Geor1Error, match=r"pip install vllm.*--backend hf"):
        require_vllm_teacher()
    monkeypatch.undo()
    fake = Path(__file__).parent / "fake_vllm"
    monkeypatch.syspath_prepend(str(fake))
    sys.modules.pop("vllm", None)
    try:
        model = save_tiny_checkpoint(tmp_path / "m")
        teacher = VLLMTeacher(model, max_new_tokens=5, temperature=1.0, seed=0, dtype="float32", max_images=1)
        from PIL import Image

        prompts = [Prompt("<image>\nWhere?", [Image.new("RGB", (56, 56), (0, 90, 0))], system="s")] * 2
        texts = teacher(prompts, 3)
        assert len(texts) == 2 and all(len(t) == 3 and all(isinstance(x, str) for x in t) for t in texts)
        assert teacher.llm.kwargs["limit_mm_per_prompt"] == {"image": 1}
    finally:
        sys.modules.pop("vllm", None)
        shutil.rmtree(tmp_path / "m", ignore_errors=True)


def test_the_docs_show_the_packaged_prompt_in_full():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text(encoding="utf-8")
    section = docs.split("## Chain-of-thought from a teacher VLM", 1)[1]
    assert "```text\n" + TeacherPrompt.load().text + "```" in section


def test_show_prompt_prints_the_first_items_prompt(world, capsys):
    from geor1.cli import main

    main(["cot", "generate", "--show-prompt", "--shards", str(world), "--task", "geolocate", "--splits", "val"])
    out = capsys.readouterr().out
    assert "# the prompt of val/" in out and "(1 images)" in out and "The true location of this photo is" in out
    main(["cot", "generate", "--show-prompt", "--shards", str(world), "--task", "geolocate", "--no-hint"])
    out = capsys.readouterr().out.split("# the prompt of ", 1)[1]
    assert "true location" not in out and "alone" in out
