"""geor1: post-train vision-language models to reason about where on Earth a picture was taken (Geo-R1).

Importing geor1 puts the Hugging Face libraries in offline mode: geor1 never downloads a model, a tokenizer or a
data set; everything loads from local paths.
"""

import os

# Forced, not defaulted: a run that silently reaches a hub is a bug in this codebase's contract.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"


class Geor1Error(Exception):
    """A user error (bad path, bad config value, bad data): the CLI prints its message in one line and exits 2."""
