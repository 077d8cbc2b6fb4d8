"""Small pieces shared by the adapters of the families whose vision side is several modules (vision encoder,
projector, learned tokens), and the mask-derived text positions of left-padded rows."""

from __future__ import annotations

from functools import reduce
from typing import Any, ClassVar

from torch import Tensor, nn

from geor1 import Geor1Error
from geor1.model.adapters.base import HFModel


class VisionParts(nn.Module):
    """The modules (and loose parameters) that make up one family's vision side, held by reference so that
    `parameters()` covers them all (e.g. for `freeze_vision`). Not part of the model's own module tree."""

    def __init__(self, modules: dict[str, nn.Module], params: dict[str, nn.Parameter] | None = None) -> None:
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)
        for name, p in (params or {}).items():
            self.register_parameter(name, p)


def text_positions(attention_mask: Tensor) -> Tensor:
    """[N, L] mask -> [N, L] long positions counted over attended tokens, so that left padding does not shift them
    (a padded row then sees the same positions as the prompt alone)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def token_runs(ids: Tensor, token_id: int) -> tuple[Tensor, Tensor]:
    """Runs of consecutive `token_id` in each row of ids [B, L] -> ([B] runs per row, [n_runs] run lengths in
    row-major order)."""
    hit = ids == token_id  # [B, L]
    prev = nn.functional.pad(hit, (1, 0), value=False)[:, :-1]
    nxt = nn.functional.pad(hit, (0, 1), value=False)[:, 1:]
    starts, ends = (hit & ~prev), (hit & ~nxt)
    lengths = ends.nonzero()[:, 1] - starts.nonzero()[:, 1] + 1  # nonzero() is row-major: runs pair up in order
    return starts.sum(-1), lengths


class InnerModelParts:
    """Modules of a family whose transformers model keeps its vision side and text model under `model.model` and
    its LM head at `model.lm_head` (applying no logit soft-capping). Mixed into an `ArchAdapter`, which sets:"""

    vision_modules: ClassVar[tuple[str, ...]] = ()  # attributes of model.model that make up the vision side
    vision_params: ClassVar[tuple[str, ...]] = ()  # loose parameters of model.model that belong to it
    vision_layers: ClassVar[str] = ""  # dotted path under model.model to the vision encoder blocks
    text_model: ClassVar[str] = ""  # attribute of model.model whose `layers` are the text decoder blocks

    def vision_tower(self, model: HFModel) -> nn.Module:
        inner = model.model
        return VisionParts(
            {name: getattr(inner, name) for name in self.vision_modules},
            {name: getattr(inner, name) for name in self.vision_params},
        )

    def vision_blocks(self, model: HFModel) -> list[nn.Module]:
        return list(reduce(getattr, self.vision_layers.split("."), model.model))

    def decoder_layers(self, model: HFModel) -> list[nn.Module]:
        return list(getattr(model.model, self.text_model).layers)

    def lm_head(self, model: HFModel) -> nn.Module:
        return model.lm_head


class TextRoPEPrefix:
    """Families whose text model uses plain 1-D RoPE over mask-derived positions (what `generate` uses too): a full
    forward gets those positions explicitly, a shared prefill needs no per-row state, and a continuation's positions
    are its text positions counted over the whole (prompt + completion) attention mask. Mixed into an `ArchAdapter`."""

    shared_prefix = True

    def position_ids(self, model: HFModel, batch: dict[str, Tensor]) -> Tensor:
        """[N, L] positions from the attention mask: a left-padded row sees the positions of its prompt alone."""
        return text_positions(batch["attention_mask"])

    def begin_prefill(self, model: HFModel) -> None:
        return None  # nothing is cached on the model between forwards

    def prefix_state(self, model: HFModel, inputs, group_size: int) -> None:
        return None

    def tail_position_ids(self, model: HFModel, state: None, attention_mask: Tensor, tail: int) -> Tensor:
        return text_positions(attention_mask)[:, -tail:]  # [N, tail]


# ---------------------------------------------------------------------------------------------- image budgets
def image_setting(processor: Any, key: str) -> Any:
    """The value of image setting `key` that a processor call uses: the processor's own `images_kwargs` default
    (transformers passes it to the image processor on every call) over the image processor's attribute."""
    own = getattr(processor, "images_kwargs", None) or {}
    return own[key] if key in own else getattr(processor.image_processor, key, None)


def side(size: Any, key: str) -> int | None:
    """`size[key]` of an image processor's size (a dict or a transformers SizeDict), None when unset."""
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return None if value is None else int(value)


def no_setting(family: str, knob: str, why: str) -> Geor1Error:
    """The one-line refusal of a pixel budget that no setting of a family's own knob can meet."""
    return Geor1Error(
        f"{family}: {why}; no setting of its processor's {knob} meets this budget: change min_pixels / max_pixels, "
        f"or leave them null to keep the processor's own"
    )
