"""The sample every objective consumes: a chat prompt with several images, the typed target of its task, an
optional response (SFT), and the shard's JSON (for display and data-set specific fields)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:
    from geor1.tasks import Target

IMAGE_MARKER = "<image>"


@dataclass
class Prompt:
    """One user turn: `text` with one `<image>` marker per image, in order (images without markers go first).

    >>> p = Prompt("Ground view: <image> Candidates: A <image> B <image>", images=[None, None, None])
    >>> [c["type"] for c in p.content()]
    ['text', 'image', 'text', 'image', 'text', 'image']
    """

    text: str
    images: list[Image.Image] = field(default_factory=list)
    system: str | None = None

    def content(self) -> list[dict[str, str]]:
        """Interleaved chat content items, in the order the markers give."""
        pieces = self.text.split(IMAGE_MARKER)
        n_markers = len(pieces) - 1
        if n_markers > len(self.images):
            raise ValueError(f"prompt has {n_markers} {IMAGE_MARKER} markers but only {len(self.images)} images")
        items: list[dict[str, str]] = [{"type": "image"} for _ in range(len(self.images) - n_markers)]
        for i, piece in enumerate(pieces):
            if piece:
                items.append({"type": "text", "text": piece})
            if i < n_markers:
                items.append({"type": "image"})
        return items

    def messages(self) -> list[dict[str, Any]]:
        msgs: list[dict[str, Any]] = []
        if self.system is not None:
            msgs.append({"role": "system", "content": self.system})
        msgs.append({"role": "user", "content": self.content()})
        return msgs


@dataclass
class ChatSample:
    """What a DataModule yields to the objectives.

    Args:
        key: the sample's key.
        prompt: the user turn (text and images).
        target: the right answer, typed by task (`geor1.tasks.PairingTarget`, `GeoTarget`); None when the sample
            has none (rewards and metrics then cannot score it).
        response: the assistant turn SFT trains on (None for RL and evaluation prompts).
        meta: the shard's JSON as read (display, data-set specific fields); nothing scores from it.
    """

    key: str
    prompt: Prompt
    target: Target | None = None
    response: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str | None:
        """The name of the target's task ("pairing", "geolocate", "describe"), or None without a target."""
        return None if self.target is None else self.target.task

    def to(self, *args: Any, **kwargs: Any) -> ChatSample:
        """The sample itself. Lightning moves a batch to the device by calling `.to(device)` on each object that has
        one: a sample's text and PIL images stay on the host (the Policy encodes them on its device). Without this
        Lightning would copy the sample field by field, which fails on the frozen typed targets."""
        return self


def collate_samples(batch: list[ChatSample]) -> list[ChatSample]:
    """Batches stay lists of samples: the Policy tokenises them (it owns the processor)."""
    return list(batch)
