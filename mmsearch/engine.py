"""The query engine: one engine behind the library, the CLI and the server.

A :class:`SearchIndex` opens an index directory at its published snapshot (table
version + ANN indexes built from it), encodes queries with the index's own model,
searches the per-kind ANN indexes and returns typed :class:`SearchResult` rows.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from mmsearch.errors import BadQueryError, IndexNotFoundError, ModelMismatchError, UnsafePathError
from mmsearch.itemmeta import normalize_metadata
from mmsearch.models.spec import ModelSpec
from mmsearch.query import QueryTerm, parse_query
from mmsearch.snapshot import Snapshot, read_snapshot
from mmsearch.storage import ItemStore

Kind = Literal["image", "text", "any"]
ImageLike = Any  # str | os.PathLike | PIL.Image.Image | np.ndarray (H, W, 3) uint8
QueryLike = str | os.PathLike[str] | Any

_RESULT_COLUMNS = ["id", "uri", "kind", "text", "metadata"]


@dataclass(frozen=True)
class SearchResult:
    """One hit. ``uri`` is the item's stored location (file path, or ``collection#row-id``)."""

    rank: int
    id: int
    uri: str
    kind: str
    text: str | None
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str | None:
        """The local file path of an image hit (lossless for non-UTF-8 names)."""
        if self.kind != "image":
            return None
        from indexer.discover import uri_to_path

        return uri_to_path(self.uri)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "id": self.id,
            "uri": self.uri,
            "kind": self.kind,
            "text": self.text,
            "score": round(self.score, 6),
            "metadata": self.metadata,
        }


class _Rows:
    """The snapshot's non-vector columns, held in memory, looked up by id."""

    def __init__(self, table: pa.Table) -> None:
        ids = table.column("id").to_numpy()
        order = np.argsort(ids, kind="stable")
        self._sorted_ids = ids[order]
        self._table = table.take(pa.array(order))
        self._filterable: pa.Table | None = None
        self._lock = threading.Lock()

    def filterable(self) -> pa.Table:
        """Row ids, kind and every metadata key as typed columns (built on first use)."""
        from mmsearch.filters import ROW_ID_COLUMN

        with self._lock:
            if self._filterable is None:
                records = [normalize_metadata(json.loads(m)) if m else {} for m in self._table.column("metadata").to_pylist()]
                keys = sorted({key for rec in records for key in rec})
                columns: dict[str, pa.Array] = {
                    ROW_ID_COLUMN: pa.array(self._sorted_ids),
                    "kind": self._table.column("kind").combine_chunks(),
                }
                for key in keys:
                    if key in columns:
                        continue
                    values = [rec.get(key) for rec in records]
                    try:
                        columns[key] = pa.array(values)
                    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types: compare as text
                        columns[key] = pa.array([None if v is None else str(v) for v in values], pa.string())
                    if pa.types.is_null(columns[key].type) or pa.types.is_nested(columns[key].type):
                        columns[key] = pa.array([None if v is None else str(v) for v in values], pa.string())
                self._filterable = pa.table(columns)
            return self._filterable

    def matching_ids(self, conditions: list[Any]) -> npt.NDArray[np.int64]:
        """Sorted ids of the rows that satisfy every condition."""
        from mmsearch.filters import ROW_ID_COLUMN, compile_filter

        table = self.filterable()
        expr = compile_filter(conditions, table)
        return table.filter(expr).column(ROW_ID_COLUMN).to_numpy().astype(np.int64)

    def uri_of(self, item_id: int) -> tuple[str, str] | None:
        pos = int(np.searchsorted(self._sorted_ids, item_id))
        if pos >= len(self._sorted_ids) or self._sorted_ids[pos] != item_id:
            return None
        return self._table.column("uri")[pos].as_py(), self._table.column("kind")[pos].as_py()

    def take(self, ids: npt.NDArray[np.int64]) -> tuple[pa.Table, npt.NDArray[np.bool_]]:
        pos = np.searchsorted(self._sorted_ids, ids)
        pos = np.clip(pos, 0, max(len(self._sorted_ids) - 1, 0))
        found = (len(self._sorted_ids) > 0) & (self._sorted_ids[pos] == ids) if len(ids) else np.zeros(0, bool)
        return self._table.take(pa.array(pos[found])), found


class SearchIndex:
    """A searchable index directory.

    >>> import mmsearch
    >>> idx = mmsearch.open(".mmsearch")  # doctest: +SKIP
    >>> [r.uri for r in idx.search("a red circle on the left", k=3)]  # doctest: +SKIP
    """

    def __init__(
        self,
        index_dir: str | os.PathLike[str],
        *,
        model: ModelSpec | None = None,
        device: str | None = None,
        image_roots: Sequence[str | os.PathLike[str]] | None = None,
        encoder: Any | None = None,
    ) -> None:
        self.index_dir = Path(index_dir)
        self.device = device
        self.image_roots = [Path(os.path.realpath(r)) for r in image_roots] if image_roots is not None else None
        self._lock = threading.RLock()
        self._encoder = encoder
        self._rows: _Rows | None = None
        self._open(model)

    # -- opening ---------------------------------------------------------------------------
    def _open(self, model: ModelSpec | None) -> None:
        from mmsearch.ann import VectorIndex

        snapshot = read_snapshot(self.index_dir)
        if snapshot is None:
            if ItemStore.exists(self.index_dir):
                raise IndexNotFoundError(
                    f"index at {self.index_dir} has rows but no search index yet; "
                    f"run: mmsearch build-index --index {self.index_dir}"
                )
            raise IndexNotFoundError(
                f"no mmsearch index at {self.index_dir} (create one with: mmsearch index PATH --index {self.index_dir})"
            )
        store = ItemStore.open(self.index_dir, version=snapshot.table_version)
        spec = store.model_spec
        if model is not None and model != spec:
            raise ModelMismatchError(
                f"index at {self.index_dir} was built with model {spec.key}; cannot query it with {model.key}"
            )
        if self._encoder is not None and getattr(self._encoder, "spec", spec) != spec:
            raise ModelMismatchError(
                f"index at {self.index_dir} was built with model {spec.key}; "
                f"the encoder given is {self._encoder.spec.key}"
            )
        ann = {
            kind: VectorIndex.load(
                snapshot.ann_path(self.index_dir, kind),
                expect_table_version=snapshot.table_version,
                expect_model_key=spec.key,
            )
            for kind in snapshot.ann_dirs
        }
        with self._lock:
            self.snapshot: Snapshot = snapshot
            self.store = store
            self.spec = spec
            self._ann = ann
            self._rows = None

    def reload(self) -> bool:
        """Switches to a newer published snapshot, if any; returns whether it changed."""
        latest = read_snapshot(self.index_dir)
        if latest is None or latest == self.snapshot:
            return False
        self._open(self.spec)
        return True

    @property
    def stale(self) -> bool:
        """True when the table has commits newer than the snapshot being served."""
        try:
            return ItemStore.open(self.index_dir).version > self.snapshot.table_version
        except IndexNotFoundError:
            return False

    @property
    def encoder(self) -> Any:
        with self._lock:
            if self._encoder is None:
                from mmsearch.models import load_encoder

                self._encoder = load_encoder(self.spec, device=self.device)
            return self._encoder

    def _rows_view(self) -> _Rows:
        with self._lock:
            if self._rows is None:
                self._rows = _Rows(self.store.scan(_RESULT_COLUMNS))
            return self._rows

    def __len__(self) -> int:
        return sum(int(a.info.get("n", 0)) for a in self._ann.values())

    def info(self) -> dict[str, Any]:
        """Row count, model, snapshot and per-kind ANN parameters."""
        return {
            "index_dir": str(self.index_dir),
            "model": self.spec.key,
            "dim": self.store.dim,
            "rows": self.store.count(),
            "table_version": self.snapshot.table_version,
            "stale": self.stale,
            "ann": {kind: dict(a.info) for kind, a in self._ann.items()},
        }

    # -- encoding --------------------------------------------------------------------------
    def _check_image_path(self, path: str | os.PathLike[str]) -> Path:
        real = Path(os.path.realpath(path))
        if self.image_roots is not None and not any(real.is_relative_to(root) for root in self.image_roots):
            raise UnsafePathError(f"image path {os.fspath(path)!r} is outside the allowed folders")
        if not real.is_file():
            raise BadQueryError(f"image not found: {os.fspath(path)}")
        return real

    def _encode_image(self, image: ImageLike) -> npt.NDArray[np.float32]:
        from PIL import Image

        from mmsearch.imageio import load_image
        from mmsearch.models.preprocess import fit_square

        if isinstance(image, (str, os.PathLike)):
            image = load_image(self._check_image_path(image))
        elif isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3:
                raise BadQueryError("an image array must be (H, W, 3)")
            image = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB")
        elif not isinstance(image, Image.Image):
            raise BadQueryError(f"cannot use {type(image).__name__} as an image query")
        enc = self.encoder
        return enc.encode_images(fit_square(image.convert("RGB"), enc.image_size)[None])[0]

    def encode_query(self, query: QueryLike) -> npt.NDArray[np.float32]:
        """The unit query vector of a text, a query-language string, an image path, PIL image or array."""
        return self._encode(query)[0]

    def _encode(self, query: QueryLike) -> tuple[npt.NDArray[np.float32], str]:
        """(unit vector, modality): modality is "text", "image" or "mixed"."""
        if isinstance(query, str):
            terms = parse_query(query)
        elif isinstance(query, os.PathLike):
            terms = [QueryTerm(1.0, "image", os.fspath(query))]
        else:
            return self._encode_image(query), "image"
        kinds = {t.kind for t in terms}
        modality = kinds.pop() if len(kinds) == 1 else "mixed"
        texts = [t for t in terms if t.kind == "text"]
        parts: list[npt.NDArray[np.float32]] = []
        weights: list[float] = []
        if texts:
            parts.extend(self.encoder.encode_texts([t.value for t in texts]))
            weights.extend(t.weight for t in texts)
        for term in terms:
            if term.kind == "image":
                parts.append(self._encode_image(term.value))
                weights.append(term.weight)
        vec = np.sum(np.asarray(weights, np.float32)[:, None] * np.stack(parts), axis=0)
        norm = float(np.linalg.norm(vec))
        if norm < 1e-6:
            raise BadQueryError("the query's terms cancel out")
        return (vec / norm).astype(np.float32), modality

    # -- searching -------------------------------------------------------------------------
    def search(
        self,
        query: QueryLike,
        k: int = 10,
        *,
        kind: Kind = "any",
        exact: bool = False,
        nprobe: int | None = None,
        refine: int | None = None,
        where: Mapping[str, Any] | Sequence[str] | None = None,
    ) -> list[SearchResult]:
        """Top-``k`` items for a query (text, query string, image path, PIL image or array).

        ``kind`` restricts results to images or texts; ``exact`` bypasses the ANN index;
        ``nprobe``/``refine`` override the tuned ANN parameters for this query;
        ``where`` filters on metadata: ``{"category": "buttons", "price": ("<", 20)}`` or
        ``["price < 20", "colour in red,blue"]`` (see :mod:`mmsearch.filters`).
        """
        if kind not in ("image", "text", "any"):
            raise BadQueryError(f"kind must be image, text or any, not {kind!r}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k > 10_000:
            raise BadQueryError("k must be an integer between 1 and 10000")
        allowed = self._allowed_ids(where)
        vector, modality = self._encode(query)
        return self.search_vector(
            vector, k, kind=kind, exact=exact, nprobe=nprobe, refine=refine, allowed_ids=allowed, query_kind=modality
        )

    def _allowed_ids(self, where: Mapping[str, Any] | Sequence[str] | None) -> npt.NDArray[np.int64] | None:
        from mmsearch.filters import from_mapping, parse_where

        if not where:
            return None
        if isinstance(where, Mapping):
            conditions = from_mapping(where)
        elif isinstance(where, str):
            conditions = parse_where([where])
        else:
            conditions = parse_where(list(where))
        return self._rows_view().matching_ids(conditions)

    def image_path(self, item_id: int) -> str | None:
        """Local file path of an indexed image, by id (None for unknown ids and texts)."""
        from indexer.discover import uri_to_path

        found = self._rows_view().uri_of(int(item_id))
        if found is None or found[1] != "image":
            return None
        return uri_to_path(found[0])

    def search_vector(
        self,
        vector: npt.NDArray[np.float32],
        k: int = 10,
        *,
        kind: Kind = "any",
        exact: bool = False,
        nprobe: int | None = None,
        refine: int | None = None,
        allowed_ids: npt.NDArray[np.int64] | None = None,
        query_kind: str | None = None,
    ) -> list[SearchResult]:
        """Top-``k`` items for an already-encoded unit vector (optionally among ``allowed_ids``).

        ``query_kind`` ("text", "image" or "mixed") selects the ANN parameters tuned for
        cross-modal queries when it differs from the kind searched.
        """
        from mmsearch.ann.subset import search_subset

        kinds = [kind] if kind != "any" else list(self._ann)
        scores_all: list[npt.NDArray[np.float32]] = []
        ids_all: list[npt.NDArray[np.int64]] = []
        q = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if q.shape[1] != self.store.dim:
            raise BadQueryError(f"query vector has dimension {q.shape[1]}, index has {self.store.dim}")
        for name in kinds:
            ann = self._ann.get(name)
            if ann is None:
                continue
            if allowed_ids is not None:
                scores, ids = search_subset(ann, q, k, allowed_ids)
            else:
                profile = "cross" if query_kind is not None and query_kind != name else None
                scores, ids = ann.search(q, k, nprobe=nprobe, refine=refine, exact=exact, profile=profile)
            keep = ids[0] >= 0
            scores_all.append(scores[0][keep])
            ids_all.append(ids[0][keep])
        if not ids_all:
            return []
        scores = np.concatenate(scores_all)
        ids = np.concatenate(ids_all)
        order = np.argsort(-scores, kind="stable")[:k]
        scores, ids = scores[order], ids[order]
        rows, found = self._rows_view().take(ids)
        scores = scores[found]
        out: list[SearchResult] = []
        cols = {name: rows.column(name).to_pylist() for name in _RESULT_COLUMNS}
        for rank, score in enumerate(scores.tolist(), start=1):
            i = rank - 1
            meta = normalize_metadata(json.loads(cols["metadata"][i])) if cols["metadata"][i] else {}
            out.append(
                SearchResult(
                    rank=rank,
                    id=int(cols["id"][i]),
                    uri=cols["uri"][i],
                    kind=cols["kind"][i],
                    text=cols["text"][i],
                    score=float(score),
                    metadata=meta,
                )
            )
        return out


def open_index(index_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> SearchIndex:
    """Opens an index for searching (``$MMSEARCH_INDEX`` or ``./.mmsearch`` by default)."""
    from mmsearch.storage import default_index_dir

    return SearchIndex(index_dir if index_dir is not None else default_index_dir(), **kwargs)
