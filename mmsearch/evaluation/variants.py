"""Search variants compared side by side: each is a set of ``SearchIndex.search`` options.

``exact`` (brute force over the stored vectors) and ``ann`` (the tuned ANN index) run
the vector leg alone. ``+rerank`` joins the table when the index has a reranker
(``SearchIndex(..., reranker=...)``); ``+hybrid`` (vector + BM25 legs fused by the
default, relative fusion: what a plain text query runs when a full-text index exists),
``+rrf`` and ``+weighted`` (the same legs fused by reciprocal rank and by weighted
min-max scores) when the index has a full-text index. :func:`register_variant` adds more.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from mmsearch.models.base import Encoder
    from mmsearch.models.spec import ModelSpec
    from mmsearch.storage.table import ItemStore


class EvaluatedIndex(Protocol):
    """What an evaluation uses of an open index (:class:`mmsearch.engine.SearchIndex` is one).

    ``search`` is called with each variant's options (those its signature offers);
    ``search_vector`` with a stored vector, ``k``, ``kind``, ``query_kind`` and options.
    """

    @property
    def spec(self) -> ModelSpec: ...

    @property
    def store(self) -> ItemStore: ...

    @property
    def encoder(self) -> Encoder: ...

    @property
    def search(self) -> Callable[..., Any]: ...

    @property
    def search_vector(self) -> Callable[..., Any]: ...


def _always(index: EvaluatedIndex) -> bool:
    return True


def _has_lexical(index: Any) -> bool:
    return bool(getattr(index, "has_lexical", False))


@dataclass(frozen=True)
class Variant:
    """A named way of searching: ``options`` go to ``SearchIndex.search`` when ``available(index)``."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    available: Callable[[EvaluatedIndex], bool] = _always


_REGISTRY: list[Variant] = [
    Variant("exact", {"exact": True, "mode": "vector"}, "brute force over the stored vectors"),
    Variant("ann", {"mode": "vector"}, "the tuned ANN index"),
    Variant(
        "+rerank",
        {"mode": "vector", "rerank": True},
        "ANN candidates re-ranked by the index's reranker",
        lambda index: getattr(index, "reranker", None) is not None,
    ),
    Variant(
        "+hybrid",
        {"mode": None},  # automatic: hybrid for text terms, vector for image-only queries
        "vector and BM25 legs fused (image-only queries: vector), what a plain query runs",
        _has_lexical,
    ),
    Variant(
        "+rrf", {"mode": None, "fusion": "rrf"}, "hybrid, reciprocal rank fusion", _has_lexical
    ),
    Variant(
        "+weighted", {"mode": None, "fusion": "weighted"}, "hybrid, weighted fusion", _has_lexical
    ),
]

#: The variant whose figures are the report's ``overall``.
PRIMARY = "ann"


def register_variant(variant: Variant) -> None:
    """Adds (or replaces, by name) a variant; it runs when the search API accepts its options."""
    _REGISTRY[:] = [v for v in _REGISTRY if v.name != variant.name] + [variant]


def search_options(search: Any, variant: Variant) -> dict[str, Any] | None:
    """The options to pass to ``search`` for ``variant``, or None when it cannot take them.

    ``mode="vector"`` is dropped for a search API without modes (vector is all it does).
    """
    try:
        params = inspect.signature(search).parameters
    except (TypeError, ValueError):
        return None
    options = dict(variant.options)
    if options.get("mode") == "vector" and "mode" not in params:
        del options["mode"]
    return options if all(name in params for name in options) else None


def vector_options(variant: Variant) -> dict[str, Any] | None:
    """Options for ``search_vector`` (vector-leg variants only), or None for the others."""
    options = {k: v for k, v in variant.options.items() if not (k == "mode" and v == "vector")}
    return options if set(options) <= {"exact", "nprobe", "refine"} else None


def available_variants(index: EvaluatedIndex, names: list[str] | None = None) -> list[Variant]:
    """The registered variants ``index`` can run (optionally only ``names``, in that order)."""
    known = {v.name: v for v in _REGISTRY}
    ok = [
        v for v in _REGISTRY if search_options(index.search, v) is not None and v.available(index)
    ]
    if not names:
        return ok
    from mmsearch.errors import BadQueryError

    unknown = [n for n in names if n not in known]
    if unknown:
        raise BadQueryError(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(known)}")
    missing = [n for n in names if known[n] not in ok]
    if missing:
        raise BadQueryError(
            f"variant(s) {', '.join(missing)} cannot run on this index (no reranker or full-text index, "
            "or search options this version does not offer)"
        )
    return [known[n] for n in names]
