"""Synthetic chain-of-thought exemplars (the scaffolding data) and their fact-check."""
