"""Lexical leg: BM25 over the table's full-text index (LanceDB native FTS), and the exact-identifier leg.

The index covers :data:`mmsearch.storage.schema.LEXICAL_COLUMN` (an item's text plus its
string metadata values: sku, title, category, ...), tokenised, lower-cased, stemmed,
stop words removed. Queries go in as a match query object (terms ORed, ranked by BM25; see
:mod:`mmsearch.storage.fulltext`, which runs them without importing ``lancedb``),
never as query-syntax text, so user input cannot change the query's
structure. Negative text terms become ``MUST_NOT`` clauses.

Filters apply before ranking: a small allowed set (up to :data:`PREFILTER_MAX_IDS`)
is a LanceDB prefilter on ids (integers written by the code); a larger one is applied
to the hits, asking for more hits until ``depth`` survive or the matches run out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from mmsearch.search.retrieve import leg_table
from mmsearch.storage.fulltext import FullTextTable, match_query

PREFILTER_MAX_IDS = 1024
#: Most hits one lexical query reads while looking for filtered survivors.
MAX_LEXICAL_HITS = 1_000_000
#: Maps ids to their kinds ("" for an id the snapshot does not hold).
KindsOf = Callable[[npt.NDArray[np.int64]], npt.NDArray[np.object_]]


def _search(
    table: FullTextTable,
    column: str,
    text: str,
    negative: str,
    limit: int,
    where: str | None,
    columns: Sequence[str] = ("id", "kind", "_score"),
) -> pa.Table:
    """One FTS query, run as a single call on the table's native async core."""
    return table.search(match_query(text, column, negative), columns, where, limit)


def lexical_hits(
    table: FullTextTable,
    column: str,
    text: str,
    depth: int,
    *,
    kind: str = "any",
    negative: str = "",
    allowed_ids: npt.NDArray[np.int64] | None = None,
    kinds_of: KindsOf | None = None,
) -> pa.Table:
    """Up to ``depth`` BM25 hits (``id, kind, _score``, best first) of ``kind`` among ``allowed_ids``.

    With ``kinds_of`` (the snapshot's id → kind lookup) the kind column is not read
    from the table (a take per hit: about half of a short query's time), and hits the
    snapshot does not hold are dropped.
    """
    if not text.strip():
        return pa.table(
            {
                "id": pa.array([], pa.int64()),
                "kind": pa.array([], pa.string()),
                "_score": pa.array([], pa.float32()),
            }
        )
    clauses = [] if kind == "any" else [f"kind = '{'image' if kind == 'image' else 'text'}'"]
    post_filter = allowed_ids
    if allowed_ids is not None and len(allowed_ids) <= PREFILTER_MAX_IDS:
        ids = ",".join(str(int(i)) for i in np.asarray(allowed_ids, np.int64)) or "-1"
        clauses.append(f"id IN ({ids})")
        post_filter = None
    where = " AND ".join(clauses) or None
    limit = depth
    columns = ("id", "_score") if kinds_of is not None else ("id", "kind", "_score")
    while True:
        raw = _search(table, column, text, negative, limit, where, columns)
        matched = raw.num_rows
        if kinds_of is not None:
            found = kinds_of(raw.column("id").to_numpy().astype(np.int64))
            raw = raw.append_column("kind", pa.array(found.tolist(), pa.string()))
            raw = raw.filter(pc.not_equal(raw.column("kind"), "")).select(["id", "kind", "_score"])
        hits = raw
        if post_filter is not None:
            hits = raw.filter(pc.is_in(raw.column("id"), pa.array(post_filter, pa.int64())))
        if hits.num_rows >= depth or matched < limit or limit >= MAX_LEXICAL_HITS:
            return hits.slice(0, depth)
        limit = min(limit * 4, MAX_LEXICAL_HITS)


def lexical_legs(
    table: FullTextTable,
    column: str,
    text: str,
    depth: int,
    kinds: Sequence[str],
    *,
    negative: str = "",
    allowed_ids: npt.NDArray[np.int64] | None = None,
    index_kinds: Sequence[str] | None = None,
    kinds_of: KindsOf | None = None,
) -> list[pa.Table]:
    """One leg table per kind (``lexical:image`` / ``lexical:text``), ranks counted within each kind.

    ``index_kinds`` (the kinds the table holds) lets a query that wants every kind
    present skip the ``kind`` filter, which costs LanceDB a scan of that column per
    query (about 10 ms at 100k rows).
    """
    wants_all = index_kinds is not None and set(index_kinds) <= set(kinds)
    kind = kinds[0] if len(kinds) == 1 and not wants_all else "any"
    hits = lexical_hits(
        table, column, text, depth, kind=kind, negative=negative, allowed_ids=allowed_ids,
        kinds_of=kinds_of,
    )  # fmt: skip
    legs = []
    for name in kinds:
        part = hits.filter(pc.equal(hits.column("kind"), name))
        legs.append(
            leg_table(
                part.column("id").to_numpy().astype(np.int64),
                part.column("_score").to_numpy().astype(np.float32),
                name,
                f"lexical:{name}",
            )
        )
    return legs


def exact_leg(ids: npt.NDArray[np.int64], kinds: npt.NDArray[np.object_]) -> pa.Table:
    """The rows an exact identifier names, as a leg (``exact``), in id order."""
    n = len(ids)
    return pa.table(
        {
            "id": pa.array(np.asarray(ids, np.int64)),
            "kind": pa.array([str(k) for k in kinds], pa.string()),
            "score": pa.array(np.ones(n, np.float32)),
            "rank": pa.array(np.ones(n, np.int32)),
            "leg": pa.array(["exact"] * n, pa.string()),
        }
    )
