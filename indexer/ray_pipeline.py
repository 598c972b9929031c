"""Indexing on a Ray cluster: the embedding executor as a Ray Data pipeline.

``mmsearch index PATHS --ray [ADDRESS]`` / ``IndexOptions(ray=...)``. Discovery, the diff
against the table, the writes, the sweep and the ANN build stay on the driver and are
the single-machine ones (the sources and :func:`mmsearch.indexer.writeloop.write_source`);
:class:`RayExecutor` runs the middle::

    files to do ─ map_batches(decode, tasks) ─ map_batches(embed, actors: one model each,
    a GPU each where the cluster has GPUs) ─ iter_batches ─▶ driver: rows committed in
    groups of commit_every (the same LanceDB table and schema, the same failure report)

Texts go the same way without the decode step: actors tokenise and embed batches of
rows (a row that cannot be tokenised comes back with the same reason as in a local
run), and the driver writes and deletes.

A killed driver leaves the groups committed so far, like a killed local run: the next
run (Ray or not) sees them as unchanged and embeds only the rest.

Workers read the image files by path and the driver writes the table, so the image
folders must be at the same path on every node (a shared file system); the index
itself may be a local directory of the driver or an object-store URI.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from mmsearch.indexer.decode import DecodeOk, decode_chunk
from mmsearch.indexer.items import Embedded, Failed, Item, Kind, Outcome
from mmsearch.indexer.options import IndexOptions
from mmsearch.indexer.textindex import TEXT_BATCH_SIZE, PrepFailure, prepare_chunk, text_steps

from mmsearch.models.base import Encoder

#: Images per decode task batch (each Ray task decodes one batch).
DECODE_BATCH = 32


def connect(address: str) -> Any:
    """``ray.init`` for ``address`` (``"local"``: a new local cluster; ``"auto"``: the
    cluster started by ``ray start`` on this machine; ``ray://host:10001``: a remote
    one), unless this process is already connected."""
    import ray

    if not ray.is_initialized():
        ray.init(address=None if address in ("", "local") else address, log_to_driver=False)
    return ray


def decode_batch(batch: dict[str, np.ndarray], size: int, max_pixels: int) -> dict[str, np.ndarray]:
    """Ray task: ``decode_chunk`` over one batch of paths; a bad file becomes a row with
    the same reason and exception class as in a local run, never a task failure."""
    n = len(batch["pos"])
    arrays = np.zeros((n, size, size, 3), np.uint8)
    sha, error, exc_class = [""] * n, [""] * n, [""] * n
    sources = [p if isinstance(p, bytes) else str(p) for p in batch["path"]]
    for result in decode_chunk(list(enumerate(sources)), size, max_pixels):
        i = result.index
        if isinstance(result, DecodeOk):
            arrays[i], sha[i] = result.array, result.sha256
        else:
            error[i], exc_class[i] = result.reason or "unreadable image", result.exc_class
    return {
        "pos": batch["pos"],
        "image": arrays,
        "sha256": np.asarray(sha, dtype=object),
        "error": np.asarray(error, dtype=object),
        "exc_class": np.asarray(exc_class, dtype=object),
    }


class EmbedActor:
    """Ray actor: one encoder, loaded once, embeds the decoded rows of each batch."""

    def __init__(
        self,
        spec: Any,
        device: str | None,
        encoder: Encoder | None = None,
        backend: str = "torch",
        quantize: str | None = None,
    ) -> None:
        if encoder is None:
            from mmsearch.models.backends import load_encoder

            encoder = load_encoder(spec, device=device, backend=backend, quantize=quantize)
        self.encoder = encoder

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.asarray([not e for e in batch["error"]], bool)
        vectors = np.zeros((len(ok), self.encoder.dim), np.float32)
        if ok.any():
            vectors[ok] = self.encoder.encode_images(batch["image"][ok])
        out = {k: v for k, v in batch.items() if k != "image"}
        out["vector"] = vectors
        return out


class TextEmbedActor(EmbedActor):
    """Ray actor: one encoder, loaded once, tokenises and embeds batches of text rows."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.steps = text_steps(self.encoder)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["pos"])
        prepared = prepare_chunk(list(enumerate(str(t) for t in batch["text"])), self.steps.prepare)
        error, exc_class = [""] * n, [""] * n
        ok = [r for r in prepared if not isinstance(r, PrepFailure)]
        for r in prepared:
            if isinstance(r, PrepFailure):
                error[r.index], exc_class[r.index] = r.reason, r.exc_class
        vectors = np.zeros((n, self.encoder.dim), np.float32)
        if ok:
            vectors[[r.index for r in ok]] = self.steps.embed([r.value for r in ok])
        return {
            "pos": batch["pos"],
            "vector": vectors,
            "error": np.asarray(error, dtype=object),
            "exc_class": np.asarray(exc_class, dtype=object),
        }


def _actor_options(ray: Any, encoder: Encoder, opts: IndexOptions) -> dict[str, Any]:
    """map_batches arguments of the embedding actors: one model each, a GPU each where the
    cluster has GPUs, else up to ``opts.ray_actors`` actors on half the CPUs."""
    gpus = int(ray.cluster_resources().get("GPU", 0)) if opts.device != "cpu" else 0
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return {
        "fn_constructor_kwargs": {
            "spec": encoder.spec,
            "device": "cuda" if gpus else "cpu",
            "encoder": None if _loadable(encoder) else encoder,
            "backend": opts.backend,  # "auto" picks per actor: torch on a GPU, else ONNX
            "quantize": opts.quantize,
        },
        "concurrency": max(1, gpus) if gpus else max(1, min(cpus // 2, opts.ray_actors)),
        "num_gpus": 1 if gpus else 0,
    }


class RayExecutor:
    """The :class:`~mmsearch.indexer.executor.Executor` on a Ray cluster (see the module doc).

    ``encoder`` is the driver's; the actors load their own copy of the same model
    (``encoder.spec``), or receive ``encoder`` itself when it is not a registered model.
    Outcomes come back in groups of ``commit_every`` items.
    """

    def __init__(self, encoder: Encoder, opts: IndexOptions) -> None:
        self.encoder = encoder
        self.opts = opts
        self.embed_s = 0.0  # the model runs in the actors, not here
        self.first_embed_at: float | None = None  # when embedded batches came back
        self.last_embed_at: float | None = None

    def run(self, kind: Kind, items: Sequence[Item]) -> Iterator[list[Outcome]]:
        if not items:
            return
        ray = connect(self.opts.ray or "local")
        opts = self.opts
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        if kind == "text":
            step = max(opts.batch_size or 1, TEXT_BATCH_SIZE)
            rows = [{"pos": i, "text": str(item.payload)} for i, item in enumerate(items)]
            ds = ray.data.from_items(
                rows, override_num_blocks=max(1, min(len(rows) // step, 4 * cpus))
            )
            ds = ds.map_batches(
                TextEmbedActor, batch_size=step, batch_format="numpy",
                **_actor_options(ray, self.encoder, opts),
            )  # fmt: skip
            stage = "tokenize"
        else:
            rows = [{"pos": i, "path": item.payload} for i, item in enumerate(items)]
            ds = ray.data.from_items(
                rows, override_num_blocks=max(1, min(len(rows) // DECODE_BATCH, 4 * cpus))
            )
            ds = ds.map_batches(
                decode_batch,
                fn_kwargs={"size": self.encoder.image_size, "max_pixels": opts.max_pixels},
                batch_size=DECODE_BATCH,
                batch_format="numpy",
            )
            ds = ds.map_batches(
                EmbedActor, batch_size=opts.batch_size, batch_format="numpy",
                **_actor_options(ray, self.encoder, opts),
            )  # fmt: skip
            stage = "decode"
        for batch in ds.iter_batches(batch_size=opts.commit_every, batch_format="numpy"):
            shas = batch.get("sha256")
            out: list[Outcome] = []
            for n, (pos, error, exc_class, vector) in enumerate(
                zip(batch["pos"], batch["error"], batch["exc_class"], batch["vector"], strict=True)
            ):
                item = items[int(pos)]
                if error:
                    out.append(Failed(item, str(error), str(exc_class), stage))
                else:
                    out.append(
                        Embedded(item, vector, str(shas[n]) if shas is not None else item.sha256)
                    )
            self.last_embed_at = time.perf_counter()
            self.first_embed_at = self.first_embed_at or self.last_embed_at
            yield out


def _loadable(encoder: Encoder) -> bool:
    """Whether ``load_encoder(encoder.spec, backend=...)`` rebuilds this encoder on a worker
    (an ONNX Runtime session cannot be pickled; a registered model loads anywhere)."""
    from mmsearch.models.encoder import ClipEncoder
    from mmsearch.models.onnx_encoder import OnnxEncoder

    return isinstance(encoder, ClipEncoder | OnnxEncoder)
