"""KV caches for shared-prefix scoring that stay correct under activation checkpointing.

Scoring G completions of B prompts prefills the B prompts once and lets the B*G continuations attend to that
prefix. A plain `DynamicCache` cannot do this in a training pass with gradient checkpointing: transformers drops the
cache inside checkpointed layers, and a backward recomputation would append the same keys a second time. These
caches are idempotent instead:

- `capture_cache()` (prefill from nothing): each layer keeps the first keys/values it sees and always returns the
  keys/values it is given, so recomputing a layer in backward changes nothing;
- `frozen_prefix(capture, group_size)`: each layer holds the prefix keys/values expanded to B*G rows
  ([N, kv_heads, P, head_dim]) and returns `cat(prefix, new)` without storing `new`.

Gradients flow into the prefix through the expanded tensors (`repeat_interleave` sums the G rows' gradients back).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import torch
from torch import Tensor, nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class _CaptureLayer(DynamicLayer):
    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.keys, self.values = key_states, value_states
        return key_states, value_states  # the prefix is empty: attend to this call's tokens only

    def get_seq_length(self) -> int:
        return 0  # a prefill starts from nothing, also when a recomputation runs after the first pass

    def repeated(self, group_size: int) -> _FrozenLayer:
        """The captured prefix, each row `group_size` times, as a read-only layer."""
        if self.keys is None or self.values is None:
            raise RuntimeError("the prefill did not reach this cache layer")
        return _FrozenLayer(self.keys.repeat_interleave(group_size, 0), self.values.repeat_interleave(group_size, 0))


class _FrozenLayer(DynamicLayer):
    def __init__(self, keys: Tensor, values: Tensor) -> None:
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values
        self._prefix = (keys, values)

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        keys, values = self._prefix
        return torch.cat([keys, key_states], -2), torch.cat([values, value_states], -2)


def capture_cache() -> DynamicCache:
    """An empty cache whose layers capture the prefill's keys/values (idempotent under recomputation)."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = _CaptureLayer
    return cache


def frozen_prefix(capture: DynamicCache, group_size: int) -> DynamicCache:
    """The captured B-row prefix, each row repeated `group_size` (G) times (rows b*G..b*G+G-1 = prompt b),
    read-only."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = None
    cache.layers = [cast(_CaptureLayer, layer).repeated(group_size) for layer in capture.layers]
    return cache


@contextmanager
def cache_through_checkpointing(layers: list[nn.Module]) -> Iterator[None]:
    """Let checkpointed decoder layers receive the cache (transformers drops it otherwise); safe only with the
    idempotent caches above."""
    saved = [layer.__dict__.get("_can_checkpoint_with_cache") for layer in layers]
    for layer in layers:
        layer.__dict__["_can_checkpoint_with_cache"] = True
    try:
        yield
    finally:
        for layer, old in zip(layers, saved, strict=True):
            if old is None:
                layer.__dict__.pop("_can_checkpoint_with_cache", None)
            else:
                layer._can_checkpoint_with_cache = old
