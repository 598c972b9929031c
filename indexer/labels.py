"""``mmsearch label``: zero-shot labels for every image of an index, as one write.

The labelling itself (prompt ensembles, classification from the stored vectors, the
remembered label sets) is :mod:`mmsearch.labels`; this module holds the index for
writing (:func:`~mmsearch.indexer.session.writer_session`), labels, remembers the
label set, rebuilds the ANN indexes and publishes the new snapshot.

>>> label_index("./idx", LabelSet("category_zs", ("shirt", "dress", "shoe")))  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable

from mmsearch.indexer.ann_build import build_ann
from mmsearch.indexer.session import writer_session

from mmsearch.errors import BadQueryError
from mmsearch.labels import (
    LabelReport,
    LabelSet,
    apply_labels,
    column_in_use,
    load_label_sets,
    save_label_sets,
)
from mmsearch.models.base import Encoder
from mmsearch.models.hub import check_weights_reachable
from mmsearch.storage.locks import write_guard
from mmsearch.storage.rowsfile import published_model
from mmsearch.storage.table import ItemStore


def label_index(
    index_dir: str | os.PathLike[str],
    label_set: LabelSet,
    *,
    encoder: Encoder | None = None,
    device: str | None = None,
    progress: Callable[[str, int, int | None], None] | None = None,
) -> LabelReport:
    """Labels every image of an index, remembers the label set and publishes a new snapshot.

    ``index_dir`` is a folder or an object-store URI. Raises :class:`BadQueryError` when
    the images already carry the label set's column from elsewhere.
    """
    published = published_model(index_dir) if encoder is None else None
    if published is not None:  # weights out of reach: say so in a second, before LanceDB loads
        check_weights_reachable(published)
    with writer_session(index_dir) as session:
        store = ItemStore.open(session.local_dir)
        spec = store.model_spec
        if encoder is None:
            from mmsearch.models import load_encoder  # torch loads only when no encoder is given

            encoder = load_encoder(spec, device=device)
        remembered = {s.column for s in load_label_sets(session.local_dir)}
        if label_set.column not in remembered and column_in_use(store, label_set):
            raise BadQueryError(
                f"the images already have a {label_set.column!r} (or {label_set.prob_column!r}) metadata "
                "column; choose another --column"
            )
        report = apply_labels(store, encoder, label_set, only_missing=False, progress=progress)
        with write_guard(store.index_dir):
            others = [s for s in load_label_sets(session.local_dir) if s.column != label_set.column]
            save_label_sets(session.local_dir, [*others, label_set])
            build_ann(store, spec, progress=progress, encoder=encoder)
        session.publish()
    return report
