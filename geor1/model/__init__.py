"""The policy: a vision-language model behind generate / token_logprobs / save_pretrained (loading, batching and
one adapter per model family underneath); tiny offline builders.
(Imported lazily: `geor1 --help` stays fast.)"""

from geor1._lazy import lazy_exports

_EXPORTS = {
    "LoraSpec": "geor1.model.policy",
    "Policy": "geor1.model.policy",
    "Rollout": "geor1.model.policy",
    "load_pretrained": "geor1.model.loading",
    "TinyPolicy": "geor1.model.tiny_policy",
    "adapter_for": "geor1.model.adapters",
    "supported_families": "geor1.model.adapters",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports("geor1.model", _EXPORTS)
