"""One LightningModule per objective, and the pure maths they call (imported lazily)."""

from geor1._lazy import lazy_exports

_EXPORTS = {
    "PolicyModule": "geor1.objectives.base",
    "SFTModule": "geor1.objectives.sft",
    "ContrastiveModule": "geor1.objectives.contrastive",
    "GRPOModule": "geor1.objectives.grpo",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports("geor1.objectives", _EXPORTS)
