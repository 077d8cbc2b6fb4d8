"""Architecture adapters: what geor1 needs to know about one vision-language model family, and nothing else.

`adapter_for(model)` picks the registered adapter whose `model_types` contains `model.config.model_type`; a model
with none is refused with a Geor1Error listing the supported families (never a silently wrong result).

An adapter says:
- how every processor output is indexed along dim 0 (`key_layouts`), so `geor1.model.batching` can select, repeat
  and extend prompts without knowing the family ("row", "image", "patch" or "seq"; see `LAYOUTS`);
- how many images each prompt row holds and how many patches each image has;
- where the vision tower, its blocks, the text decoder blocks and the LM head are (freezing, FSDP2, checkpointing,
  tiled log-probs);
- whether prompts may be prefilled once and their KV cache reused by G samples (`shared_prefix`), and how.

Methods take the transformers model itself (`*ForConditionalGeneration`, under no PEFT wrapper: `Policy` passes
`policy.base_model()`).
"""

from __future__ import annotations

# Every family module registers its adapters on import.
from geor1.model.adapters import gemma3, idefics3, internvl, llava_onevision, qwen  # noqa: F401
from geor1.model.adapters.base import LAYOUTS, ArchAdapter, adapter_for, register_adapter, supported_families

__all__ = ["LAYOUTS", "ArchAdapter", "adapter_for", "register_adapter", "supported_families"]
