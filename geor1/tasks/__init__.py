"""The tasks geor1 trains and evaluates, one module each: pairing (`geor1.tasks.pairing`), geolocation
(`geor1.tasks.geolocation`) and describe (`geor1.tasks.describe`, generic questions about images: the demo's
instruction-following stage). A task owns its prompt, its typed target, the reading and checking of an answer, the
task-specific part of the rewards and its evaluation metrics (`geor1.tasks.base.Task`).

The task of a sample is named, never guessed: by the shard's JSON "task", or by the DataModule's `task`; a target's
type says which task it belongs to (`task_of`).

    >>> task_of(PairingTarget(k=4, answer=1)).is_correct("<think>..</think><answer>B</answer>", PairingTarget(4, 1))
    True
    >>> get_task("geolocate").name
    'geolocate'
"""

from __future__ import annotations

import dataclasses
from typing import Any

from geor1 import Geor1Error
from geor1.tasks.base import TargetError, Task, is_well_formed, split_completion
from geor1.tasks.describe import DescribeTarget, DescribeTask
from geor1.tasks.geolocation import GeoAnswer, GeolocationTask, GeoTarget
from geor1.tasks.pairing import PairingTarget, PairingTask

Target = PairingTarget | GeoTarget | DescribeTarget
TASKS: dict[str, Task] = {
    PairingTask.name: PairingTask(),
    GeolocationTask.name: GeolocationTask(),
    DescribeTask.name: DescribeTask(),
}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)  # ("pairing", "geolocate", "describe"): the names in shards and configs


def get_task(name: str) -> Task:
    """The task named `name` (with its default settings); Geor1Error listing the known names otherwise."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise Geor1Error(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}") from None


def task_of(target: Target, **settings: Any) -> Task:
    """The task `target` belongs to, with those of `settings` that are settings of that task changed (a setting
    of another task, e.g. the geolocation `correct_km` for a pairing target, does not concern it).

    >>> task_of(GeoTarget(0.0, 0.0), correct_km=50.0).correct_km
    50.0
    """
    name = getattr(target, "task", None)
    if name not in TASKS:
        raise Geor1Error(
            f"{type(target).__name__} is not a task target (known: PairingTarget, GeoTarget, DescribeTarget)"
        )
    task = TASKS[name]
    if settings:
        own = {f.name for f in dataclasses.fields(task)}  # type: ignore[arg-type]  # tasks are dataclasses
        changed = {k: v for k, v in settings.items() if k in own}
        if changed:
            task = dataclasses.replace(task, **changed)  # type: ignore[type-var]
    return task


__all__ = [
    "TASKS",
    "TASK_NAMES",
    "DescribeTarget",
    "DescribeTask",
    "GeoAnswer",
    "GeoTarget",
    "GeolocationTask",
    "PairingTarget",
    "PairingTask",
    "Target",
    "TargetError",
    "Task",
    "get_task",
    "is_well_formed",
    "split_completion",
    "task_of",
]
