"""What an evaluation run writes besides predictions.csv: metrics.json, metrics.md (the paper's columns, with the
published reference rows of a named benchmark beside the measured one) and the geolocation plots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CONVENTIONS = (
    "Great-circle error by haversine on a sphere of R = 6371.0088 km; a prediction within a threshold counts when "
    "d <= threshold; an unreadable answer is a miss in every accuracy; mean, median and GeoScore are over the read "
    "answers; city / country / continent by offline reverse geocoding (GeoNames cities > 1000 people)."
)


def write_metrics(out: str | Path, metrics: dict[str, Any], benchmark: str | None = None) -> Path:
    """metrics.json (as given) and metrics.md: for geolocation the paper's columns with the published rows of
    `benchmark`, then the unreadable answers by reason; for pairing the accuracy with its interval."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    lines = [f"# {metrics.get('task', 'evaluation')}: {metrics.get('model') or ''}".rstrip(": "), ""]
    if "pairing_acc" in metrics:
        lines += [
            "| n | pairing acc | 95% CI |",
            "|---|---|---|",
            f"| {metrics['n']} | {metrics['pairing_acc']:.4f} | "
            f"[{metrics['ci95_low']:.4f}, {metrics['ci95_high']:.4f}] |",
            "",
            "| metric | value |",
            "|---|---|",
        ]
        lines += [
            f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in metrics.items()
            if not isinstance(v, dict) and k not in ("n", "pairing_acc", "ci95_low", "ci95_high", "task", "model")
        ]
        from geor1.eval.runners import audit_sections

        lines += audit_sections(metrics)
    else:
        from geor1.eval.published import published_table

        lines += [f"{metrics.get('n', 0)} samples. {CONVENTIONS}", ""]
        lines += published_table(metrics, benchmark, "measured")
        reasons = metrics.get("unparseable_by_reason") or {}
        if reasons:
            from geor1.reading import REASONS

            lines += ["", "## Unreadable answers by reason", "", "| reason | count | meaning |", "|---|---|---|"]
            lines += [f"| {r} | {c} | {REASONS.get(r, '')} |" for r, c in sorted(reasons.items())]
    (out / "metrics.md").write_text("\n".join(lines) + "\n")
    return out


def geolocation_plots(out: str | Path, rows: Sequence[dict[str, Any]]) -> list[Path]:
    """world_map.png (predictions, joined to the truth where rows have one) and, with truth, error_cdf.png."""
    import numpy as np

    from geor1.eval.plots import error_cdf, world_map

    out = Path(out)

    def point(r: dict[str, Any], lat: str, lon: str) -> list[float]:
        return [float(r[lat]), float(r[lon])] if r.get(lat) not in (None, "") else [np.nan, np.nan]

    pred = np.array([point(r, "lat", "lon") for r in rows], dtype=float).reshape(-1, 2)
    true = np.array([point(r, "true_lat", "true_lon") for r in rows], dtype=float).reshape(-1, 2)
    read = int(np.sum(~np.isnan(pred[:, 0])))
    written = [world_map(pred, true, out / "world_map.png", f"{read} of {len(rows)} answers read")]
    if len(rows) and not np.isnan(true).all():
        d = np.array([float(r["km"]) for r in rows if r.get("km") not in (None, "")], dtype=float)
        written.append(error_cdf({"model": d}, {"model": len(rows)}, out / "error_cdf.png"))
    _to_tensorboard(out / "tb", written)
    return written


def _to_tensorboard(logdir: Path, pngs: list[Path]) -> None:
    """The plots as TensorBoard images (`eval/world_map`, `eval/error_cdf`) under `logdir`."""
    import numpy as np
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(logdir)) as writer:
        for png in pngs:
            image = np.asarray(Image.open(png).convert("RGB"))
            writer.add_image(f"eval/{png.stem}", image, 0, dataformats="HWC")
