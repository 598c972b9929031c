"""Zero-shot labels: classify indexed images against a list of label names with CLIP.

Each label is embedded through several prompt templates (``a photo of a {}.``, ...);
the unit text vectors are averaged and re-normalised (prompt ensembling, as in the
CLIP paper). An image's probabilities are the softmax of the model's logit scale
times the cosine similarities, computed from the image vectors already stored in the
table (no image is decoded again). The best label and its probability are stored in
the image's metadata as ``<column>`` and ``<column>_prob``, so filters
(``--where "category_zs = shoe"``) and results show them.

Label sets are remembered in ``INDEX/labels.json``; every later indexing run labels
the images it adds or changes (:func:`refresh_labels`), and a re-embedding run
labels everything again with the new model. Labelling a whole index as one write
(lock, labels, ANN, publish) is :func:`mmsearch.indexer.labels.label_index`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from mmsearch.errors import BadQueryError
from mmsearch.storage.schema import fixed_list_to_numpy, sql_quote

if TYPE_CHECKING:
    from mmsearch.models.base import Encoder
    from mmsearch.storage.table import ItemStore

LABELS_FILE = "labels.json"
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a good photo of a {}.",
    "a cropped photo of a {}.",
    "a photo of one {}.",
    "a {}.",
)
PROB_SUFFIX = "_prob"
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_CHUNK = 2000


@dataclass(frozen=True)
class LabelSet:
    """Label names, the prompt templates that describe them, and the metadata column they fill."""

    column: str
    labels: tuple[str, ...]
    templates: tuple[str, ...] = DEFAULT_TEMPLATES

    def __post_init__(self) -> None:
        if not _COLUMN.match(self.column):
            raise BadQueryError(
                f"label column {self.column!r}: use letters, digits and _ (at most 64)"
            )
        labels = tuple(x.strip() for x in self.labels if x.strip())
        if len(set(labels)) < 2:
            raise BadQueryError("give at least two distinct labels")
        if not self.templates or any("{}" not in t for t in self.templates):
            raise BadQueryError("every template needs a {} where the label goes")
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "templates", tuple(self.templates))

    @property
    def prob_column(self) -> str:
        return self.column + PROB_SUFFIX

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabelSet:
        return cls(
            data["column"], tuple(data["labels"]), tuple(data.get("templates") or DEFAULT_TEMPLATES)
        )


@dataclass
class LabelReport:
    """What a labelling pass did."""

    column: str
    labelled: int = 0
    counts: dict[str, int] = field(default_factory=dict)


def load_label_sets(index_dir: str | os.PathLike[str]) -> list[LabelSet]:
    """The label sets remembered for an index (none when it has no ``labels.json``)."""
    path = Path(index_dir) / LABELS_FILE
    if not path.is_file():
        return []
    return [LabelSet.from_dict(d) for d in json.loads(path.read_text(encoding="utf-8"))]


def save_label_sets(index_dir: str | os.PathLike[str], sets: Sequence[LabelSet]) -> None:
    """Writes ``labels.json`` atomically."""
    path = Path(index_dir) / LABELS_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps([s.to_dict() for s in sets], indent=1), encoding="utf-8")
    os.replace(tmp, path)


def label_embeddings(encoder: Encoder, label_set: LabelSet) -> npt.NDArray[np.float32]:
    """One unit vector per label: the re-normalised mean of its prompts' text vectors."""
    prompts = [t.format(label) for label in label_set.labels for t in label_set.templates]
    vectors = np.asarray(encoder.encode_texts(prompts), dtype=np.float32)
    vectors = vectors.reshape(len(label_set.labels), len(label_set.templates), -1).mean(axis=1)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def logit_scale(encoder: Encoder) -> float:
    """The model's learned temperature (CLIP: about 100); 100 when the encoder has none."""
    model = getattr(encoder, "model", None)
    scale = getattr(model, "logit_scale", None)
    if scale is None:
        return 100.0
    return float(np.exp(float(scale.detach().float().cpu().reshape(-1)[0])))


def classify(
    image_vectors: npt.NDArray[np.float32],
    label_vectors: npt.NDArray[np.float32],
    scale: float = 100.0,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """(best label index, its softmax probability) of each image vector."""
    logits = scale * (image_vectors @ label_vectors.T)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    best = probs.argmax(axis=1)
    return best.astype(np.int64), probs[np.arange(len(best)), best].astype(np.float32)


def apply_labels(
    store: ItemStore,
    encoder: Encoder,
    label_set: LabelSet,
    *,
    only_missing: bool,
    progress: Callable[[str, int, int | None], None] | None = None,
) -> LabelReport:
    """Labels the table's images (only those without the column when ``only_missing``).

    Rows are rewritten with their metadata extended (one commit per chunk); ids,
    vectors and content hashes stay as they are, so ANN indexes need no change.
    """
    report = LabelReport(label_set.column)
    meta = store.scan(["id", "metadata"], f"kind = {sql_quote('image')}")
    ids = meta.column("id").to_pylist()
    if only_missing:
        ids = [
            i
            for i, m in zip(ids, meta.column("metadata").to_pylist(), strict=True)
            if label_set.column not in json.loads(m or "{}")
        ]
    if progress is not None:
        progress("labels", 0, len(ids))
    if not ids:
        return report
    label_vectors = label_embeddings(encoder, label_set)
    scale = logit_scale(encoder)
    for start in range(0, len(ids), _CHUNK):
        part = ",".join(str(int(i)) for i in ids[start : start + _CHUNK])
        rows = store.scan(store.table.schema.names, f"id IN ({part})")
        best, prob = classify(
            fixed_list_to_numpy(rows.column("vector"), store.dim), label_vectors, scale
        )
        metadata = []
        for m, b, p in zip(
            rows.column("metadata").to_pylist(), best.tolist(), prob.tolist(), strict=True
        ):
            record = json.loads(m or "{}")
            record[label_set.column] = label_set.labels[b]
            record[label_set.prob_column] = round(float(p), 4)
            report.counts[label_set.labels[b]] = report.counts.get(label_set.labels[b], 0) + 1
            metadata.append(json.dumps(record, sort_keys=True, default=str))
        rows = rows.set_column(
            rows.schema.get_field_index("metadata"), "metadata", pa.array(metadata, pa.string())
        )
        store.upsert(rows)
        report.labelled += rows.num_rows
        if progress is not None:
            progress("labels", rows.num_rows, None)
    return report


def refresh_labels(
    store: ItemStore, encoder: Encoder, *, relabel_all: bool = False
) -> list[LabelReport]:
    """Applies every remembered label set to the images that lack it (all images when ``relabel_all``)."""
    return [
        apply_labels(store, encoder, s, only_missing=not relabel_all)
        for s in load_label_sets(store.index_dir)
    ]


def column_in_use(store: ItemStore, label_set: LabelSet) -> bool:
    """True when some image already has ``label_set``'s column or its probability column."""
    metadata = (
        store.scan(["metadata"], f"kind = {sql_quote('image')}").column("metadata").to_pylist()
    )
    keys = {label_set.column, label_set.prob_column}
    return any(keys & json.loads(m or "{}").keys() for m in metadata)
