"""The re-ranking model an index records, only when its user asks for it.

``mmsearch index ... --rerank-model NAME`` writes ``rerank.json`` into the index
directory; ``query --rerank`` and ``serve`` then use that model unless told
otherwise. An index never records one on its own: without the file the default
(``Salesforce/blip-itm-base-coco``) applies.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mmsearch.errors import IndexCorruptError
from mmsearch.rerank.loader import DEFAULT_RERANK_MODEL

RERANK_CONFIG_FILE = "rerank.json"


def record_rerank_model(index_dir: str | os.PathLike[str], model: str) -> Path:
    """Records ``model`` as the index's re-ranking model (atomic write)."""
    if not model.strip():
        raise ValueError("empty rerank model name")
    path = Path(index_dir) / RERANK_CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"rerank_model": model}) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def recorded_rerank_model(index_dir: str | os.PathLike[str]) -> str | None:
    """The model recorded for the index, or ``None`` when the user never recorded one."""
    path = Path(index_dir) / RERANK_CONFIG_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise IndexCorruptError(
            f"unreadable {path}: {exc}; delete it or re-record with --rerank-model"
        ) from exc
    model = data.get("rerank_model") if isinstance(data, dict) else None
    if not isinstance(model, str) or not model:
        raise IndexCorruptError(
            f"{path} names no rerank_model; delete it or re-record with --rerank-model"
        )
    return model


def rerank_model_for(index_dir: str | os.PathLike[str], asked: str | None) -> str:
    """What to load: the model asked for, else the index's recorded one, else the default."""
    return asked or recorded_rerank_model(index_dir) or DEFAULT_RERANK_MODEL
