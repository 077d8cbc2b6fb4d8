"""Reward functions, registered by name: `(completions, samples, **context) -> list[float | None]`.

`None` means "cannot score this sample" (e.g. a geodesic reward for a pairing episode): it gives zero advantage,
never NaN. Rewards are combined with configured weights (`combine`); each is logged on its own. A reward outside
this package is named by its dotted import path in the YAML (`my_package.rewards.my_reward`).
"""

from geor1.rewards.registry import REWARDS, combine, get_reward, register
from geor1.rewards import builtin as _builtin  # noqa: F401  (registers the built-in rewards)

__all__ = ["REWARDS", "combine", "get_reward", "register"]
