"""Texts ready for the model: the tokenise/embed split, batch sizes and content hashes.

Texts to embed go through the same overlapped machinery as images
(:class:`~mmsearch.indexer.prefetch.OrderedPool`, driven by
:class:`~mmsearch.indexer.executor.LocalExecutor`): a prefetch thread tokenises the next
batches (ftfy/HTML clean-up and BPE; the Rust tokenizer and the model both release the
GIL) while the model embeds the current one, in batches of at least
:data:`TEXT_BATCH_SIZE`. A text whose tokenisation fails or hangs is skipped and
reported; the run carries on.

Encoders that expose ``tokenize``/``encode_tokens`` (the torch and ONNX encoders) get
this split; any other :class:`~mmsearch.models.base.Encoder` has its texts prefetched
as they are and embedded with ``encode_texts``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from mmsearch.models.base import Encoder

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


def text_sha(text: str, metadata: dict[str, Any]) -> str:
    """Content hash of a row: a re-run re-embeds a row only when this changes."""
    payload = json.dumps({"text": text, "metadata": metadata}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()


def lost_text(index: int, text: str, reason: str, exc_class: str) -> PrepFailure:
    return PrepFailure(index, f"tokenisation {reason}", exc_class)
