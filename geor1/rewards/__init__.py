"""Reward functions, registered by name: `(completions: list[str], targets: list[Target | None], **context) ->
list[float | None]`, one score per completion; `targets[i]` is the typed target (`geor1.tasks.PairingTarget`,
`GeoTarget`) of the prompt completion i answers, and a reward reads answers through its task (`geor1.tasks.task_of`).
`context` holds `lengths` (completion token counts) and the reward's configured keyword arguments.

`None` means "cannot score this sample" (e.g. a geodesic reward for a pairing episode): it gives zero advantage,
never NaN. Rewards are combined with configured weights (`combine`); each is logged on its own. A reward outside
this package is named by its dotted import path in the YAML (`my_package.rewards.my_reward`).
"""

from geor1.rewards import builtin as _builtin  # noqa: F401  (registers the built-in rewards)
from geor1.rewards.registry import REWARDS, combine, get_reward, register

__all__ = ["REWARDS", "combine", "get_reward", "register"]
