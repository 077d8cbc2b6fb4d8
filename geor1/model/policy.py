"""`Policy`: a vision-language model + its processor, behind the few calls the objectives make.

    encode(prompts)                       -> left-padded chat inputs of B prompts (images expanded to their tokens)
    encode_sft(prompts, responses)        -> right-padded prompt+response inputs with labels on response tokens only
    generate(prompts, group_size=G)       -> Rollout: B*G completions, their ids, mask and text
    token_logprobs(inputs, ids, mask, G)  -> [B*G, T] log-probabilities of given completions
    final_hidden(batch), lm_head          -> [N, L, H] normed hidden states and the head (tiled SFT loss)
    save_pretrained(dir)                  -> a folder plain `transformers` loads back

Loading lives in `geor1.model.loading`, prompt batching in `geor1.model.batching`, and everything that depends on
the model family in its adapter (`geor1.model.adapters`); a family without one is refused with the list of those
supported.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import BatchFeature, DynamicCache, GenerationConfig

from geor1 import Geor1Error
from geor1.data.sample import Prompt
from geor1.model.adapters import ArchAdapter, adapter_for
from geor1.model.adapters.base import HFModel, check_pixel_bounds
from geor1.model.batching import append_completions, repeat_rows, select_rows, slice_rows
from geor1.model.loading import DTYPES, LoraSpec, check_model_dir, load_pretrained, prepare_model
from geor1.model.logprobs import entropy_from_logits, tiled_token_logprobs, tiled_token_logprobs_and_entropy
from geor1.model.prefix_cache import cache_through_checkpointing, capture_cache, frozen_prefix

log = logging.getLogger(__name__)

IGNORE_INDEX = -100

__all__ = [
    "DTYPES",
    "IGNORE_INDEX",
    "LoraSpec",
    "Policy",
    "Prompt",
    "Rollout",
    "check_model_dir",
    "completion_mask",
    "load_pretrained",
    "selective_log_softmax",
]


@dataclass
class Rollout:
    """G completions for each of B prompts, grouped: rows b*G .. b*G+G-1 belong to prompt b."""

    inputs: BatchFeature  # the B prompts, left-padded, as given to `generate`
    completion_ids: Tensor  # [B*G, T] long, pad after the first EOS
    completion_mask: Tensor  # [B*G, T] bool, True up to and including the first EOS
    texts: list[str]  # B*G decoded completions (special tokens removed)
    group_size: int  # G, samples per prompt
    truncated: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))  # [B*G] no EOS within T
    sample_logprobs: Tensor | None = None  # [B*G, T] log-probs under the sampling distribution (output_logprobs)

    @property
    def lengths(self) -> Tensor:
        return self.completion_mask.sum(-1)


def selective_log_softmax(logits: Tensor, ids: Tensor, chunk: int = 8) -> Tensor:
    """log softmax(logits)[ids], `chunk` rows at a time (the full-logits reference path).

    logits: [N, T, V] float; ids: [N, T] long -> [N, T] float32.
    """
    out = []
    for lg, ix in zip(logits.split(chunk), ids.split(chunk), strict=True):
        lg = lg.float()
        picked = lg.gather(-1, ix.unsqueeze(-1)).squeeze(-1)
        out.append(picked - torch.logsumexp(lg, dim=-1))
    return torch.cat(out)


_NO_LOGITS = torch.zeros(0, dtype=torch.long)  # logits_to_keep: keep no position (hidden states only)


class Policy(nn.Module):
    """A vision-language policy loaded from a local Hugging Face folder.

    Args:
        path: local model folder (config.json, safetensors, processor files). Never a hub id.
        lora: LoRA settings; None means full fine-tuning.
        dtype: weights dtype, "float32" | "bfloat16" | "float16".
        freeze_vision: keep the vision tower fixed (the paper trains it).
        min_pixels: fewest pixels the vision tower encodes per image (None: the processor's own).
        max_pixels: most pixels the vision tower encodes per image, all its tiles and views counted; with the group
            size G it decides memory (None: the processor's own). The same budget for every family: each adapter
            maps it onto its processor's own settings (Qwen's size, Idefics3/SmolVLM's size.longest_edge, InternVL's
            max_patches, LLaVA-OneVision's image_grid_pinpoints; Gemma3's fixed size is checked) or refuses it.
        attn_implementation: "sdpa", "eager" or "flash_attention_2".
        gradient_checkpointing: recompute activations in backward to save memory.
        logprob_tile: positions per LM-head tile in `token_logprobs` (no [N, T, V] logits); None: the full-logits
            reference path.
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
        logprob_tile: int | None = 32,
    ) -> None:
        super().__init__()
        model, processor = load_pretrained(path, dtype, attn_implementation)
        self._setup(model, processor, lora, freeze_vision, min_pixels, max_pixels, gradient_checkpointing, logprob_tile)
        self.source = str(path)

    # ------------------------------------------------------------------ set-up
    def _setup(
        self,
        model,
        processor,
        lora: LoraSpec | None,
        freeze_vision: bool,
        min_pixels: int | None,
        max_pixels: int | None,
        gradient_checkpointing: bool,
        logprob_tile: int | None = 32,
    ) -> None:
        self.adapter: ArchAdapter = adapter_for(model)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        if min_pixels is not None or max_pixels is not None:
            check_pixel_bounds(min_pixels, max_pixels)
            chosen = self.adapter.set_pixel_bounds(processor, model, min_pixels, max_pixels)
            log.info(
                "%s image budget min_pixels=%s, max_pixels=%s: %s", self.adapter.name(), min_pixels, max_pixels, chosen
            )
        if logprob_tile is not None and logprob_tile < 1:
            raise Geor1Error(f"logprob_tile must be a positive number of positions or null, got {logprob_tile}")
        self.logprob_tile = logprob_tile
        self.lora = lora
        self.model: HFModel = prepare_model(model, self.adapter, lora, freeze_vision, gradient_checkpointing)
        gc = model.generation_config
        eos = gc.eos_token_id if gc.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids: list[int] = list(eos) if isinstance(eos, (list, tuple)) else [int(eos)]
        self.pad_id: int = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.bos_id: int | None = gc.bos_token_id if gc.bos_token_id is not None else self.tokenizer.bos_token_id
        cfg = self.base_model().config
        self.image_token_id: int | None = getattr(cfg, "image_token_id", getattr(cfg, "image_token_index", None))
        self.vision_start_id: int | None = getattr(cfg, "vision_start_token_id", None)

    def base_model(self) -> HFModel:
        """The transformers model, under any PEFT wrapper."""
        return self.model.get_base_model() if self.lora is not None else self.model

    @staticmethod
    def vision_tower(model: HFModel) -> nn.Module:
        """The vision tower of a transformers model (PEFT-wrapped or not), found by its family's adapter."""
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        return adapter_for(base).vision_tower(base)

    @property
    def lm_head(self) -> nn.Module:
        """The module mapping `final_hidden` states [..., H] to the logits [..., V] (call it, never read .weight)."""
        return self.adapter.lm_head(self.base_model())

    @property
    def supports_shared_prefix(self) -> bool:
        return self.adapter.shared_prefix

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ batching
    def select_prompts(self, inputs: BatchFeature, rows: list[int]) -> BatchFeature:
        """Prompts `rows` (any order, repeats allowed) of an `encode` batch, with every processor output."""
        return select_rows(inputs, rows, self.adapter, self.base_model())

    def repeat_prompts(self, inputs: BatchFeature, group_size: int) -> BatchFeature:
        """Each of the B prompts of an `encode` batch `group_size` times (rows b*G .. b*G+G-1 = prompt b)."""
        return repeat_rows(inputs, group_size, self.adapter, self.base_model())

    def slice_prompts(self, inputs: BatchFeature, prompts: slice) -> BatchFeature:
        return slice_rows(inputs, prompts, self.adapter, self.base_model())

    # ------------------------------------------------------------------ inputs
    def encode(self, prompts: list[Prompt]) -> BatchFeature:
        """Left-padded chat inputs for B prompts, ending with the assistant header (ready to generate)."""
        texts = [
            self.processor.apply_chat_template(p.messages(), tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
        images = [[im.convert("RGB") for im in p.images] for p in prompts]
        kwargs = self.adapter.prepare_prompts(self.processor, texts, images)
        enc = self.processor(**kwargs, return_tensors="pt", padding=True, padding_side="left")
        enc = self.adapter.finish_inputs(enc, self.base_model())  # e.g. per-row keys the processor left short
        for key, value in enc.items():
            if value is not None:
                self.adapter.layout(key)  # an output this family's adapter does not know is an error, now
        return enc.to(self.device)

    def encode_sft(
        self, prompts: list[Prompt], responses: list[str], max_length: int | None = None
    ) -> tuple[BatchFeature, Tensor]:
        """Right-padded prompt+response inputs and labels: -100 on system, user, image and padding tokens; the
        response tokens and the closing EOS keep their ids. Responses longer than `max_length` are cut at the end.
        Every "seq" processor output is re-laid out with the tokens (filled with its adapter value over the
        response); per-row, per-image and per-patch outputs are kept as the processor gave them."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        enc = self.encode(prompts)
        eos = self.tokenizer.convert_ids_to_tokens(self.eos_ids[0])
        resp = self.tokenizer([r + eos for r in responses], add_special_tokens=False)["input_ids"]
        seq_keys = [k for k, v in enc.items() if v is not None and self.adapter.layout(k) == "seq"]
        rows: list[dict[str, Tensor]] = []
        labels = []
        for b in range(len(prompts)):
            keep = enc["attention_mask"][b].bool()
            p_ids = enc["input_ids"][b][keep]
            r_ids = torch.tensor(resp[b], dtype=torch.long, device=p_ids.device)
            if max_length is not None:
                if len(p_ids) >= max_length:
                    raise Geor1Error(
                        f"prompt of sample {b} is {len(p_ids)} tokens, not below max_length="
                        f"{max_length}; lower max_pixels or raise max_length"
                    )
                r_ids = r_ids[: max_length - len(p_ids)]
            row = {"input_ids": torch.cat([p_ids, r_ids])}
            for k in seq_keys:
                if k != "input_ids":
                    v = enc[k][b][keep]
                    row[k] = torch.cat([v, torch.full_like(r_ids, self.adapter.fill(k), dtype=v.dtype)])
            rows.append(row)
            labels.append(torch.cat([torch.full_like(p_ids, IGNORE_INDEX), r_ids]))
        length = max(len(r["input_ids"]) for r in rows)
        out: dict[str, Any] = {k: v for k, v in enc.items() if v is not None and k not in seq_keys}
        for k in seq_keys:
            fill = self.pad_id if k == "input_ids" else 0
            out[k] = torch.full((len(rows), length), fill, dtype=enc[k].dtype, device=self.device)
            for b, row in enumerate(rows):
                out[k][b, : len(row[k])] = row[k]
        label_ids = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long, device=self.device)
        for b, lab in enumerate(labels):
            label_ids[b, : len(lab)] = lab
        return BatchFeature(out), label_ids

    # ------------------------------------------------------------------ sampling
    def sampling_config(
        self,
        max_new_tokens: int,
        do_sample: bool,
        temperature: float,
        top_p: float,
        top_k: int | None,
        output_scores: bool = False,
    ) -> GenerationConfig:
        """A clean GenerationConfig: exactly the given sampling settings; of the checkpoint's generation config only
        the eos / pad / bos ids (a hub config's repetition_penalty, top_k, temperature... never leak in)."""
        params = GenerationConfig._get_default_generation_params()
        params.update(
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            num_beams=1,
            temperature=temperature if do_sample else 1.0,
            top_p=top_p if do_sample else 1.0,
            top_k=(top_k or 0) if do_sample else 0,
            repetition_penalty=1.0,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            bos_token_id=self.bos_id,
            output_scores=output_scores,
            return_dict_in_generate=output_scores,
        )
        params.pop("max_length", None)
        return GenerationConfig(**params)

    @torch.no_grad()
    def generate(
        self,
        prompts: list[Prompt],
        group_size: int = 1,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        do_sample: bool = True,
        share_prefix: bool = True,
        top_k: int | None = None,
        synced_gpus: bool = False,
        output_logprobs: bool = False,
    ) -> Rollout:
        """Sample `group_size` (G) completions per prompt (greedy when do_sample is False), in eval mode, with exactly
        temperature / top_p / top_k (None or 0: off) and nothing else from the checkpoint's generation config.

        With `share_prefix` (and a family that supports it) the B prompts, images included, are prefilled once and
        their KV cache is expanded to B*G rows; the G samples then decode from it. `synced_gpus` keeps this rank
        stepping until every rank is done (sharded models). `output_logprobs` also returns the sampled tokens'
        log-probs under the distribution actually sampled from (after the warpers).
        """
        if not do_sample and group_size > 1:
            raise ValueError("greedy decoding gives one completion per prompt; use do_sample=True for G > 1")
        inputs = self.encode(prompts)
        base = self.base_model()
        gen_config = self.sampling_config(max_new_tokens, do_sample, temperature, top_p, top_k, output_logprobs)
        was_training = self.model.training
        saved_config = base.generation_config
        self.model.eval()
        base.generation_config = gen_config  # transformers fills unset values from the model's own config
        try:
            if share_prefix and self.adapter.shared_prefix:
                cache = self._prefill_for_generation(inputs, group_size)
                out = self.model.generate(
                    input_ids=inputs["input_ids"].repeat_interleave(group_size, 0),
                    attention_mask=inputs["attention_mask"].repeat_interleave(group_size, 0),
                    past_key_values=cache,
                    generation_config=gen_config,
                    synced_gpus=synced_gpus,
                )
            else:
                out = self.model.generate(
                    **self.repeat_prompts(inputs, group_size), generation_config=gen_config, synced_gpus=synced_gpus
                )
        finally:
            base.generation_config = saved_config
            self.model.train(was_training)
        sequences = out.sequences if output_logprobs else out
        completion = sequences[:, inputs["input_ids"].shape[1] :]
        mask, truncated = completion_mask(completion, self.eos_ids)
        sample_lp = None
        if output_logprobs:
            scores = torch.stack(out.scores, 1).float()  # [N, T, V] processed (warped) scores
            sample_lp = scores.log_softmax(-1).gather(-1, completion.unsqueeze(-1)).squeeze(-1) * mask
        completion = completion.masked_fill(~mask, self.pad_id)
        texts = self.tokenizer.batch_decode(completion, skip_special_tokens=True)
        return Rollout(inputs, completion, mask, texts, group_size, truncated, sample_lp)

    def _prefill_for_generation(self, inputs: BatchFeature, group_size: int) -> DynamicCache:
        """(eval, no grad) The B prompts but their last token, once -> a DynamicCache expanded to B*G rows, and the
        family's continuation state (RoPE offsets) installed for `generate`."""
        base = self.base_model()
        self.adapter.begin_prefill(base)
        head = self._without_last_token(inputs)
        cache = DynamicCache()
        self.model(**head, **self._positions(head), past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache.batch_repeat_interleave(group_size)
        self.adapter.prefix_state(base, inputs, group_size)
        return cache

    def _without_last_token(self, inputs: BatchFeature) -> dict[str, Tensor]:
        return {k: (v[:, :-1] if self.adapter.layout(k) == "seq" else v) for k, v in inputs.items() if v is not None}

    def _positions(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        pos = self.adapter.position_ids(self.base_model(), dict(batch))
        return {} if pos is None else {"position_ids": pos}

    # ------------------------------------------------------------------ scoring
    def final_hidden(self, batch: Mapping[str, Tensor]) -> Tensor:
        """[N, L, H] hidden states the LM head reads (after the final norm) for a full batch (any processor outputs,
        e.g. from `encode_sft`), through the root model's forward with no logits computed."""
        out = self.model(
            **batch,
            **self._positions(batch),
            use_cache=False,
            output_hidden_states=[-1],
            logits_to_keep=_NO_LOGITS.to(batch["input_ids"].device),
        )
        return self.adapter.final_hidden(out)

    def token_logprobs(
        self,
        inputs: BatchFeature,
        completion_ids: Tensor,
        completion_mask: Tensor,
        group_size: int = 1,
        temperature: float = 1.0,
        share_prefix: bool = True,
    ) -> Tensor:
        """Per-token log-probabilities of completions given their prompts (differentiable).

        inputs: B left-padded prompts (from `encode`); completion_ids, completion_mask: [B*G, T] with rows
        grouped by prompt -> [B*G, T] float32 (zero where the mask is False). With `share_prefix`, each prompt
        (vision tower included) runs once and its KV cache serves its G completions; gradients flow through it.
        The LM head runs on `logprob_tile` positions at a time (no [N, T, V] logits), or, with None, on all.
        """
        return self._token_logprobs(
            inputs, completion_ids, completion_mask, group_size, temperature, share_prefix, entropy=False
        )[0]

    def token_logprobs_and_entropy(
        self,
        inputs: BatchFeature,
        completion_ids: Tensor,
        completion_mask: Tensor,
        group_size: int = 1,
        temperature: float = 1.0,
        share_prefix: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """`token_logprobs` and, from the same forward pass, each completion position's entropy of the full
        temperature-scaled next-token distribution -> ([B*G, T] float32 log-probs, [B*G, T] float32 entropies, no
        gradient); both zero where the mask is False. Tiled like the log-probs: no [N, T, V] tensor is kept."""
        lp, ent = self._token_logprobs(
            inputs, completion_ids, completion_mask, group_size, temperature, share_prefix, entropy=True
        )
        assert ent is not None
        return lp, ent

    def _token_logprobs(
        self,
        inputs: BatchFeature,
        completion_ids: Tensor,
        completion_mask: Tensor,
        group_size: int,
        temperature: float,
        share_prefix: bool,
        entropy: bool,
    ) -> tuple[Tensor, Tensor | None]:
        t = completion_ids.shape[1]
        shared = share_prefix and self.adapter.shared_prefix and group_size > 1
        tile = self.logprob_tile
        tiled = tile is not None
        if shared:
            out = self._shared_prefix_forward(inputs, completion_ids, completion_mask, group_size, hidden=tiled)
        else:
            batch = append_completions(
                self.repeat_prompts(inputs, group_size), completion_ids, completion_mask, self.adapter
            )
            if tiled:
                out = self.final_hidden(batch)
            else:
                out = self.model(**batch, **self._positions(batch), use_cache=False, logits_to_keep=t + 1).logits
        out = out[:, -(t + 1) : -1]  # [N, T, H or V]: positions that predict the completion tokens
        ent: Tensor | None = None
        if tile is not None and entropy:
            lp, ent = tiled_token_logprobs_and_entropy(out, self.lm_head, completion_ids, temperature, tile)
        elif tile is not None:
            lp = tiled_token_logprobs(out, self.lm_head, completion_ids, temperature, tile)
        else:
            logits = out / temperature if temperature != 1.0 else out
            lp = selective_log_softmax(logits, completion_ids)
            ent = entropy_from_logits(logits) if entropy else None
        return lp * completion_mask, (ent * completion_mask if ent is not None else None)

    def _shared_prefix_forward(
        self, inputs: BatchFeature, completion_ids: Tensor, completion_mask: Tensor, group_size: int, hidden: bool
    ) -> Tensor:
        """Prefill the B prompts but their last token once, then run [last prompt token, completion] of the B*G rows
        on the expanded prefix -> [N, 1+T, H] final hidden states (`hidden`) or [N, 1+T, V] logits.

        Works with gradient checkpointing: the caches are idempotent under recomputation (`prefix_cache`)."""
        base = self.base_model()
        t = completion_ids.shape[1]
        with cache_through_checkpointing(self.adapter.decoder_layers(base)):
            self.adapter.begin_prefill(base)
            head = self._without_last_token(inputs)
            capture = capture_cache()
            prefill = self.model(
                **head,
                **self._positions(head),
                past_key_values=capture,
                use_cache=True,
                logits_to_keep=_NO_LOGITS.to(completion_ids.device),
            )
            # [B, 0, V]: no values, but it ties the prefill's outputs into the graph (see `_anchored`)
            anchor = prefill.logits.sum() if torch.is_grad_enabled() else None
            state = self.adapter.prefix_state(base, inputs, group_size)
            prefix = frozen_prefix(capture, group_size)
            prompt_mask = inputs["attention_mask"].repeat_interleave(group_size, 0)
            attention = torch.cat([prompt_mask, completion_mask.to(prompt_mask.dtype)], 1)  # [N, P+T]
            tail = torch.cat([inputs["input_ids"][:, -1:].repeat_interleave(group_size, 0), completion_ids], 1)
            positions = self.adapter.tail_position_ids(base, state, attention, t + 1)
            kwargs: dict[str, Any] = dict(
                input_ids=tail, attention_mask=attention, past_key_values=prefix, position_ids=positions, use_cache=True
            )
            if hidden:
                out = self.model(
                    **kwargs, output_hidden_states=[-1], logits_to_keep=_NO_LOGITS.to(completion_ids.device)
                )
                return _anchored(self.adapter.final_hidden(out), anchor)
            return _anchored(self.model(**kwargs).logits, anchor)

    def forward(self, **batch: Tensor):
        return self.model(**batch, **self._positions(batch))

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


def _anchored(out: Tensor, anchor: Tensor | None) -> Tensor:
    """`out` plus 0 * `anchor` (the same values and gradients): the backward pass then also runs through the
    prefill's outputs, so every decoder layer's output gets a (zero) gradient before the gradient of the keys/values
    it cached reaches it. FSDP2 unshards a layer for backward from a hook on its forward outputs: without this the
    prefill's last layer, whose gradient comes only through the cache, would run backward resharded (freed)."""
    return out if anchor is None else out + 0.0 * anchor


def completion_mask(completion: Tensor, eos_ids: list[int]) -> tuple[Tensor, Tensor]:
    """[N, T] ids -> ([N, T] bool mask up to and including the first EOS, [N] bool "no EOS" flags)."""
    is_eos = torch.zeros_like(completion, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= completion == e
    seen_before = (is_eos.cumsum(-1) - is_eos.long()) > 0  # an EOS strictly before this position
    return ~seen_before, ~is_eos.any(-1)
