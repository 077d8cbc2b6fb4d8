"""The evaluation loops run from the short commands (`geor1 eval geolocate|pairing`, `geor1 geolocate`): the same
`EvalModule` and data modules as `geor1 test|predict --config configs/eval/...`, under a Trainer built here."""

from __future__ import annotations

import logging
import warnings
from typing import Any

from geor1 import Geor1Error

log = logging.getLogger(__name__)


def run_loop(
    stage: str,
    module: Any,
    datamodule: Any,
    devices: str | int = "auto",
    accelerator: str = "auto",
    strategy: str = "auto",
    num_nodes: int = 1,
) -> None:
    """`stage` ("test" or "predict") of `module` over `datamodule`, with Lightning's own progress bar off (the
    prediction writer shows samples per second) and no logger or checkpoints."""
    import lightning as L

    if stage not in ("test", "predict"):
        raise Geor1Error(f"stage must be 'test' or 'predict', got {stage!r}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*tensorboardX.*")
        trainer = L.Trainer(
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            num_nodes=num_nodes,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        if stage == "test":
            trainer.test(module, datamodule=datamodule, verbose=False)
        else:
            trainer.predict(module, datamodule=datamodule, return_predictions=False)
