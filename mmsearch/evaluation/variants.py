"""Search variants compared side by side: each is a set of ``SearchIndex.search`` options.

``exact`` (brute force over the stored vectors) and ``ann`` (the tuned ANN index, what
queries use by default) always run. Further variants join the table when the search
API accepts their option: ``+rerank`` (``rerank=True``) and ``+hybrid``
(``mode="hybrid"``). :func:`register_variant` adds more.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Variant:
    """A named way of searching: ``options`` are passed to ``SearchIndex.search``."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


_REGISTRY: list[Variant] = [
    Variant("exact", {"exact": True}, "brute force over the stored vectors"),
    Variant("ann", {}, "the tuned ANN index (the default search path)"),
    Variant("+rerank", {"rerank": True}, "ANN candidates re-ranked by the reranker"),
    Variant("+hybrid", {"mode": "hybrid"}, "vector + lexical legs fused"),
]

#: The variant whose figures are the report's ``overall``: what a plain query returns.
PRIMARY = "ann"


def register_variant(variant: Variant) -> None:
    """Adds (or replaces, by name) a variant; it runs when the search API accepts its options."""
    _REGISTRY[:] = [v for v in _REGISTRY if v.name != variant.name] + [variant]


def _accepts(search: Any, options: Mapping[str, Any]) -> bool:
    try:
        params = inspect.signature(search).parameters
    except (TypeError, ValueError):
        return False
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return all(name in ("exact",) for name in options)
    return all(name in params for name in options)


def available_variants(index: Any, names: list[str] | None = None) -> list[Variant]:
    """The registered variants that ``index.search`` supports (optionally only ``names``)."""
    known = {v.name: v for v in _REGISTRY}
    if names:
        unknown = [n for n in names if n not in known]
        if unknown:
            from mmsearch.errors import BadQueryError

            raise BadQueryError(
                f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(known)}"
            )
        chosen = [known[n] for n in names]
        missing = [v.name for v in chosen if not _accepts(index.search, v.options)]
        if missing:
            from mmsearch.errors import BadQueryError

            raise BadQueryError(
                f"variant(s) {', '.join(missing)} need search options this index does not offer"
            )
        return chosen
    return [v for v in _REGISTRY if _accepts(index.search, v.options)]
