"""One LightningModule per objective, and the pure maths they call (imported lazily)."""

from importlib import import_module

_EXPORTS = {
    "PolicyModule": "geor1.objectives.base",
    "SFTModule": "geor1.objectives.sft",
    "ContrastiveModule": "geor1.objectives.contrastive",
    "GRPOModule": "geor1.objectives.grpo",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'geor1.objectives' has no attribute {name!r}")
