"""torchmetrics Metrics: retrieval recall@k (geodesic error and pairing accuracy come with evaluation)."""

from geor1.metrics.retrieval import CrossViewRecall, recall_at_k

__all__ = ["CrossViewRecall", "recall_at_k"]
