"""Chat prompts with several images, and the sample type every objective consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

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
    """What a DataModule yields to the objectives: a prompt, an optional target response, and metadata (answer
    letter, coordinates, ...) that rewards and metrics read."""

    key: str
    prompt: Prompt
    response: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def collate_samples(batch: list[ChatSample]) -> list[ChatSample]:
    """Batches stay lists of samples: the Policy tokenises them (it owns the processor)."""
    return list(batch)
