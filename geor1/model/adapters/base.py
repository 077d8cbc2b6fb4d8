"""The adapter base class and the registry of model families (see `geor1.model.adapters` for what an adapter says).

Kept apart from the package `__init__`, which imports every family module: a family module imports this one, never
its own package, so there is no import cycle."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn
from transformers import BatchFeature

from geor1 import Geor1Error

HFModel = Any
"""A transformers `*ForConditionalGeneration` model (an `nn.Module`). Its sub-modules and config fields differ per
family and are reached by name, which is what an adapter is for, so the type checker sees them as Any."""

LAYOUTS = ("row", "image", "patch", "seq")
"""row: dim 0 is the prompt row; image: one entry per image, images in prompt order; patch: one variable-length
chunk per image concatenated along dim 0 (lengths from `patches_per_image`); seq: a row key that runs along the
token sequence and is extended over completion tokens with `seq_fill[key]`."""

_REGISTRY: dict[str, type[ArchAdapter]] = {}


class ArchAdapter:
    """What one model family needs from geor1. Subclass, set the class attributes, register with
    `@register_adapter`."""

    family: ClassVar[str] = ""  # human-readable family name for errors and docs/training.md, e.g. "Qwen2.5-VL"
    model_types: ClassVar[tuple[str, ...]] = ()  # config.model_type values served, e.g. ("qwen2_5_vl",)
    shared_prefix: ClassVar[bool] = False  # prompts may be prefilled once and their KV cache reused by G samples
    nested_images: ClassVar[bool] = False  # processor wants images=[[imgs of prompt 0], [imgs of prompt 1], ...]
    key_layouts: ClassVar[dict[str, str]] = {}  # every processor output key -> one of LAYOUTS
    seq_fill: ClassVar[dict[str, int]] = {"attention_mask": 1}  # fill values of "seq" keys over completions
    # "row" keys that only describe images (Idefics3's per-prompt tiles, LLaVA-OV's batch_num_images): dropped,
    # with every "image" and "patch" key, from a selection of prompts that holds no image at all
    image_row_keys: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------------ layouts
    def layout(self, key: str) -> str:
        """The layout of processor output `key`, or a Geor1Error naming the key and the family."""
        try:
            return self.key_layouts[key]
        except KeyError:
            raise Geor1Error(
                f"processor output '{key}' has no layout in the {self.name()} adapter (known: "
                f"{sorted(self.key_layouts)}); geor1 refuses to batch prompts it cannot index exactly"
            ) from None

    def fill(self, key: str) -> int:
        """The value a "seq" key takes over completion tokens."""
        if key not in self.seq_fill:
            raise Geor1Error(f"sequence key '{key}' has no completion fill value in the {self.name()} adapter")
        return self.seq_fill[key]

    @classmethod
    def name(cls) -> str:
        return cls.family or cls.__name__

    # ------------------------------------------------------------------ counts (batching of image / patch keys)
    def images_per_row(self, inputs: BatchFeature, model: HFModel) -> Tensor:
        """[B] long: how many images each prompt row of `inputs` holds (needed when a key has layout "image" or
        "patch")."""
        raise NotImplementedError(f"{self.name()} adapter does not count images per row")

    def rows_with_images(self, inputs: BatchFeature, model: HFModel) -> Tensor:
        """[B] bool: which prompt rows hold at least one image. Default: `images_per_row(...) > 0`."""
        return self.images_per_row(inputs, model) > 0

    def image_keys(self, keys: list[str]) -> list[str]:
        """Those of `keys` that carry images: every "image" and "patch" key, and the `image_row_keys`."""
        return [k for k in keys if k in self.image_row_keys or self.layout(k) in ("image", "patch")]

    def patches_per_image(self, inputs: BatchFeature, model: HFModel) -> Tensor:
        """[n_images] long: rows of every "patch" key that belong to each image, in order (`model`: the transformers
        model, for token ids and vision settings in its config)."""
        raise NotImplementedError(f"{self.name()} adapter has no 'patch' keys")

    # ------------------------------------------------------------------ processor output
    def finish_inputs(self, inputs: BatchFeature, model: HFModel) -> BatchFeature:
        """Repair the processor's output for a batch of prompts before its keys are checked against `key_layouts`
        (e.g. a per-prompt key the processor gives only for prompts with images). Default: unchanged."""
        return inputs

    # ------------------------------------------------------------------ modules
    def vision_tower(self, model: HFModel) -> nn.Module:
        """The vision encoder (+ projector where the family has one): what `freeze_vision` freezes."""
        return _first_attr(
            model,
            ("model.visual", "model.vision_tower", "model.vision_model", "visual", "vision_tower", "vision_model"),
            self.name(),
            "vision tower",
        )

    def decoder_layers(self, model: HFModel) -> list[nn.Module]:
        """The text decoder blocks (FSDP2 units, activation checkpointing)."""
        layers = _first_attr(
            model,
            ("model.language_model.layers", "model.text_model.layers", "language_model.model.layers", "model.layers"),
            self.name(),
            "decoder layers",
        )
        return list(layers)

    def vision_blocks(self, model: HFModel) -> list[nn.Module]:
        """The vision encoder blocks (FSDP2 units, activation checkpointing)."""
        tower = self.vision_tower(model)
        blocks = _first_attr(
            tower, ("blocks", "encoder.layers", "encoder.layer", "layers"), self.name(), "vision blocks"
        )
        return list(blocks)

    def lm_head(self, model: HFModel) -> nn.Module:
        """The module mapping final (normed) hidden states [..., H] to the logits the model returns [..., V],
        exactly (a family with logit soft-capping returns a wrapper that applies it)."""
        head = model.get_output_embeddings()
        if head is None:
            raise Geor1Error(f"{self.name()}: the model has no output embeddings (LM head)")
        return head

    # ------------------------------------------------------------------ prompts
    def set_pixel_bounds(self, processor: Any, model: HFModel, min_pixels: int | None, max_pixels: int | None) -> str:
        """Map Policy's image budget onto this family's own processor settings (and the model config, where the
        model reads the same setting): afterwards the vision tower encodes every image with at most `max_pixels` and
        at least `min_pixels` pixels, counting every tile and global view (None keeps the processor's own bound).
        Returns the settings chosen, in words (logged); a Geor1Error naming the family's knob when no setting of it
        meets the budget. Called once, before any prompt is encoded, with bounds from `check_pixel_bounds`."""
        raise Geor1Error(
            f"{self.name()}: geor1 has no mapping of min_pixels / max_pixels onto this family's processor; leave them "
            f"null and set the image size in the model folder's processor files"
        )

    def prepare_prompts(self, processor: Any, texts: list[str], images: list[list[Any]]) -> dict[str, Any]:
        """Keyword arguments for `processor(...)` given the chat-templated text of each prompt and its images
        (per prompt). Default: flat image list, or nested when `nested_images`; no images -> None."""
        if not any(images):
            return {"text": texts, "images": None}
        if self.nested_images:
            return {"text": texts, "images": images}
        return {"text": texts, "images": [im for row in images for im in row]}

    # ------------------------------------------------------------------ forwards
    def position_ids(self, model: HFModel, batch: dict[str, Tensor]) -> Tensor | None:
        """Explicit position ids for a full forward of `batch` (prompt + completion rows), or None to let the model
        compute its own (default). Position ids must not depend on left padding."""
        return None

    def final_hidden(self, outputs: Any) -> Tensor:
        """[N, L, H] hidden states the LM head reads (after the final norm) from the root model's forward run with
        `output_hidden_states=[-1]`; transformers ties `hidden_states[-1]` to the normed last hidden state."""
        return outputs.hidden_states[-1]

    # ------------------------------------------------------------------ shared prefix (only when shared_prefix)
    def begin_prefill(self, model: HFModel) -> None:
        """Reset per-call state the model keeps between forwards (e.g. cached RoPE offsets) before a prefill."""
        raise NotImplementedError(f"{self.name()} does not support a shared prefix")

    def prefix_state(self, model: HFModel, inputs: BatchFeature, group_size: int) -> Any:
        """After the prefill of B prompts: what the continuation needs (e.g. RoPE offsets), expanded to B*group_size
        rows (G per prompt), and installed in the model for `generate`."""
        raise NotImplementedError(f"{self.name()} does not support a shared prefix")

    def tail_position_ids(self, model: HFModel, state: Any, attention_mask: Tensor, tail: int) -> Tensor:
        """Position ids for the last `tail` tokens of rows whose full attention mask is `attention_mask` [N, P+T],
        continuing the prefill (for multimodal RoPE: text positions + each row's offset)."""
        raise NotImplementedError(f"{self.name()} does not support a shared prefix")


def check_pixel_bounds(min_pixels: int | None, max_pixels: int | None) -> None:
    """Policy's min_pixels / max_pixels: positive whole numbers of pixels (or None), the minimum not above the maximum;
    else a Geor1Error naming the setting."""
    for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise Geor1Error(f"{name} must be a positive number of pixels per image or null, got {value!r}")
    if min_pixels is not None and max_pixels is not None and min_pixels > max_pixels:
        raise Geor1Error(f"min_pixels ({min_pixels}) is larger than max_pixels ({max_pixels})")


def _first_attr(obj: nn.Module, paths: tuple[str, ...], family: str, what: str) -> Any:
    for path in paths:
        cur: Any = obj
        for part in path.split("."):
            cur = getattr(cur, part, None)
            if cur is None:
                break
        if cur is not None:
            return cur
    raise Geor1Error(f"{family}: cannot find the {what} of {type(obj).__name__} (looked for {', '.join(paths)})")


def register_adapter(cls: type[ArchAdapter]) -> type[ArchAdapter]:
    """Class decorator: serve `cls.model_types` with `cls` (a model type may be registered once)."""
    if not cls.model_types:
        raise ValueError(f"{cls.__name__} sets no model_types")
    for layout in cls.key_layouts.values():
        if layout not in LAYOUTS:
            raise ValueError(f"{cls.__name__}: layout '{layout}' is not one of {LAYOUTS}")
    for mt in cls.model_types:
        if mt in _REGISTRY and _REGISTRY[mt] is not cls:
            raise ValueError(f"model_type '{mt}' already served by {_REGISTRY[mt].__name__}")
        _REGISTRY[mt] = cls
    return cls


def supported_families() -> dict[str, str]:
    """{config.model_type: family name} of every registered adapter."""
    return {mt: cls.name() for mt, cls in sorted(_REGISTRY.items())}


def adapter_for(model: HFModel) -> ArchAdapter:
    """The adapter serving `model` (a transformers model, or its config), or a Geor1Error listing the supported
    families."""
    config = getattr(model, "config", model)
    model_type = getattr(config, "model_type", None)
    if model_type not in _REGISTRY:
        listed = ", ".join(f"{name} ({mt})" for mt, name in supported_families().items())
        raise Geor1Error(
            f"model family '{model_type}' ({type(model).__name__}) is not supported by geor1; supported: {listed}"
        )
    return _REGISTRY[model_type]()
