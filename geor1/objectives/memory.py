"""Peak memory, logged as `memory/peak_gb` every training step by every objective.

OOMs in VLM post-training come from image resolution (`max_pixels`), the group size G and the completion length;
the logged peak shows how close a run is to the limit. On a GPU it is CUDA's max allocated memory on the module's
device (what PyTorch's allocator handed out, since the process started or the last `torch.cuda.reset_peak_memory_
stats`); on CPU it is the process's peak resident set size (`ru_maxrss`, since the process started: Linux cannot
lower it). Both are per process: under DDP/FSDP each rank logs its own (rank 0's reaches TensorBoard).
"""

from __future__ import annotations

import resource
import sys

import lightning as L
import torch

GB = 1e9


def peak_memory_gb(device: torch.device | str | None = None) -> float:
    """Peak memory of this process in GB (1e9 bytes): CUDA max allocated on a CUDA `device`, else peak RSS."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GB
    return peak_rss_bytes() / GB


def peak_rss_bytes() -> int:
    """Peak resident set size of this process in bytes (`ru_maxrss` is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) if sys.platform == "darwin" else int(rss) * 1024


def log_peak_memory(module: L.LightningModule, batch_size: int = 1) -> float:
    """Log `memory/peak_gb` (this process's peak, see `peak_memory_gb`) from a training step; returns it.

    One line at the end of an objective's `training_step` (or where it logs its step scalars).
    """
    value = peak_memory_gb(module.device)
    module.log("memory/peak_gb", value, on_step=True, on_epoch=False, batch_size=batch_size)
    return value
