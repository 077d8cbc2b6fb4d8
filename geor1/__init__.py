"""geor1: post-train vision-language models to reason about where on Earth a picture was taken (Geo-R1).

geor1 never downloads a model, a tokenizer or a data set: everything loads from local paths
(`local_files_only=True`). The entry points that load models (the `geor1` command, `geor1.model.loading`) also put
the Hugging Face libraries in offline mode with `set_offline_mode()`; importing geor1 changes no process setting.
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


class Geor1Error(Exception):
    """A user error (bad path, bad config value, bad data): the CLI prints its message in one line and exits 2."""


def set_offline_mode() -> None:
    """Hugging Face offline mode for this process and its children (forced, not defaulted: a run that silently
    reaches a hub is a bug in geor1's contract), no telemetry, and no tokenizers thread pool that forked data
    loader workers would inherit. Called by the entry points, not on import; effective for libraries imported
    after it (`huggingface_hub` reads the variables once, on import)."""
    os.environ.update(OFFLINE_ENV)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
