"""Samples, shards, data sets and the LightningDataModules (imported lazily: `geor1 --help` stays fast)."""

from geor1._lazy import lazy_exports

_EXPORTS = {
    "ChatSample": "geor1.data.sample",
    "Prompt": "geor1.data.sample",
    "collate_samples": "geor1.data.sample",
    "Batch": "geor1.data.stream",
    "ShardStream": "geor1.data.stream",
    "PairSample": "geor1.data.schema",
    "SampleError": "geor1.data.schema",
    "PairShardDataModule": "geor1.data.datamodule",
    "normalise": "geor1.data.datamodule",
    "ChatShardDataModule": "geor1.data.chat",
    "ChatDecoder": "geor1.data.chat",
    "ToyPairing": "geor1.data.toy",
    "ToyPairingDataModule": "geor1.data.toy",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports("geor1.data", _EXPORTS)
