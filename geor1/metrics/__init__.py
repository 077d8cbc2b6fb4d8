"""torchmetrics Metrics: geodesic error, pairing accuracy, cross-view recall@k; the Wilson interval."""

from geor1.metrics.geodesic import THRESHOLDS_KM, GeodesicError, PairingAccuracy
from geor1.metrics.intervals import wilson_interval
from geor1.metrics.retrieval import CrossViewRecall, recall_at_k

__all__ = ["THRESHOLDS_KM", "CrossViewRecall", "GeodesicError", "PairingAccuracy", "recall_at_k", "wilson_interval"]
