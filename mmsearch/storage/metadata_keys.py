"""One metadata vocabulary for every item, image or text.

* ``file`` — the item's file as the collection names it: for an image, its path
  relative to the folder that was indexed; for a text row, the collection's own
  ``file`` column when it has one (a caption row naming its image).
* ``id`` — the row's id in its collection or metadata sidecar, when there is one.

So an image and the caption row that describes it carry the same ``file`` and ``id``.
Indexes written before this vocabulary stored ``filename`` (a base name) on images and
``row_id`` on texts; :func:`normalize_metadata` reads those under the new names, so
old indexes answer filters and show results in the same words without a rebuild.
"""

from __future__ import annotations

from typing import Any

FILE_KEY = "file"
ID_KEY = "id"
#: Keys of indexes written before the shared vocabulary → their names now.
LEGACY_KEYS = {"filename": FILE_KEY, "row_id": ID_KEY}


def normalize_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` with legacy keys renamed (a present new key wins); a new dict when changed.

    >>> normalize_metadata({"row_id": "item-1", "sku": "A"})
    {'sku': 'A', 'id': 'item-1'}
    """
    if not any(key in metadata for key in LEGACY_KEYS):
        return metadata
    out = {k: v for k, v in metadata.items() if k not in LEGACY_KEYS}
    for old, new in LEGACY_KEYS.items():
        if old in metadata:
            out.setdefault(new, metadata[old])
    return out
