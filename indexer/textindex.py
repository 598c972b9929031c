"""Index one text collection (CSV/TSV/JSONL/Parquet): diff, tokenise ahead, embed, write.

The file is read and validated first, in one C-speed pass (:mod:`mmsearch.indexer.textsource`):
metadata types are decided per column across the whole file, repeated ids keep their
first row, and each row's content hash (text + typed metadata) decides whether it
changed since the last run. Then the rows to embed go through the same overlapped
machinery as images (:class:`~mmsearch.indexer.prefetch.OrderedPool`): a prefetch
thread tokenises the next batches (ftfy/HTML clean-up and BPE; the Rust tokenizer and
the model both release the GIL) while this thread runs the model on the current one,
in batches of at least :data:`TEXT_BATCH_SIZE`. A row whose tokenisation fails or
hangs is skipped and reported with its row number; the run carries on.

Encoders that expose ``tokenize``/``encode_tokens`` (the torch and ONNX encoders) get
this split; any other :class:`~mmsearch.models.base.Encoder` has its texts prefetched
as they are and embedded with ``encode_texts``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from mmsearch.indexer.discover import path_to_uri
from mmsearch.indexer.options import IndexOptions, ProgressFn
from mmsearch.indexer.prefetch import OrderedPool
from mmsearch.indexer.report import Failure, IndexReport
from mmsearch.indexer.textsource import TextRow, read_text_collection
from mmsearch.indexer.writer import BatchWriter

from mmsearch.models.base import Encoder
from mmsearch.storage.metadata_keys import ID_KEY
from mmsearch.storage.schema import make_rows
from mmsearch.storage.table import ItemStore, StoredState

#: Texts per forward pass at least: tokens are small, and big batches use the cores better.
TEXT_BATCH_SIZE = 256
#: Batches tokenised ahead of the model.
PREFETCH_BATCHES = 2


@dataclass(frozen=True)
class Prepared:
    """A row ready for the model: its position in the work list and its prepared value."""

    index: int
    value: Any


@dataclass(frozen=True)
class PrepFailure:
    """A row that could not be prepared (tokenised); reported, never embedded."""

    index: int
    reason: str
    exc_class: str


PrepResult = Prepared | PrepFailure


@dataclass(frozen=True)
class TextSteps:
    """The two halves of text embedding: ``prepare`` (per-row values, run ahead on the
    prefetch thread) and ``embed`` (a list of prepared values -> unit vectors)."""

    prepare: Callable[[list[str]], Sequence[Any]]
    embed: Callable[[list[Any]], npt.NDArray[np.float32]]


def text_steps(encoder: Encoder) -> TextSteps:
    """Tokenise/embed split of ``encoder`` when it has one, else texts as they are."""
    tokenize = getattr(encoder, "tokenize", None)
    encode_tokens = getattr(encoder, "encode_tokens", None)
    if callable(tokenize) and callable(encode_tokens):
        return TextSteps(
            prepare=lambda texts: list(tokenize(texts)),
            embed=lambda rows: encode_tokens(np.stack(rows)),
        )
    return TextSteps(prepare=lambda texts: texts, embed=lambda rows: encoder.encode_texts(rows))


def prepare_chunk(
    chunk: list[tuple[int, str]], prepare: Callable[[list[str]], Sequence[Any]]
) -> list[PrepResult]:
    """Prefetch-thread entry point: prepares a chunk in one call; when that fails, row by
    row, so that only the rows that fail are reported."""
    try:
        values = prepare([text for _, text in chunk])
        if len(values) != len(chunk):
            raise ValueError(f"prepared {len(values)} values for {len(chunk)} texts")
        return [Prepared(i, v) for (i, _), v in zip(chunk, values, strict=True)]
    except Exception:  # noqa: BLE001 - find the culprit below
        pass
    out: list[PrepResult] = []
    for index, text in chunk:
        try:
            (value,) = prepare([text])
            out.append(Prepared(index, value))
        except Exception as exc:  # one bad row must never end the run
            out.append(PrepFailure(index, f"cannot tokenise: {exc}", type(exc).__name__))
    return out


def _lost_row(index: int, text: str, reason: str, exc_class: str) -> PrepFailure:
    return PrepFailure(index, f"tokenisation {reason}", exc_class)


def text_sha(text: str, metadata: dict[str, Any]) -> str:
    """Content hash of a row: a re-run re-embeds a row only when this changes."""
    payload = json.dumps({"text": text, "metadata": metadata}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()


TextTodo = tuple[str, TextRow, str, StoredState | None]  # (uri, row, sha256, previous state)


@dataclass
class TextDiff:
    """A text collection read and compared with the table: what to embed, what is gone."""

    path: Path
    source: str
    mtime_ns: int
    todo: list[TextTodo]
    gone: list[int]


def diff_texts(
    path: Path, store: ItemStore, opts: IndexOptions, report: IndexReport, progress: ProgressFn
) -> TextDiff:
    """Reads and validates the collection (problems go to ``report``) and splits its rows
    into unchanged ones (counted) and ones to embed; ``gone`` holds the ids of stored rows
    the file no longer has."""
    path_abs = Path(os.path.abspath(path))
    source = path_to_uri(str(path_abs))
    collection = read_text_collection(
        path_abs, text_column=opts.text_column, id_column=opts.id_column
    )
    for problem in collection.problems:
        report.failures.append(
            Failure(
                str(path_abs),
                problem.reason,
                problem.exc_class,
                "read",
                row_number=problem.row_number,
            )
        )
    stored = store.state_by_uri(source)
    seen: set[str] = set()
    todo: list[TextTodo] = []
    for row in collection.rows:
        uri = f"{source}#{row.id}"
        sha = text_sha(row.text, row.metadata)
        prev = stored.get(uri)
        seen.add(uri)
        if prev is not None and prev.sha256 == sha:
            report.unchanged += 1
        else:
            todo.append((uri, row, sha, prev))
    progress("scan", len(collection.rows), len(collection.rows))
    progress("texts", 0, len(todo))
    gone = [state.id for uri, state in stored.items() if uri not in seen]
    return TextDiff(path_abs, source, os.stat(path_abs).st_mtime_ns, todo, gone)


def report_prep_failure(
    diff: TextDiff, entry: TextTodo, reason: str, exc_class: str, report: IndexReport,
    progress: ProgressFn,
) -> None:  # fmt: skip
    """A row that could not be tokenised: reported with its row number, not embedded."""
    report.failures.append(
        Failure(str(diff.path), reason, exc_class, "tokenize", row_number=entry[1].row_number)
    )
    progress("texts", 0, -1)  # one row less to embed
    progress("failed", 1, None)


def index_texts(
    path: Path,
    store: ItemStore,
    encoder: Encoder,
    opts: IndexOptions,
    report: IndexReport,
    next_id: int,
    progress: ProgressFn,
) -> int:
    """Indexes one text collection (see the module doc); returns the next free id."""
    diff = diff_texts(path, store, opts, report, progress)
    todo = diff.todo
    step = max(opts.batch_size, TEXT_BATCH_SIZE)  # texts are cheap to hold: big batches
    steps = text_steps(encoder)
    writer = BatchWriter(store, opts.commit_every)
    batch: list[tuple[TextTodo, Any]] = []

    def flush_embed() -> None:
        nonlocal next_id
        if not batch:
            return
        t0 = time.perf_counter()
        report.mark("first_embed", first=True)
        vectors = steps.embed([value for _, value in batch])
        report.embed_s += time.perf_counter() - t0
        report.mark("last_embed")
        next_id = write_text_rows(
            writer, diff, [entry for entry, _ in batch], vectors, next_id, report
        )
        progress("texts", len(batch), None)
        batch.clear()

    # One thread tokenises up to PREFETCH_BATCHES batches ahead while this thread embeds.
    with OrderedPool(
        partial(prepare_chunk, prepare=steps.prepare),
        lost=_lost_row,
        kind="thread",
        workers=1,
        chunk_size=step,
        timeout_s=opts.decode_timeout_s,
        max_in_flight=PREFETCH_BATCHES,
        grace_s=1.0,  # a thread starts at once; tokenising a batch takes milliseconds
    ) as pool:
        for result in pool.map((i, row.text) for i, (_u, row, _s, _p) in enumerate(todo)):
            entry = todo[result.index]
            if isinstance(result, PrepFailure):
                report_prep_failure(diff, entry, result.reason, result.exc_class, report, progress)
                continue
            batch.append((entry, result.value))
            if len(batch) >= step:
                flush_embed()
        flush_embed()
    writer.flush()
    report.deleted += store.delete_ids(diff.gone)
    return next_id


def write_text_rows(
    writer: BatchWriter,
    diff: TextDiff,
    done: list[TextTodo],
    vectors: npt.NDArray[np.float32],
    next_id: int,
    report: IndexReport,
) -> int:
    """Rows of embedded texts to the writer: a changed row keeps its id, a new one takes
    the next; returns the next free id."""
    ids: list[int] = []
    for _u, _row, _s, prev in done:
        if prev is not None:
            ids.append(prev.id)
            report.updated += 1
        else:
            ids.append(next_id)
            next_id += 1
            report.added += 1
    writer.add(
        make_rows(
            ids=ids,
            uris=[u for u, *_ in done],
            kind="text",
            texts=[row.text for _u, row, _s, _p in done],
            source=diff.source,
            mtime_ns=[diff.mtime_ns] * len(done),
            sizes=[len(row.text.encode("utf-8", "surrogatepass")) for _u, row, _s, _p in done],
            sha256=[s for _u, _r, s, _p in done],
            metadata=[{**row.metadata, ID_KEY: row.id} for _u, row, _s, _p in done],
            vectors=vectors,
            schema=writer.store.table.schema,
        )
    )
    report.embedded += len(done)
    return next_id
