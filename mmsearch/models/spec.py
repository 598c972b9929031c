"""`ModelSpec`: which CLIP model embeds an index."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

TINY_MODEL_NAME = "mmsearch-tiny"
DEFAULT_MODEL_NAME = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"


@dataclass(frozen=True)
class ModelSpec:
    """An open_clip architecture plus where its weights come from.

    ``pretrained`` is an open_clip tag (``laion2b_s34b_b79k``), a local checkpoint
    path (safetensors preferred), or empty when ``name`` is ``hf-hub:org/repo``
    or ``mmsearch-tiny`` (whose weights ship inside the package).

    >>> ModelSpec("mmsearch-tiny").key
    'mmsearch-tiny'
    """

    name: str = DEFAULT_MODEL_NAME
    pretrained: str = DEFAULT_PRETRAINED

    def __post_init__(self) -> None:
        # The default tag belongs to ViT-B-32; models whose weights need no tag
        # (mmsearch-tiny, hf-hub:...) would otherwise inherit it from the default.
        if self.pretrained == DEFAULT_PRETRAINED and (
            self.name == TINY_MODEL_NAME or self.name.startswith("hf-hub:")
        ):
            object.__setattr__(self, "pretrained", "")

    @classmethod
    def parse(cls, name: str | None, pretrained: str | None = None) -> ModelSpec:
        """Builds a spec from CLI-style options, filling the defaults per model."""
        name = name or DEFAULT_MODEL_NAME
        if pretrained is None:
            pretrained = DEFAULT_PRETRAINED if name == DEFAULT_MODEL_NAME else ""
        elif os.path.isfile(pretrained):  # a checkpoint file: stamp its absolute path in the index
            pretrained = os.path.abspath(pretrained)
        return cls(name=name, pretrained=pretrained)

    @property
    def key(self) -> str:
        """A short human-readable identifier, e.g. ``ViT-B-32/laion2b_s34b_b79k``."""
        return f"{self.name}/{self.pretrained}" if self.pretrained else self.name

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        data = json.loads(text)
        return cls(name=data["name"], pretrained=data.get("pretrained", ""))
