"""The embedding executor: items in, ``(item, vector | failure)`` out, in batches.

One interface (:class:`Executor`), three places it runs: this machine
(:class:`LocalExecutor`), a Ray cluster (:class:`mmsearch.indexer.ray_pipeline.RayExecutor`),
and a re-embedding with another model (a :class:`LocalExecutor` with that model).

On this machine the preparation of the next items overlaps the model's work on the
current batch (:class:`~mmsearch.indexer.prefetch.OrderedPool`): images are read,
hashed, decoded and resized by decode workers (processes, or threads for images
already in memory), texts are tokenised by one prefetch thread. An item whose
preparation fails, hangs or kills its worker becomes a :class:`Failed` outcome alone;
its neighbours are embedded as usual.

A new index embeds every image it walked, so its run calls
:meth:`LocalExecutor.start_images` before it creates the table: the decode workers
spawn and the model's image session loads while LanceDB is imported. The first image
batch is one decode chunk (:data:`FIRST_BATCH`), so the model starts as soon as that
is decoded; once everything is decoded the idle workers are released without waiting
for them to exit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any, Literal, Protocol

import numpy as np
from mmsearch.indexer.decode import DecodeFailure, DecodeOk, DecodePool, default_decode_workers
from mmsearch.indexer.gpudecode import gpu_decode_enabled, read_jpeg_or_decode
from mmsearch.indexer.items import Embedded, Failed, Item, Kind, Outcome
from mmsearch.indexer.options import IndexOptions
from mmsearch.indexer.prefetch import OrderedPool
from mmsearch.indexer.textindex import (
    PREFETCH_BATCHES,
    TEXT_BATCH_SIZE,
    PrepFailure,
    lost_text,
    prepare_chunk,
    text_steps,
)

from mmsearch.models.base import Encoder

#: Images in an executor's first batch: one decode chunk, so that the model starts as
#: soon as the first chunk is decoded (later batches are ``batch_size``).
FIRST_BATCH = 16


class Executor(Protocol):
    """Embeds items of one kind; yields each model batch's outcomes (failures included)."""

    #: Seconds spent in the model so far.
    embed_s: float
    #: ``time.perf_counter()`` when the first batch went to the model, and when the last
    #: batch came back (None: nothing embedded yet); the run's report keeps them as phases.
    first_embed_at: float | None
    last_embed_at: float | None

    def run(self, kind: Kind, items: Sequence[Item]) -> Iterator[list[Outcome]]: ...


class LocalExecutor:
    """Embeds on this machine with ``encoder`` (see the module docstring).

    ``decode_in="thread"`` decodes in threads of this process: no worker start-up, for
    a few images whose bytes are in memory already (record upserts).

    >>> executor = LocalExecutor(encoder, IndexOptions(batch_size=64))  # doctest: +SKIP
    >>> for outcomes in executor.run("text", items):  # doctest: +SKIP
    ...     ...
    """

    def __init__(
        self,
        encoder: Encoder,
        opts: IndexOptions,
        *,
        decode_in: Literal["process", "thread"] = "process",
    ) -> None:
        self.encoder = encoder
        self.opts = opts
        self.batch_size = opts.batch_size or 64
        self.decode_in = decode_in
        self.device = str(getattr(encoder, "device", "cpu"))
        self.embed_s = 0.0
        self.first_embed_at: float | None = None
        self.last_embed_at: float | None = None
        self._early: DecodePool | None = None  # started by start_images, not used yet
        self._warmed = False

    def start_images(self) -> None:
        """Starts what the first image batch needs now, ahead of the items: the decode
        workers (spawned processes take a moment to start and import) and the model's
        image session, on a thread (when the encoder loads its sessions lazily). The
        next :meth:`run` of images uses them; :meth:`close` releases them if none does."""
        if self._early is None:
            self._early = self._decode_pool()
            self._early.start()
        self._warm_up()

    def close(self) -> None:
        """Releases decode workers that :meth:`start_images` started and no run used."""
        if self._early is not None:
            self._early.close(wait=False)
            self._early = None

    def _warm_up(self) -> None:
        warm_up = getattr(self.encoder, "warm_up", None)
        if warm_up is not None and not self._warmed:
            self._warmed = True
            threading.Thread(
                target=warm_up, args=("image",), name="mmsearch-warm-up", daemon=True
            ).start()

    def _timed(self, t0: float) -> None:
        """Books one model call that started at ``t0`` and has just returned."""
        now = time.perf_counter()
        self.embed_s += now - t0
        if self.first_embed_at is None:
            self.first_embed_at = t0
        self.last_embed_at = now

    def run(self, kind: Kind, items: Sequence[Item]) -> Iterator[list[Outcome]]:
        if not items:
            return iter(())
        return self._images(items) if kind == "image" else self._texts(items)

    # -- images ----------------------------------------------------------------------------
    def _decode_pool(self) -> DecodePool:
        opts = self.opts
        decode_fn = opts.decode_fn
        if decode_fn is None and gpu_decode_enabled(opts.gpu_decode, self.device):
            decode_fn = read_jpeg_or_decode  # workers read and check JPEGs; the GPU decodes them
        extra: dict[str, Any] = {"decode": decode_fn} if decode_fn is not None else {}
        if self.decode_in == "thread":
            extra.update(kind="thread", workers=opts.workers or 4, chunk_size=4)
        else:
            extra["workers"] = opts.workers or default_decode_workers(device=self.device)
        return DecodePool(
            self.encoder.image_size,
            timeout_s=opts.decode_timeout_s,
            max_pixels=opts.max_pixels,
            **extra,
        )

    def _images(self, items: Sequence[Item]) -> Iterator[list[Outcome]]:
        arrays: list[np.ndarray] = []
        pending: list[tuple[Item, str]] = []
        failed: list[Outcome] = []
        self._warm_up()  # the model's session loads while the first images decode
        pool, self._early = self._early or self._decode_pool(), None
        # Workers decode and resize ahead (up to 4 chunks each in flight) while this
        # thread runs the model, so decoding hides behind embedding.
        with pool:
            for result in pool.decode((i, item.payload) for i, item in enumerate(items)):
                item = items[result.index]
                if isinstance(result, DecodeFailure):
                    failed.append(Failed(item, result.reason, result.exc_class, "decode"))
                    continue
                assert isinstance(result, DecodeOk)
                arrays.append(result.array)
                pending.append((item, result.sha256))
                limit = self.batch_size
                if self.first_embed_at is None:  # nothing embedded yet: start the model soon
                    limit = min(limit, FIRST_BATCH)
                if len(arrays) >= limit:
                    yield failed + self._embed_images(arrays, pending)
                    arrays, pending, failed = [], [], []
            pool.close(wait=False)  # all decoded: idle workers exit while the model runs
            if arrays or failed:
                yield failed + self._embed_images(arrays, pending)

    def _embed_images(
        self, arrays: list[np.ndarray], pending: list[tuple[Item, str]]
    ) -> list[Outcome]:
        """The batch's outcomes: decoded arrays stacked as they are; JPEG bytes (1-D
        arrays, from GPU-decode workers) decoded on the encoder's device, where a file
        that no decoder accepts fails."""
        if not arrays:
            return []
        out: list[Outcome] = []
        if all(a.ndim != 1 for a in arrays):
            pixels = np.stack(arrays)
        else:
            from mmsearch.indexer.gpudecode import materialise_batch

            pixels, bad = materialise_batch(
                arrays, self.encoder.image_size, self.device, self.opts.max_pixels
            )
            dropped = {pos for pos, _reason, _exc in bad}
            out += [Failed(pending[pos][0], reason, exc, "decode") for pos, reason, exc in bad]
            keep = [i for i in range(len(arrays)) if i not in dropped]
            pixels, pending = pixels[keep], [pending[i] for i in keep]
        if pending:
            t0 = time.perf_counter()
            vectors = self.encoder.encode_images(pixels)
            self._timed(t0)
            out += [
                Embedded(item, vector, sha)
                for (item, sha), vector in zip(pending, vectors, strict=True)
            ]
        return out

    # -- texts -----------------------------------------------------------------------------
    def _texts(self, items: Sequence[Item]) -> Iterator[list[Outcome]]:
        step = max(self.batch_size, TEXT_BATCH_SIZE)  # texts are cheap to hold: big batches
        steps = text_steps(self.encoder)
        batch: list[tuple[Item, Any]] = []
        failed: list[Outcome] = []

        def embed() -> list[Outcome]:
            if not batch:
                return []
            t0 = time.perf_counter()
            vectors = steps.embed([value for _, value in batch])
            self._timed(t0)
            return [
                Embedded(item, vector, item.sha256)
                for (item, _), vector in zip(batch, vectors, strict=True)
            ]

        # One thread tokenises up to PREFETCH_BATCHES batches ahead while this one embeds.
        with OrderedPool(
            partial(prepare_chunk, prepare=steps.prepare),
            lost=lost_text,
            kind="thread",
            workers=1,
            chunk_size=step,
            timeout_s=self.opts.decode_timeout_s,
            max_in_flight=PREFETCH_BATCHES,
            grace_s=1.0,  # a thread starts at once; tokenising a batch takes milliseconds
        ) as pool:
            for result in pool.map((i, str(item.payload)) for i, item in enumerate(items)):
                item = items[result.index]
                if isinstance(result, PrepFailure):
                    failed.append(Failed(item, result.reason, result.exc_class, "tokenize"))
                    continue
                batch.append((item, result.value))
                if len(batch) >= step:
                    yield failed + embed()
                    batch, failed = [], []
            if batch or failed:
                yield failed + embed()
