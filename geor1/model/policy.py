"""`Policy`: a vision-language model + its processor, behind the few calls the objectives make.

    encode(prompts)                       -> left-padded chat inputs of B prompts (images expanded to their tokens)
    encode_sft(prompts, responses)        -> right-padded prompt+response ids with labels on response tokens only
    generate(prompts, num_samples=G)      -> Rollout: B*G completions, their ids, mask and text
    token_logprobs(inputs, ids, mask, G)  -> [B*G, T] log-probabilities of given completions
    save_pretrained(dir)                  -> a folder plain `transformers` loads back

Models load only from local folders (geor1 runs Hugging Face in offline mode). Qwen2.5-VL is the reference
architecture; any `AutoModelForImageTextToText` whose processor takes `text=` and `images=` should work.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoModelForImageTextToText, AutoProcessor, BatchFeature

from geor1 import Geor1Error
from geor1.model.chat import Prompt

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
IGNORE_INDEX = -100


@dataclass
class LoraSpec:
    """LoRA adapter settings (PEFT). The default targets the language model's attention and MLP projections only."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = (
        r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    )


@dataclass
class Rollout:
    """G completions for each of B prompts, grouped: rows b*G .. b*G+G-1 belong to prompt b."""

    inputs: BatchFeature  # the B prompts, left-padded, as given to `generate`
    completion_ids: Tensor  # [B*G, T] long, pad after the first EOS
    completion_mask: Tensor  # [B*G, T] bool, True up to and including the first EOS
    texts: list[str]  # B*G decoded completions (special tokens removed)
    num_samples: int  # G
    truncated: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))  # [B*G] no EOS within T

    @property
    def lengths(self) -> Tensor:
        return self.completion_mask.sum(-1)


def check_model_dir(path: str | Path) -> Path:
    """The folder a model loads from, or a Geor1Error that names it and says how to supply one."""
    p = Path(path).expanduser()
    if not p.exists():
        raise Geor1Error(
            f"model path '{p}' does not exist. geor1 never downloads models: pass the folder of a local Hugging Face "
            f"checkpoint (e.g. Qwen2.5-VL-7B-Instruct fetched with `huggingface-cli download` on a machine with "
            f"network access), or write a tiny test model with `geor1 model tiny --out {p}`."
        )
    if not (p / "config.json").is_file():
        raise Geor1Error(
            f"model path '{p}' has no config.json, so it is not a Hugging Face model folder "
            f"(expected config.json, *.safetensors and the processor/tokenizer files)."
        )
    return p


def load_pretrained(path: str | Path, dtype: str = "float32", attn_implementation: str | None = "sdpa"):
    """(model, processor) from a local folder, never the network."""
    p = check_model_dir(path)
    if dtype not in DTYPES:
        raise Geor1Error(f"dtype '{dtype}' is not one of {sorted(DTYPES)}")
    model = AutoModelForImageTextToText.from_pretrained(
        p, local_files_only=True, dtype=DTYPES[dtype], attn_implementation=attn_implementation
    )
    processor = AutoProcessor.from_pretrained(p, local_files_only=True)
    return model, processor


def selective_log_softmax(logits: Tensor, ids: Tensor, chunk: int = 8) -> Tensor:
    """log softmax(logits)[ids] without materialising [N, T, V] log-probs at once.

    logits: [N, T, V] float; ids: [N, T] long -> [N, T] float32.
    """
    out = []
    for lg, ix in zip(logits.split(chunk), ids.split(chunk)):
        lg = lg.float()
        picked = lg.gather(-1, ix.unsqueeze(-1)).squeeze(-1)
        out.append(picked - torch.logsumexp(lg, dim=-1))
    return torch.cat(out)


def select_prompts(inputs: BatchFeature, rows: list[int], vision_start_id: int | None) -> BatchFeature:
    """The prompts `rows` (any order, repeats allowed) of a batch, with their images.

    `pixel_values` is flat over all images' patches ([sum_i patches_i, D]) and `image_grid_thw` is [n_images, 3];
    each image opens with one `vision_start_id` token, which tells how many images each row holds.
    """
    index = torch.as_tensor(rows, dtype=torch.long, device=inputs["input_ids"].device)
    out = {k: v[index] for k, v in inputs.items() if k in _ROW_KEYS}
    if "image_grid_thw" in inputs:
        if vision_start_id is None:
            raise ValueError("selecting prompts with images needs vision_start_id")
        grid = inputs["image_grid_thw"]  # [n_images, 3]
        patches = grid.prod(-1)  # [n_images]
        images_per_row = (inputs["input_ids"] == vision_start_id).sum(-1)  # [B]
        first_image = torch.cumsum(images_per_row, 0) - images_per_row
        image_idx = [i for r in index.tolist() for i in range(int(first_image[r]), int(first_image[r] +
                                                                                      images_per_row[r]))]
        patch_start = torch.cumsum(patches, 0) - patches
        patch_idx = [torch.arange(int(patch_start[i]), int(patch_start[i] + patches[i])) for i in image_idx]
        out["image_grid_thw"] = grid[image_idx]
        out["pixel_values"] = inputs["pixel_values"][torch.cat(patch_idx).to(grid.device)] if patch_idx else \
            inputs["pixel_values"][:0]
    return BatchFeature(out)


def repeat_prompts(inputs: BatchFeature, repeats: int, vision_start_id: int | None = None) -> BatchFeature:
    """Each of B prompts `repeats` times (rows b*G..b*G+G-1 = prompt b), images included."""
    if repeats == 1:
        return inputs
    b = inputs["input_ids"].shape[0]
    return select_prompts(inputs, [r for r in range(b) for _ in range(repeats)], vision_start_id)


def slice_prompts(inputs: BatchFeature, prompts: slice, vision_start_id: int | None) -> BatchFeature:
    """Prompts `prompts.start .. prompts.stop - 1` of a batch, images included."""
    return select_prompts(inputs, list(range(inputs["input_ids"].shape[0]))[prompts], vision_start_id)


_ROW_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")


class Policy(nn.Module):
    """A vision-language policy loaded from a local Hugging Face folder.

    Args:
        path: local model folder (config.json, safetensors, processor files). Never a hub id.
        lora: LoRA settings; None means full fine-tuning.
        dtype: weights dtype, "float32" | "bfloat16" | "float16".
        freeze_vision: keep the vision tower fixed (the paper trains it).
        min_pixels: smallest image area after resizing (None: the processor's own).
        max_pixels: largest image area after resizing; with the group size G it decides memory (None: processor's).
        attn_implementation: "sdpa", "eager" or "flash_attention_2".
        gradient_checkpointing: recompute activations in backward to save memory.
    """

    def __init__(
        self,
        path: str,
        lora: LoraSpec | None = None,
        dtype: str = "float32",
        freeze_vision: bool = False,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        attn_implementation: str | None = "sdpa",
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        model, processor = load_pretrained(path, dtype, attn_implementation)
        self._setup(model, processor, lora, freeze_vision, min_pixels, max_pixels, gradient_checkpointing)
        self.source = str(path)

    # ------------------------------------------------------------------ set-up
    def _setup(self, model, processor, lora, freeze_vision, min_pixels, max_pixels, gradient_checkpointing) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        if min_pixels is not None or max_pixels is not None:
            ip = processor.image_processor
            lo = min_pixels if min_pixels is not None else ip.size["shortest_edge"]
            hi = max_pixels if max_pixels is not None else ip.size["longest_edge"]
            if lo > hi:
                raise Geor1Error(f"min_pixels ({lo}) is larger than max_pixels ({hi})")
            ip.size = {"shortest_edge": lo, "longest_edge": hi}
        self.lora = lora
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if freeze_vision:
            for p in self.vision_tower(model).parameters():
                p.requires_grad_(False)
        if lora is not None:
            from peft import LoraConfig, get_peft_model

            cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=lora.target_modules)
            model = get_peft_model(model, cfg)
        self.model = model.train()  # from_pretrained returns eval mode; Lightning's loops switch modes
        gc = model.generation_config
        eos = gc.eos_token_id if gc.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids: list[int] = list(eos) if isinstance(eos, (list, tuple)) else [int(eos)]
        self.pad_id: int = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]
        cfg = self.base_model().config
        self.image_token_id: int | None = getattr(cfg, "image_token_id", None)
        self.vision_start_id: int | None = getattr(cfg, "vision_start_token_id", None)

    def base_model(self) -> nn.Module:
        """The transformers model, under any PEFT wrapper."""
        return self.model.get_base_model() if self.lora is not None else self.model

    @staticmethod
    def vision_tower(model: nn.Module) -> nn.Module:
        for owner in (getattr(model, "model", None), model):
            if owner is not None and hasattr(owner, "visual"):
                return owner.visual
        raise Geor1Error(f"cannot find the vision tower of {type(model).__name__} (no `.visual`)")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ inputs
    def encode(self, prompts: list[Prompt]) -> BatchFeature:
        """Left-padded chat inputs for B prompts, ending with the assistant header (ready to generate)."""
        texts = [self.processor.apply_chat_template(p.messages(), tokenize=False, add_generation_prompt=True)
                 for p in prompts]
        images = [im.convert("RGB") for p in prompts for im in p.images]
        enc = self.processor(text=texts, images=images or None, return_tensors="pt", padding=True,
                             padding_side="left")
        return enc.to(self.device)

    def encode_sft(self, prompts: list[Prompt], responses: list[str], max_length: int | None = None
                   ) -> tuple[BatchFeature, Tensor]:
        """Right-padded prompt+response ids and labels: -100 on system, user, image and padding tokens; the
        response tokens and the closing EOS keep their ids. Responses longer than `max_length` are cut at the end."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        enc = self.encode(prompts)
        eos = self.tokenizer.convert_ids_to_tokens(self.eos_ids[0])
        resp = self.tokenizer([r + eos for r in responses], add_special_tokens=False)["input_ids"]
        rows, labels = [], []
        for b in range(len(prompts)):
            keep = enc["attention_mask"][b].bool()
            p_ids = enc["input_ids"][b][keep]
            r_ids = torch.tensor(resp[b], dtype=torch.long, device=p_ids.device)
            if max_length is not None:
                if len(p_ids) >= max_length:
                    raise Geor1Error(f"prompt of sample {b} is {len(p_ids)} tokens, not below max_length="
                                     f"{max_length}; lower max_pixels or raise max_length")
                r_ids = r_ids[: max_length - len(p_ids)]
            rows.append(torch.cat([p_ids, r_ids]))
            labels.append(torch.cat([torch.full_like(p_ids, IGNORE_INDEX), r_ids]))
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long, device=self.device)
        attention = torch.zeros_like(input_ids)
        label_ids = torch.full_like(input_ids, IGNORE_INDEX)
        for b, (r, lab) in enumerate(zip(rows, labels)):
            input_ids[b, : len(r)] = r
            attention[b, : len(r)] = 1
            label_ids[b, : len(r)] = lab
        out = BatchFeature({"input_ids": input_ids, "attention_mask": attention})
        for k in ("pixel_values", "image_grid_thw"):
            if k in enc:
                out[k] = enc[k]
        if "mm_token_type_ids" in enc:
            out["mm_token_type_ids"] = (input_ids == self.image_token_id).long()
        return out, label_ids

    # ------------------------------------------------------------------ sampling and scoring
    @torch.no_grad()
    def generate(
        self,
        prompts: list[Prompt],
        num_samples: int = 1,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        do_sample: bool = True,
        share_prefix: bool = True,
    ) -> Rollout:
        """Sample `num_samples` completions per prompt (greedy when do_sample is False), in eval mode.

        With `share_prefix` (and a model that supports it, like Qwen2.5-VL) the B prompts, images included, are
        prefilled once and their KV cache is expanded to B*G rows; the G samples then decode from it. Without it,
        every one of the B*G rows prefills its own copy of the prompt.
        """
        if not do_sample and num_samples > 1:
            raise ValueError("greedy decoding gives one completion per prompt; use do_sample=True for G > 1")
        inputs = self.encode(prompts)
        was_training = self.model.training
        self.model.eval()
        try:
            kwargs = dict(do_sample=do_sample, max_new_tokens=max_new_tokens, pad_token_id=self.pad_id,
                          eos_token_id=self.eos_ids)
            if do_sample:
                kwargs.update(temperature=temperature, top_p=top_p, top_k=None)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            if share_prefix and self.supports_shared_prefix:
                cache = self._prefill(inputs, num_samples)
                out = self.model.generate(input_ids=inputs["input_ids"].repeat_interleave(num_samples, 0),
                                          attention_mask=inputs["attention_mask"].repeat_interleave(num_samples, 0),
                                          past_key_values=cache, **kwargs)
            else:
                out = self.model.generate(**inputs, num_return_sequences=num_samples, **kwargs)
        finally:
            self.model.train(was_training)
        completion = out[:, inputs["input_ids"].shape[1]:]
        mask, truncated = completion_mask(completion, self.eos_ids)
        completion = completion.masked_fill(~mask, self.pad_id)
        texts = self.tokenizer.batch_decode(completion, skip_special_tokens=True)
        return Rollout(inputs, completion, mask, texts, num_samples, truncated)

    @property
    def supports_shared_prefix(self) -> bool:
        """Models whose multimodal RoPE offsets live in `model.rope_deltas` (Qwen2-VL, Qwen2.5-VL)."""
        inner = getattr(self.base_model(), "model", None)
        return inner is not None and hasattr(inner, "rope_deltas")

    def _prefill(self, inputs: BatchFeature, repeats: int):
        """Run the B prompts but their last token once (vision tower included) -> a KV cache expanded to B*G rows
        (and the multimodal RoPE offsets with it). The last prompt token is left to the caller, so that its logits
        predict the first completion token."""
        inner = self.base_model().model
        inner.rope_deltas = None
        head = {k: (v[:, :-1] if k in _ROW_KEYS else v) for k, v in inputs.items()}
        cache = self.model(**head, use_cache=True, logits_to_keep=1).past_key_values
        cache.batch_repeat_interleave(repeats)
        inner.rope_deltas = inner.rope_deltas.repeat_interleave(repeats, 0)
        return cache

    def token_logprobs(self, inputs: BatchFeature, completion_ids: Tensor, completion_mask: Tensor,
                       num_samples: int = 1, temperature: float = 1.0, share_prefix: bool = True) -> Tensor:
        """Per-token log-probabilities of completions given their prompts (differentiable).

        inputs: B left-padded prompts (from `encode`); completion_ids, completion_mask: [B*G, T] with rows
        grouped by prompt -> [B*G, T] float32 (zero where the mask is False). With `share_prefix`, each prompt
        (vision tower included) runs once and its KV cache serves its G completions; gradients flow through it.
        """
        t = completion_ids.shape[1]
        if share_prefix and self.supports_shared_prefix and num_samples > 1:
            cache = self._prefill(inputs, num_samples)
            prompt_mask = inputs["attention_mask"].repeat_interleave(num_samples, 0)
            attention = torch.cat([prompt_mask, completion_mask.long()], 1)  # [N, P+T]
            tail = torch.cat([inputs["input_ids"][:, -1:].repeat_interleave(num_samples, 0), completion_ids], 1)
            positions = (attention.cumsum(-1) - 1).clamp(min=0)[:, -(t + 1):]  # [N, 1+T] text positions
            positions = positions + self.base_model().model.rope_deltas  # multimodal RoPE offset per row
            logits = self.model(input_ids=tail, attention_mask=attention, past_key_values=cache,
                                position_ids=positions.unsqueeze(0).expand(3, -1, -1), use_cache=True).logits
            logits = logits[:, :-1]  # [N, T, V]
        else:
            full = repeat_prompts(inputs, num_samples, self.vision_start_id)
            batch = dict(full)
            batch["input_ids"] = torch.cat([full["input_ids"], completion_ids], 1)
            batch["attention_mask"] = torch.cat([full["attention_mask"], completion_mask.long()], 1)
            if "mm_token_type_ids" in full:
                batch["mm_token_type_ids"] = torch.cat([full["mm_token_type_ids"],
                                                        torch.zeros_like(completion_ids)], 1)
            logits = self.model(**batch, use_cache=False, logits_to_keep=t + 1).logits[:, :-1]  # [N, T, V]
        if temperature != 1.0:
            logits = logits / temperature
        return selective_log_softmax(logits, completion_ids) * completion_mask

    def forward(self, **batch: Tensor):
        return self.model(**batch)

    # ------------------------------------------------------------------ export
    def save_pretrained(self, out_dir: str | Path, merge_lora: bool = True) -> Path:
        """Write a folder that `AutoModelForImageTextToText.from_pretrained` loads (LoRA merged into the weights when
        `merge_lora`; the adapter alone also goes to `out_dir/adapter`)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model = self.model
        if self.lora is not None:
            model.save_pretrained(out / "adapter")
            if not merge_lora:
                self.processor.save_pretrained(out / "adapter")
                return out
            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(out, safe_serialization=True)
        self.processor.save_pretrained(out)
        return out


def completion_mask(completion: Tensor, eos_ids: list[int]) -> tuple[Tensor, Tensor]:
    """[N, T] ids -> ([N, T] bool mask up to and including the first EOS, [N] bool "no EOS" flags)."""
    is_eos = torch.zeros_like(completion, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= completion == e
    seen_before = (is_eos.cumsum(-1) - is_eos.long()) > 0  # an EOS strictly before this position
    return ~seen_before, ~is_eos.any(-1)
