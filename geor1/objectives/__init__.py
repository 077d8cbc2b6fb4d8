"""One LightningModule per objective, and the pure maths they call."""

from geor1.objectives.base import PolicyModule
from geor1.objectives.sft import SFTModule

__all__ = ["PolicyModule", "SFTModule"]
