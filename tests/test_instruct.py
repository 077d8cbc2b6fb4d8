"""The describe task and the instruction data built on GeoWorld (the demo's instruction-following stage)."""

from __future__ import annotations

import json

import pytest

from geor1 import Geor1Error
from geor1.cot.cues import cover_fractions, ground_below_horizon
from geor1.data.instruct import build_instruct, cover_question, more_question
from geor1.data.schema import SampleError
from geor1.tasks import DescribeTarget, DescribeTask, TargetError, get_task, task_of

COVER = {"water": 0.0, "snow": 0.0, "vegetation": 0.0, "bare": 0.0, "other": 0.0}


def _cover(**shares: float) -> dict[str, float]:
    return {**COVER, **shares}


def test_describe_targets_are_validated_and_round_trip_through_shard_json():
    task = get_task("describe")
    for target in (DescribeTarget("cover", "snow"), DescribeTarget("more", "B", cover="water", n_images=2)):
        assert task.target_from_meta("k", task.target_to_meta(target)) == target
        assert task_of(target) is task
        assert task.prompt(target).count("<image>") == len(task.image_names(target)) == target.n_images
    bad = [
        (dict(question="count", answer="A"), "question"),
        (dict(question="cover", answer="sand"), "answer"),
        (dict(question="cover", answer="snow", cover="water"), "cover"),
        (dict(question="more", answer="C", cover="water", n_images=2), "answer"),
        (dict(question="more", answer="A", cover="sky", n_images=2), "cover"),
        (dict(question="more", answer="A", cover="water", n_images=5), "images"),
    ]
    for kwargs, field in bad:
        with pytest.raises(TargetError) as e:
            DescribeTarget(**kwargs)
        assert e.value.field == field
    with pytest.raises(SampleError, match="'answer'"):
        task.target_from_meta("k", {"question": "cover"})


def test_describe_answers_are_read_and_scored():
    task = DescribeTask()
    cover, more = DescribeTarget("cover", "water"), DescribeTarget("more", "A", cover="bare", n_images=2)
    assert task.is_correct("<think>blue</think><answer> Water.</answer>", cover)
    assert not task.is_correct("<answer>water or snow</answer>", cover)
    assert not task.is_correct("water", cover)  # no answer tag
    assert task.is_correct("<think>x</think><answer>A</answer>", more)
    assert not task.is_correct("<think>x</think><answer>B</answer>", more)
    rows = [
        {"key": "a", "text": "<think>x</think><answer>water</answer>", "tokens": 4, "target": cover},
        {"key": "b", "text": "<answer>B</answer>", "tokens": 2, "target": more},
    ]
    metrics, preds = task.score(rows)
    assert metrics["describe_acc"] == 0.5 and metrics["question_acc"] == {"cover": 1.0, "more": 0.0}
    assert metrics["format_rate"] == 0.5 and [p["correct"] for p in preds] == [1, 0]


def test_questions_are_asked_only_when_the_pixels_answer_them_clearly():
    target, response = cover_question(_cover(water=0.6, vegetation=0.3, bare=0.1), margin=0.1)
    assert target == DescribeTarget("cover", "water") and response.endswith("<answer>water</answer>")
    assert cover_question(_cover(water=0.45, vegetation=0.4, bare=0.15), margin=0.1) is None
    target, response = more_question([_cover(bare=0.7, other=0.3), _cover(vegetation=0.9, bare=0.1)], 0.15)
    assert (target.cover, target.answer) == ("vegetation", "B")  # the largest lead: vegetation 0.9 vs 0.0
    assert (
        response
        == "<think>A: bare 70%, dark 30%, vegetation 0%. B: vegetation 90%, bare 10%.</think><answer>B</answer>"
    )
    assert more_question([_cover(water=0.5, other=0.5), _cover(water=0.4, other=0.6)], 0.15) is None


def test_instruct_shards_hold_generic_questions_answered_from_the_pixels(tmp_path):
    from geor1.data.chat import ChatShardDataModule
    from geor1.data.geoworld import build_geoworld

    world = build_geoworld(tmp_path / "gw", num_train=16, num_val=2, num_test=2, seed=3)
    report = build_instruct(world, tmp_path / "describe", seed=0)
    places = report.total
    assert report.kept == sum(report.questions.values()) > 0
    assert report.questions["cover_ground"] + report.not_asked["cover_ground"] == places  # every place asked or counted
    summary = json.loads((tmp_path / "describe" / "instruct_summary.json").read_text())
    assert summary["kept"] == report.kept
    dm = ChatShardDataModule(str(tmp_path / "describe"), batch_size=4, val_split="")
    dm.setup("fit")
    task = DescribeTask()
    seen = 0
    for batch in dm.train_dataloader():
        for s in batch:
            seen += 1
            assert s.task == "describe" and task.is_correct(s.response, s.target), s.key
            assert "lat" not in s.meta and "°" not in s.response and "<think>" in s.response  # nothing geospatial
            assert len(s.prompt.images) == s.target.n_images
            if s.key.endswith("_cover_ground"):  # the answer is the ground's largest cover below the horizon
                cover = cover_fractions(ground_below_horizon(s.prompt.images[0]))
                assert s.target.answer == {"other": "dark"}.get(max(cover, key=cover.get), max(cover, key=cover.get))
    manifest = json.loads((tmp_path / "describe" / "manifest.json").read_text())
    assert seen == manifest["splits"]["train"]["samples"] and seen > 16
    assert sum(v["samples"] for v in manifest["splits"].values()) == report.kept
    with pytest.raises(Geor1Error, match="max_images"):
        build_instruct(world, tmp_path / "x", max_images=5)
