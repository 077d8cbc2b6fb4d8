"""Shared by the benchmark scripts: write a result as JSON + Markdown next to printing it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_report(out: str | None, name: str, data: Any, lines: list[str]) -> None:
    """`<out>/<name>.json` and `<out>/<name>.md` (nothing when `out` is None)."""
    if not out:
        return
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(data, indent=2))
    (folder / f"{name}.md").write_text("\n".join(lines) + "\n")
