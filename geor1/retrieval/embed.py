"""Loading a trained cross-view encoder safely and embedding every sample of a shard folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geor1 import Geor1Error
from geor1.data.datamodule import PairToTensors, collate_tensors
from geor1.data.reader import shard_urls
from geor1.data.stream import ShardStream, StreamLoader

log = logging.getLogger(__name__)


def check_checkpoint(ckpt: str | Path) -> Path:
    """The encoder checkpoint's path, or a one-line error saying how to make one."""
    path = Path(ckpt)
    if not path.is_file():
        raise Geor1Error(
            f"checkpoint '{path}' does not exist (train one with "
            f"`geor1 fit --config configs/retrieval/geoworld_tiny.yaml`)"
        )
    return path


def load_contrastive(ckpt: str | Path, device: str = "cpu"):
    """(ContrastiveModule in eval mode, its data hyper-parameters) from a Lightning checkpoint, loaded with
    `weights_only=True` (no arbitrary unpickling)."""
    from geor1.objectives.contrastive import ContrastiveModule

    path = check_checkpoint(ckpt)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise Geor1Error(f"cannot read checkpoint '{path}' safely: {type(e).__name__}: {e}") from None
    hp = dict(state.get("hyper_parameters", {}))
    if "state_dict" not in state or not any(k.startswith("encoder.") for k in state["state_dict"]):
        raise Geor1Error(f"'{path}' is not a ContrastiveModule checkpoint (no encoder weights)")
    hp.pop("_instantiator", None)
    hp.pop("_class_path", None)
    allowed = {"backbone", "embed_dim", "shared", "temperature"}
    module = ContrastiveModule(**{k: v for k, v in hp.items() if k in allowed})
    try:
        module.load_state_dict(state["state_dict"])
    except RuntimeError as e:
        raise Geor1Error(f"checkpoint '{path}' does not match its own config: {str(e).splitlines()[0]}") from None
    data_hp = dict(state.get("datamodule_hyper_parameters", {}))
    return module.eval().to(device), data_hp


@torch.no_grad()
def embed_shards(
    module,
    root: str | Path,
    splits: list[str],
    ground_size: tuple[int, int],
    sat_size: int,
    batch_size: int = 128,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Embed every valid sample of `splits` under `root` -> (ground [N, D], sat [N, D], meta rows)."""
    from tqdm import tqdm

    grounds, sats, meta = [], [], []
    for split in splits:
        shards = shard_urls(root, split)
        if not shards:
            raise Geor1Error(f"no shards for split '{split}' in {root}")
        stream = ShardStream(shards, decode=PairToTensors(ground_size, sat_size).decode_raw)
        loader = StreamLoader(stream, batch_size=batch_size, collate_fn=collate_tensors)
        for batch in tqdm(loader, desc=f"embed {split}", unit="batch", disable=None):
            if not batch["key"]:
                continue
            g, s = module.embed({"ground": batch["ground"].to(device), "sat": batch["sat"].to(device)})
            grounds.append(g.float().cpu().numpy())
            sats.append(s.float().cpu().numpy())
            for key, m in zip(batch["key"], batch["meta"], strict=True):
                meta.append(
                    {
                        "key": key,
                        "lat": float(m["lat"]),
                        "lon": float(m["lon"]),
                        "split": split,
                        "city": m.get("city"),
                        "country": m.get("country"),
                        "source": m.get("source"),
                    }
                )
    if not meta:
        raise Geor1Error(f"no valid samples to embed in {root} ({', '.join(splits)})")
    return np.concatenate(grounds), np.concatenate(sats), meta
