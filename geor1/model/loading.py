"""Loading a vision-language model from a local folder: checks, dtype, attention, LoRA (PEFT), freezing.

Everything loads with `local_files_only=True`: geor1 never reaches a model hub, whether or not the process is in
Hugging Face offline mode (`load_pretrained` switches it on too, for whatever loads after it). The family adapter is
resolved from config.json before any weight is read, so an unsupported family fails in a second with the list of
supported ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, PreTrainedModel

from geor1 import Geor1Error, set_offline_mode
from geor1.model.adapters import ArchAdapter, adapter_for

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoraSpec:
    """LoRA adapter settings (PEFT). The default targets the text model's attention and MLP projections only (named
    `language_model` in most families, `text_model` in Idefics3 / SmolVLM), never the vision tower's."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = (
        r".*\.(language_model|text_model)\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    )


def check_model_dir(path: str | Path) -> Path:
    """The folder a model loads from, or a Geor1Error that names it and says how to supply one."""
    p = Path(path).expanduser()
    if not p.exists():
        raise Geor1Error(
            f"model path '{p}' does not exist. geor1 never downloads models: pass the folder of a local Hugging Face "
            f"checkpoint (e.g. Qwen2.5-VL-7B-Instruct fetched with `huggingface-cli download` on a machine with "
            f"network access), or write a tiny test model with `geor1 model tiny --out {p}`."
        )
    if not p.is_dir():
        near = f" ('{p.parent}' is one)" if (p.parent / "config.json").is_file() else ""
        raise Geor1Error(
            f"model path '{p}' is a file, not a folder: pass the Hugging Face model folder that holds config.json, "
            f"the weights and the processor files{near}"
        )
    if not (p / "config.json").is_file():
        raise Geor1Error(
            f"model path '{p}' has no config.json, so it is not a Hugging Face model folder "
            f"(expected config.json, *.safetensors and the processor/tokenizer files)."
        )
    return p


def torch_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise Geor1Error(f"dtype '{dtype}' is not one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def load_pretrained(
    path: str | Path, dtype: str = "float32", attn_implementation: str | None = "sdpa"
) -> tuple[nn.Module, Any]:
    """(model, processor) from a local folder, never the network; Geor1Error for an unsupported family."""
    set_offline_mode()
    p = check_model_dir(path)
    torch_dt = torch_dtype(dtype)
    try:
        config = AutoConfig.from_pretrained(p, local_files_only=True)
    except (OSError, ValueError) as e:  # unreadable JSON, a model_type this transformers does not know
        raise Geor1Error(f"model folder '{p}': config.json cannot be read: {_first_line(e)}") from None
    adapter_for(config)  # refuse unsupported families before reading any weight
    if not _has_weights(p):
        raise Geor1Error(
            f"model folder '{p}' has no weights (*.safetensors or pytorch_model*.bin): a folder holding only the "
            f"config and processor files; point at the folder the model was saved to"
        )
    try:
        processor = AutoProcessor.from_pretrained(p, local_files_only=True)
    except (OSError, ValueError) as e:
        raise Geor1Error(
            f"model folder '{p}' has no usable processor files (preprocessor_config.json / processor_config.json "
            f"and the tokenizer files): copy them from the base model's folder, or save them with "
            f"`processor.save_pretrained` ({type(e).__name__})"
        ) from None
    model = AutoModelForImageTextToText.from_pretrained(
        p, local_files_only=True, dtype=torch_dt, attn_implementation=attn_implementation
    )
    return model, processor


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin"))


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def prepare_model(
    model: nn.Module, adapter: ArchAdapter, lora: LoraSpec | None, freeze_vision: bool, gradient_checkpointing: bool
) -> nn.Module:
    """Checkpointing, vision freezing (through the adapter) and LoRA, in train mode; returns the model to train
    (a PEFT wrapper when `lora` is set)."""
    if gradient_checkpointing:
        if not isinstance(model, PreTrainedModel):
            raise Geor1Error(f"gradient checkpointing needs a transformers model, got {type(model).__name__}")
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if freeze_vision:
        for p in adapter.vision_tower(model).parameters():
            p.requires_grad_(False)
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules)
        model = get_peft_model(model, cfg)
    return model.train()  # from_pretrained returns eval mode; Lightning's loops switch modes
