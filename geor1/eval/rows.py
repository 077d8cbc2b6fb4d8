"""One prediction row per answer, as `EvalModule` writes them to predictions.csv, and the metric updates from rows.

A row holds everything its metrics need (the read point, the truth, the hits), so the rows of an earlier,
interrupted run update the metrics exactly as they did when they were written: a resumed evaluation counts every
sample once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from geor1.answers import answer_text, normalize_name
from geor1.data.sample import ChatSample
from geor1.tasks import GeolocationTask, GeoTarget, PairingTarget, Task


def split_answer(text: str) -> tuple[str, str]:
    """(answer, reasoning) of a completion: the last <answer> content and what came before it (the <think> content
    when there is one); without tags the whole text is the answer and the reasoning is empty.

    >>> split_answer("<think>a coast</think><answer>1.5, 2.5</answer>")
    ('1.5, 2.5', 'a coast')
    >>> split_answer("It is Paris.")
    ('It is Paris.', '')
    """
    ans = answer_text(text)
    if ans is None:
        return text.strip(), ""
    head = text[: text.rfind("<answer>")]
    start, end = head.find("<think>"), head.rfind("</think>")
    reasoning = head[start + len("<think>") : end] if 0 <= start < end else head
    return ans.strip(), reasoning.strip()


def _truth_place(target: GeoTarget, found: Any) -> tuple[str | None, str | None]:
    """(city, country code) of the truth: the target's labels where it has them (a country only when it is a
    2-letter code), else the reverse-geocoded true point's."""
    country = target.country if target.country and len(target.country) == 2 and target.country.isalpha() else None
    return target.city or found.name, (country or found.country).upper()


def geolocation_rows(
    task: Task, samples: Sequence[ChatSample], texts: Sequence[str], tokens: Sequence[int | None]
) -> list[dict[str, Any]]:
    """Rows of GEO_COLUMNS for completions of geolocation samples (samples without a target: no truth columns).
    The predicted and the true points are reverse-geocoded offline in one call per batch."""
    from geor1.data.continents import continent_of
    from geor1.data.places import reverse_geocode
    from geor1.geo import haversine_km

    assert isinstance(task, GeolocationTask)
    readings = [task.read(t) for t in texts]
    points = [(r.lat, r.lon) for r in readings if r.point is not None]
    truths = [(s.target.lat, s.target.lon) for s in samples if isinstance(s.target, GeoTarget)]
    found = reverse_geocode([p[0] for p in points + truths], [p[1] for p in points + truths]) if points + truths else []
    pred_places, true_places = iter(found[: len(points)]), iter(found[len(points) :])
    rows = []
    for sample, text, n, reading in zip(samples, texts, tokens, readings, strict=True):
        answer, reasoning = split_answer(text)
        row: dict[str, Any] = {
            "key": sample.key,
            "id": sample.meta.get("id"),
            "path": sample.meta.get("path"),
            "how": reading.how,
            "reason": reading.reason,
            "tokens": n,
            "answer": answer,
            "reasoning": reasoning,
            "text": text,
        }
        pred = next(pred_places) if reading.point is not None else None
        if pred is not None:
            row.update(
                lat=reading.lat,
                lon=reading.lon,
                city=pred.name,
                country=pred.country,
                continent=continent_of(pred.country),
            )
        target = sample.target
        if isinstance(target, GeoTarget):
            city, country = _truth_place(target, next(true_places))
            row.update(true_lat=target.lat, true_lon=target.lon, true_city=city, true_country=country)
            true_continent = continent_of(country)
            if pred is None:
                row.update(km=None, city_hit=0, country_hit=0, continent_hit=0)
            else:
                row["km"] = float(haversine_km(target.lat, target.lon, reading.lat, reading.lon))
                row["city_hit"] = int(normalize_name(pred.name) == normalize_name(city))
                row["country_hit"] = int(pred.country == country)
                row["continent_hit"] = int(true_continent is not None and row["continent"] == true_continent)
        rows.append(row)
    return rows


def pairing_rows(
    task: Task, samples: Sequence[ChatSample], texts: Sequence[str], tokens: Sequence[int]
) -> list[dict[str, Any]]:
    """Rows of PAIRING_COLUMNS: the letter answered (strict: exactly one of the K offered), the truth, correct."""
    rows = []
    for sample, text, n in zip(samples, texts, tokens, strict=True):
        target = sample.target
        if not isinstance(target, PairingTarget):
            from geor1 import Geor1Error

            raise Geor1Error(f"sample {sample.key!r}: not a pairing episode (task {sample.task!r})")
        letter = task.answered(text, target)  # type: ignore[attr-defined]
        rows.append(
            {
                "key": sample.key,
                "answer_letter": letter or "",
                "truth": target.letter,
                "correct": int(letter == target.letter),
                "parsed": int(letter is not None),
                "tokens": int(n),
                "text": text,
            }
        )
    return rows


def _num(v: Any) -> float:
    return float(v) if v not in (None, "") else 0.0


def update_geodesic(metric: Any, rows: Sequence[dict[str, Any]], device: torch.device) -> None:
    """GeodesicError.update from rows with truth (a row without a read point is a failure)."""

    def col(name: str, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return torch.tensor([_num(r.get(name)) for r in rows], dtype=dtype, device=device)

    parsed = torch.tensor([r.get("lat") not in (None, "") for r in rows], device=device)
    metric.update(
        col("lat"),
        col("lon"),
        col("true_lat"),
        col("true_lon"),
        parsed,
        city_hit=col("city_hit", torch.long).bool(),
        country_hit=col("country_hit", torch.long).bool(),
        continent_hit=col("continent_hit", torch.long).bool(),
    )


def update_pairing(metric: Any, rows: Sequence[dict[str, Any]], device: torch.device) -> None:
    metric.update(torch.tensor([bool(int(r["correct"])) for r in rows], device=device))


def row_summary(task: str, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What the merged rows add to the torchmetrics' numbers (rank 0, after the merge): the share of completions in
    the exact <think>/<answer> format and the mean completion tokens; for pairing the parse rate and the shortcut
    audit (accuracy per position of the true tile, the letters answered: `geor1.metrics.audit.letter_audit`)."""
    from geor1.tasks.base import format_rate, mean_tokens

    out: dict[str, Any] = {"format_rate": format_rate(rows)}
    if all(isinstance(r.get("tokens"), int) for r in rows):  # model-free scoring has no token counts
        out["mean_completion_tokens"] = mean_tokens(rows)
    if task == "pairing":
        from geor1.metrics.audit import letter_audit

        audit = letter_audit([r["truth"] for r in rows], [r["answer_letter"] or None for r in rows])
        out["parse_rate"] = sum(int(r["parsed"]) for r in rows) / max(len(rows), 1)
        out.update({k: audit[k] for k in ("max_letter", "max_letter_share", "position_acc", "answer_letters")})
    return out


def metrics_of_rows(task: str, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The metrics of a whole set of rows at once (model-free scoring): the same Metrics, updates and summary as
    `EvalModule` accumulates batch by batch, so both paths give the same numbers for the same rows."""
    from geor1.metrics.geodesic import GeodesicError, PairingAccuracy
    from geor1.metrics.reasons import ReasonCounts

    device = torch.device("cpu")
    if task == "geolocate":
        metric: Any = GeodesicError()
        update_geodesic(metric, rows, device)
        reasons = ReasonCounts()
        reasons.update([r.get("reason") for r in rows])
        out = {k: plain(v) for k, v in metric.compute().items()}
        out["unparseable_by_reason"] = reasons.compute()
    else:
        metric = PairingAccuracy()
        update_pairing(metric, rows, device)
        out = {k: plain(v) for k, v in metric.compute().items()}
    out.update(row_summary(task, rows))
    return with_intervals(out, rows) if task == "geolocate" else out


def plain(v: Any) -> Any:
    """A metric value as JSON: ints stay ints, floats to 12 significant digits (no summation-order noise between
    a run on one process and on several), NaN as None."""
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float):
        return None if not math.isfinite(v) else float(f"{v:.12g}")
    return v


def with_intervals(metrics: dict[str, Any], rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Geolocation metrics with 95% intervals: Wilson for every accuracy (acc@k, city, country, continent; the count
    is the accuracy times n, exact for counts), and the distribution-free interval of the median error over the read
    answers (`geor1.metrics.intervals.median_interval`). Keys `<metric>_ci95_low` / `<metric>_ci95_high`."""
    from geor1.metrics.intervals import median_interval, wilson_interval

    n = int(metrics.get("n") or 0)
    out = dict(metrics)
    for key, value in metrics.items():
        if isinstance(value, float) and (key.startswith("acc@") or key in ("city_acc", "country_acc", "continent_acc")):
            lo, hi = wilson_interval(round(value * n), n)
            out[f"{key}_ci95_low"], out[f"{key}_ci95_high"] = plain(lo), plain(hi)
    if "median_km_parsed" in metrics:
        km = [float(r["km"]) for r in rows if r.get("km") not in (None, "")]
        lo, hi = median_interval(km)
        out["median_km_parsed_ci95_low"], out["median_km_parsed_ci95_high"] = plain(lo), plain(hi)
    return out
