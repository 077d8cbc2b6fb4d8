"""Samples, shards, data sets and the LightningDataModules."""

from geor1.data.toy import ToyPairing, ToyPairingDataModule

__all__ = ["ToyPairing", "ToyPairingDataModule"]
