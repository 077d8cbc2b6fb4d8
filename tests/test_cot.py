"""Chain-of-thought synthesis and fact-check: exemplars grounded in each sample, planted wrong facts dropped with
the right reason, imports through the same check, and the SFT shards that come out."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from geor1.cot.factcheck import fact_check
from geor1.cot.synthesize import geolocate_exemplar, pairing_exemplar
from geor1.tasks import GeoTarget, PairingTarget

META = {
    "lat": -33.9249,
    "lon": 18.4241,
    "city": "Cape Town",
    "country": "ZA",
    "admin1": "Western Cape",
    "continent": "africa",
}
TARGET = GeoTarget(META["lat"], META["lon"], META["city"], META["country"])
GOOD = (
    "<think>The view shows water. Geographic priors: the southern hemisphere and the eastern hemisphere. "
    "My estimate is -33.9249, 18.4241.</think><answer>-33.92490, 18.42410 (Cape Town, ZA)</answer>"
)


@pytest.mark.parametrize(
    "text, reason",
    [
        (GOOD, None),
        (GOOD.replace("(Cape Town, ZA)", "(Cape Town, NA)"), "wrong_country"),
        (GOOD.replace("(Cape Town, ZA)", "(Durban, ZA)"), "wrong_city"),
        (GOOD.replace("southern hemisphere", "northern hemisphere"), "wrong_hemisphere"),
        (GOOD.replace("eastern hemisphere", "western hemisphere"), "wrong_hemisphere"),
        (GOOD.replace("<answer>-33.92490, 18.42410", "<answer>-29.85790, 31.02920"), "coordinates_off"),
        (
            GOOD.replace("My estimate is -33.9249, 18.4241", "My estimate is 33.9249, 18.4241"),
            "wrong_coordinates_in_reasoning",
        ),
        (
            GOOD.replace("<answer>-33.92490, 18.42410 (Cape Town, ZA)", "<answer>somewhere in Africa"),
            "unparseable_answer",
        ),
        (GOOD.replace("</think>", ""), "format"),
    ],
)
def test_planted_wrong_geolocation_facts_are_caught(text, reason):
    failures = fact_check(text, TARGET, tolerance_km=25.0)
    assert failures == ([] if reason is None else [reason]) or (reason in failures)


def test_pairing_fact_check():
    target = PairingTarget(k=3, answer=1)
    assert fact_check("<think>Candidate B fits.</think><answer>B</answer>", target) == []
    assert fact_check("<think>Candidate B fits.</think><answer>A</answer>", target) == ["wrong_letter"]
    assert fact_check("<think>Candidate D is out.</think><answer>B</answer>", target) == ["letter_out_of_range"]
    assert fact_check("<think>x</think><answer></answer>", target) == ["unparseable_answer"]
    assert fact_check("<think>x</think><answer>D</answer>", target) == ["unparseable_answer"]  # not a candidate


def _solid(rgb, size=(64, 64)):
    return Image.new("RGB", size, rgb)


def test_pairing_exemplar_is_grounded_in_the_images():
    sea, forest, desert = (30, 60, 170), (40, 120, 40), (200, 170, 110)
    ground = Image.new("RGB", (96, 64), (135, 190, 235))
    ground.paste(_solid(forest, (96, 32)), (0, 32))  # sky above, forest below
    rng = np.random.default_rng(0)
    text, reason = pairing_exemplar(ground, [_solid(sea), _solid(forest), _solid(desert)], 1, rng)
    assert reason is None and text.endswith("<answer>B</answer>")
    assert "A: water 100%" in text and "C: bare 100%" in text and "green 0% vs 100%" in text
    assert fact_check(text, PairingTarget(3, 1)) == []
    assert fact_check(text.replace("C: bare", "D: bare"), PairingTarget(3, 1)) == ["letter_out_of_range"]
    # when the cues cannot tell the truth from a negative, no exemplar is made
    text, reason = pairing_exemplar(ground, [_solid(forest), _solid(forest), _solid(desert)], 1, rng)
    assert text is None and reason == "cues_do_not_single_out_answer"


def test_geolocate_exemplar_passes_its_own_check_and_varies():
    ground = Image.new("RGB", (96, 64), (30, 60, 170))
    texts = {geolocate_exemplar(ground, META, np.random.default_rng(s)) for s in range(6)}
    assert len(texts) > 1  # seeded phrasing varies within the template
    for t in texts:
        assert fact_check(t, TARGET) == []
        assert "southern hemisphere" in t and "Africa" in t and "near a coast" in t


def test_compact_geolocate_exemplar_is_short_checked_and_names_no_place():
    ground = Image.new("RGB", (96, 64), (30, 60, 170))
    text = geolocate_exemplar(ground, META, np.random.default_rng(0), compact=True)
    assert text == (
        "<think>View: water 100%, flat. Subtropical latitudes, southern hemisphere, eastern hemisphere, "
        "Africa.</think><answer>-33.9, 18.4</answer>"
    )
    assert fact_check(text, TARGET) == []
    wrong = text.replace("southern hemisphere", "northern hemisphere")
    assert fact_check(wrong, TARGET) == ["wrong_hemisphere"]


def test_synthesize_and_import_write_sft_shards(tmp_path):
    import webdataset as wds

    from geor1.cot.synthesize import read_import, synthesize
    from geor1.data.chat import ChatShardDataModule
    from geor1.data.geoworld import build_geoworld

    world = build_geoworld(tmp_path / "gw", num_train=8, num_val=2, num_test=2, seed=4)
    report = synthesize(world, tmp_path / "sft", "geolocate", seed=1)
    assert report.kept == 12 and report.total == 12
    summary = json.loads((tmp_path / "sft" / "factcheck_summary.json").read_text())
    assert summary == {"total": 12, "kept": 12, "dropped": {}}
    samples = list(
        wds.WebDataset(sorted(str(p) for p in (tmp_path / "sft").glob("train-*.tar")), shardshuffle=False).decode("pil")
    )
    assert len(samples) == 8 and samples[0]["json"]["task"] == "geolocate"
    assert samples[0]["json"]["response"].startswith("<think>") and "<image>" in samples[0]["json"]["prompt"]
    dm = ChatShardDataModule(str(tmp_path / "sft"), batch_size=4, shuffle_buffer=0)
    batch = next(iter(dm.train_dataloader()))
    assert len(batch) == 4 and len(batch[0].prompt.images) == 1 and batch[0].response.endswith("</answer>")
    # an import: one right, one with a planted wrong country, one key that is not in the shards
    keys = [s["__key__"] for s in samples[:2]]
    lines = []
    for i, s in enumerate(samples[:2]):
        m = s["json"]
        cc = m["country"] if i == 0 else ("ZZ" if m["country"] != "ZZ" else "YY")
        lines.append(
            {
                "key": keys[i],
                "reasoning": "teacher reasoning",
                "answer": f"{m['lat']:.4f}, {m['lon']:.4f} ({m['city']}, {cc})",
            }
        )
    lines.append({"key": "nope", "reasoning": "r", "answer": "1, 2"})
    (tmp_path / "teacher.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    report = synthesize(
        world, tmp_path / "imp", "geolocate", imported=read_import(tmp_path / "teacher.jsonl"), splits=("train",)
    )
    assert report.kept == 1 and report.dropped["wrong_country"] == 1 and report.dropped["not_in_import"] == 6


def test_synthesize_on_real_photos_warns_and_counts(tmp_path, caplog):
    """Template exemplars of a converted data set (not GeoWorld) are counted and warned about: their colour cues are
    made for rendered views."""
    import numpy as np
    from PIL import Image

    from geor1.cot.synthesize import synthesize
    from geor1.data.convert import csv_rows, write_rows

    images = tmp_path / "img"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(images / f"{name}.jpg")
    (tmp_path / "bench.csv").write_text("id,lat,lon\na,48.8566,2.3522\nb,-33.8688,151.2093\n")
    rows = csv_rows(tmp_path / "bench.csv", images, "id", "lat", "lon", split="train")
    write_rows(rows, tmp_path / "real", "mine", "test data")
    with caplog.at_level("WARNING", logger="geor1.cot.synthesize"):
        report = synthesize(tmp_path / "real", tmp_path / "sft", "geolocate")
    assert report.total == 2 and sum(report.real_sources.values()) == 2
    assert report.as_dict()["templates_on_real_photos"] == dict(report.real_sources)
    assert sum("meaningless on real photos" in r.message for r in caplog.records) == 1  # once per data set
