"""The policy: a vision-language model behind generate / token_logprobs / save_pretrained; tiny offline builders."""

from geor1.model.chat import ChatSample, Prompt, collate_samples
from geor1.model.policy import LoraSpec, Policy, Rollout, load_pretrained
from geor1.model.tiny_policy import TinyPolicy

__all__ = ["ChatSample", "LoraSpec", "Policy", "Prompt", "Rollout", "TinyPolicy", "collate_samples", "load_pretrained"]
