"""Tasks (`geor1.tasks`): typed targets read from and written to the shard JSON (existing shards still read),
bad targets named by key and field, correctness and rewards per task on hand-made completions, evaluation rows, and
the decoder that names the task of every sample."""

from __future__ import annotations

import json
import math

import pytest
from PIL import Image

from geor1 import Geor1Error
from geor1.data.chat import ChatDecoder
from geor1.data.reader import iter_raw_samples, split_shards
from geor1.data.schema import SampleError, encode_jpeg
from geor1.data.shards import ShardWriter
from geor1.eval.runners import score_geolocate, score_pairing
from geor1.tasks import TASK_NAMES, GeolocationTask, GeoTarget, PairingTarget, get_task, is_well_formed, task_of

PAIRING, GEO = get_task("pairing"), get_task("geolocate")
PARIS = GeoTarget(48.8566, 2.3522, "Paris", "FR")
# an episode's JSON as geor1.retrieval.mining writes it
EPISODE = {
    "lat": 48.8566,
    "lon": 2.3522,
    "city": "Paris",
    "country": "FR",
    "split": "test",
    "source_key": "p1",
    "k": 3,
    "answer": 2,
    "answer_letter": "C",
    "candidates": [{"key": f"c{i}", "lat": 0.0, "lon": 0.0, "distance_km": 1.0, "similarity": None} for i in range(3)],
    "mining": {"k": 3},
}
# a pair shard's JSON as GeoWorld and the converters write it
PLACE = {"lat": -33.8688, "lon": 151.2093, "city": "Sydney", "country": "AU", "source": "geoworld", "split": "test"}


def test_names_and_lookup():
    assert TASK_NAMES == ("pairing", "geolocate", "describe")
    assert PAIRING.name == "pairing" and GEO.name == "geolocate"
    with pytest.raises(Geor1Error, match=r"unknown task 'pairs'.*pairing, geolocate"):
        get_task("pairs")
    assert task_of(PairingTarget(2, 0)) is PAIRING and task_of(PARIS) is GEO
    assert task_of(PARIS, correct_km=5.0) == GeolocationTask(correct_km=5.0)
    assert task_of(PairingTarget(2, 0), correct_km=5.0) is PAIRING  # a geolocation setting does not concern pairing
    with pytest.raises(Geor1Error, match="not a task target"):
        task_of({"k": 2})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "target",
    [PairingTarget(2, 1), PairingTarget(26, 25), PARIS, GeoTarget(-90, 180), GeoTarget(0.5, -0.5, city="Ushuaia")],
)
def test_targets_round_trip_through_the_shard_json(target):
    task = task_of(target)
    meta = task.target_to_meta(target)
    assert json.loads(json.dumps(meta)) == meta
    assert task.target_from_meta("k1", meta) == target


def test_existing_shard_json_still_reads():
    assert PAIRING.target_from_meta("e1", EPISODE) == PairingTarget(3, 2)
    assert PAIRING.target_to_meta(PairingTarget(3, 2)).items() <= EPISODE.items()  # writers write the same keys
    assert PAIRING.target_from_meta("e1", {k: v for k, v in EPISODE.items() if k != "answer_letter"}).letter == "C"
    assert GEO.target_from_meta("g1", PLACE) == GeoTarget(-33.8688, 151.2093, "Sydney", "AU")
    assert GEO.target_to_meta(GEO.target_from_meta("g1", PLACE)).items() <= PLACE.items()
    assert GEO.target_from_meta("e1", EPISODE) == PARIS  # an episode's query place, for geolocation


@pytest.mark.parametrize(
    "task, meta, field",
    [
        ("pairing", {"answer": 0}, "k"),
        ("pairing", {"k": 3}, "answer"),
        ("pairing", {"k": 1, "answer": 0}, "k"),
        ("pairing", {"k": 27, "answer": 0}, "k"),
        ("pairing", {"k": "3", "answer": 0}, "k"),
        ("pairing", {"k": 3, "answer": 3}, "answer"),
        ("pairing", {"k": 3, "answer": True}, "answer"),
        ("pairing", {"k": 3, "answer": 1, "answer_letter": "C"}, "answer_letter"),
        ("geolocate", {"lon": 2.0}, "lat"),
        ("geolocate", {"lat": 91.0, "lon": 2.0}, "lat"),
        ("geolocate", {"lat": 1.0, "lon": "2"}, "lon"),
        ("geolocate", {"lat": 1.0, "lon": float("nan")}, "lon"),
        ("geolocate", {"lat": 1.0, "lon": 2.0, "city": 7}, "city"),
    ],
)
def test_bad_targets_name_the_key_and_field(task, meta, field):
    with pytest.raises(SampleError, match=f"sample 'bad1': field '{field}'") as e:
        get_task(task).target_from_meta("bad1", meta)
    assert e.value.field == field


def test_prompts_show_one_marker_per_image():
    for target in (PairingTarget(5, 0), PARIS):
        task = task_of(target)
        assert task.prompt(target).count("<image>") == len(task.image_names(target))
    assert PAIRING.image_names(PairingTarget(3, 0)) == ["ground.jpg", "cand0.jpg", "cand1.jpg", "cand2.jpg"]
    assert " C <image>" in PAIRING.prompt(PairingTarget(3, 0)) and " D <image>" not in PAIRING.prompt(
        PairingTarget(3, 0)
    )
    assert GEO.image_names(PARIS) == ["ground.jpg"]


def test_pairing_answers_correctness_and_reward():
    t = PairingTarget(4, 1)
    cases = {
        "<think>x</think><answer>B</answer>": True,
        "<answer>(b)</answer>": True,
        "<answer>Candidate B.</answer>": True,
        "<answer>A</answer>": False,
        "<answer>A or B</answer>": False,
        "<answer></answer>": False,
        "B": False,
        "<answer>E</answer>": False,
    }
    for text, right in cases.items():
        assert PAIRING.is_correct(text, t) is right, text
        assert PAIRING.reward(text, t) == float(right)
    assert PAIRING.parse("<answer>E</answer>") == "E" and PAIRING.answered("<answer>E</answer>", t) is None
    assert PAIRING.parse("no tag") is None


def test_geolocation_answers_correctness_and_reward():
    t = PARIS
    right = "<think>x</think><answer>48.85660, 2.35220 (Paris, FR)</answer>"
    ans = GEO.parse(right)
    assert (ans.lat, ans.lon, ans.city, ans.country) == (48.8566, 2.3522, "Paris", "FR")
    assert GEO.is_correct(right, t) and GEO.reward(right, t) == pytest.approx(1.0)
    assert GEO.parse("<answer>(51.5074, -0.1278)</answer>").point == (51.5074, -0.1278)  # a parenthesised pair
    london = "<answer>51.5074, -0.1278 (London, GB)</answer>"
    d = GEO.error_km(london, t)
    assert 330 < d < 350 and not GEO.is_correct(london, t)
    assert GEO.reward(london, t) == pytest.approx(math.exp(-d / 1492.7))
    assert GeolocationTask(correct_km=400.0).is_correct(london, t)
    for wrong in ("<answer>near Paris</answer>", "48.8566, 2.3522", "<answer></answer>"):
        assert not GEO.is_correct(wrong, t) and GEO.reward(wrong, t) == 0.0 and GEO.error_km(wrong, t) is None
    assert GEO.parse("48.8566, 2.3522", tagged=False).point == (48.8566, 2.3522)  # free text of other systems


def test_well_formed():
    assert is_well_formed("<think>a</think>\n<answer>B</answer>")
    assert not is_well_formed("<answer>B</answer>") and not is_well_formed("<think>a</think><answer>B</answer>!")


def test_evaluation_rows_per_task():
    t = PairingTarget(3, 0)
    rows = [
        {"key": "a", "text": "<think>x</think><answer>A</answer>", "tokens": 10, "target": t},
        {"key": "b", "text": "<answer>B</answer>", "tokens": 4, "target": t},
        {"key": "c", "text": "<answer>D</answer>", "tokens": 6, "target": t},
        {"key": "d", "text": "no answer", "tokens": 2, "target": t},
    ]
    metrics, preds = score_pairing(rows)
    assert metrics["n"] == 4 and metrics["pairing_acc"] == 0.25 and metrics["format_rate"] == 0.25
    assert metrics["parse_rate"] == 0.5 and metrics["mean_completion_tokens"] == 5.5  # "D" is not a candidate
    assert 0.0 < metrics["ci95_low"] < 0.25 < metrics["ci95_high"] < 1.0
    assert [(p["id"], p["answer"], p["truth"], p["correct"], p["parsed"]) for p in preds] == [
        ("a", "A", "A", 1, 1),
        ("b", "B", "A", 0, 1),
        ("c", "", "A", 0, 0),
        ("d", "", "A", 0, 0),
    ]

    geo_rows = [
        {"key": "p", "text": "<think>x</think><answer>48.85, 2.35 (Paris, FR)</answer>", "tokens": 8, "target": PARIS},
        {
            "key": "q",
            "text": "<answer>somewhere</answer>",
            "tokens": 2,
            "target": GeoTarget(-33.8688, 151.2093, "Sydney", "AU"),
        },
    ]
    metrics, preds = score_geolocate(geo_rows)
    assert metrics["n"] == 2 and metrics["unparseable_share"] == 0.5 and metrics["acc@25km"] == 0.5
    assert metrics["format_rate"] == 0.5 and metrics["mean_completion_tokens"] == 5.0
    assert metrics["country_acc"] == 0.5  # reverse geocoding of the parsed answer: France
    assert [p["parsed"] for p in preds] == [1, 0] and preds[0]["text"].endswith("</answer>")
    with pytest.raises(Geor1Error, match="not a pairing target"):
        score_pairing(geo_rows)


def _write_shard(root, records: dict[str, dict], images: dict[str, list[str]]) -> None:
    jpeg = encode_jpeg(Image.new("RGB", (16, 16), (90, 120, 60)))
    with ShardWriter(root, "test") as w:
        for key, meta in records.items():
            w.write_files(key, {name: jpeg for name in images[key]}, meta)


def test_decoder_names_the_task_and_reads_old_shards(tmp_path):
    cands = ["ground.jpg", "cand0.jpg", "cand1.jpg", "cand2.jpg"]
    records = {
        "ep": EPISODE,  # an old episode: no "task" in its JSON
        "pl": PLACE,  # an old pair shard sample
        "named": {**PLACE, "task": "geolocate"},
        "cot": {**EPISODE, "task": "pairing", "prompt": "custom <image>", "response": "<answer>C</answer>"},
    }
    _write_shard(
        tmp_path, records, {"ep": cands, "pl": ["ground.jpg", "sat.jpg"], "named": ["ground.jpg"], "cot": cands}
    )
    raws = {r["__key__"]: r for r in iter_raw_samples(split_shards(tmp_path, "test"))}
    decode = ChatDecoder()
    ep = decode(raws["ep"])
    assert ep.task == "pairing" and ep.target == PairingTarget(3, 2) and len(ep.prompt.images) == 4
    assert ep.meta["candidates"] == EPISODE["candidates"]  # the JSON travels along, for display
    pl = decode(raws["pl"])
    assert pl.task == "geolocate" and pl.target == GeoTarget(-33.8688, 151.2093, "Sydney", "AU")
    assert len(pl.prompt.images) == 1 and pl.prompt.text == GEO.prompt(pl.target)
    cot = decode(raws["cot"])
    assert cot.prompt.text == "custom <image>" and cot.response == "<answer>C</answer>"
    # the DataModule's task names the task of samples that do not name theirs; a sample's own "task" wins
    as_geo = ChatDecoder("geolocate")(raws["ep"])
    assert as_geo.task == "geolocate" and as_geo.target == PARIS and len(as_geo.prompt.images) == 1
    assert ChatDecoder("pairing")(raws["named"]).task == "geolocate"
    with pytest.raises(SampleError, match="field 'k'"):
        ChatDecoder("pairing")(raws["pl"])  # a pair shard is no pairing episode
    with pytest.raises(Geor1Error, match="task must be one of"):
        ChatDecoder("pairs")


def test_decoder_rejects_an_unknown_task_and_missing_images(tmp_path):
    _write_shard(
        tmp_path,
        {"x": {**PLACE, "task": "captioning"}, "y": {**EPISODE, "task": "pairing"}},
        {"x": ["ground.jpg"], "y": ["ground.jpg", "cand0.jpg", "cand1.jpg"]},
    )
    raws = {r["__key__"]: r for r in iter_raw_samples(split_shards(tmp_path, "test"))}
    with pytest.raises(SampleError, match="sample 'x': field 'task'"):
        ChatDecoder()(raws["x"])
    with pytest.raises(SampleError, match=r"sample 'y': field 'cand2\.jpg': missing"):
        ChatDecoder()(raws["y"])
