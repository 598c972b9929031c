"""The overlapped text-collection path: tokenised ahead on a prefetch thread, same vectors
as a plain loop, and a bad, failing or hanging row is reported without stalling the run."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from mmsearch.indexer.pipeline import IndexOptions, run_index
from mmsearch.indexer.textindex import TEXT_BATCH_SIZE

from mmsearch.models.backends import load_encoder
from mmsearch.models.spec import ModelSpec
from mmsearch.storage.table import ItemStore
from tests.conftest import FakeEncoder

WORDS = ["red", "blue", "floral", "striped", "shirt", "hat", "left", "right", "café", "日本"]


def _texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 9)))) + f" #{i}" for i in range(n)]


def _stored(index_dir: Path) -> dict[str, np.ndarray]:
    table = ItemStore.open(index_dir).scan(["text", "vector"])
    vectors = np.asarray(table.column("vector").to_pylist(), np.float32)
    return dict(zip(table.column("text").to_pylist(), vectors, strict=True))


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_text_vectors_equal_a_plain_loop(tmp_path: Path, backend: str) -> None:
    encoder = load_encoder(ModelSpec("mmsearch-tiny"), device="cpu", backend=backend)
    texts = _texts(TEXT_BATCH_SIZE + 45, seed=3)  # two model batches, the second partial
    path = tmp_path / "items.csv"
    path.write_text("caption\n" + "\n".join(texts) + "\n", encoding="utf-8")
    opts = IndexOptions(build_index=False, commit_every=100)
    report = run_index([path], tmp_path / "index", encoder.spec, options=opts, encoder=encoder)
    assert report.added == len(texts) and report.failed == 0
    stored = _stored(tmp_path / "index")
    plain = np.concatenate([encoder.encode_texts([t]) for t in texts[:: len(texts) // 7]])
    got = np.stack([stored[t] for t in texts[:: len(texts) // 7]])
    np.testing.assert_allclose(got, plain, atol=1e-5)  # batched vs one at a time
    np.testing.assert_allclose(
        np.stack([stored[t] for t in texts]), encoder.encode_texts(texts), atol=1e-5
    )


class TokenFake(FakeEncoder):
    """A FakeEncoder with a tokenise/embed split whose tokeniser fails on "BOOM" and
    hangs (for a while) on "HANG", as a pathological row could make a real one do."""

    hang_s = 4.0

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        for text in texts:
            if "BOOM" in text:
                raise ValueError("tokeniser exploded")
            if "HANG" in text:
                time.sleep(self.hang_s)
        data = [t.encode("utf-8")[:96].ljust(96, b"\0") for t in texts]
        return np.frombuffer(b"".join(data), np.uint8).reshape(len(texts), 96).astype(np.int64)

    def encode_tokens(self, tokens: np.ndarray) -> np.ndarray:
        texts = [bytes(row.astype(np.uint8)).rstrip(b"\0").decode("utf-8") for row in tokens]
        return self.encode_texts(texts)


def test_bad_rows_are_reported_and_never_stall(tmp_path: Path) -> None:
    good = _texts(40, seed=5)
    lines = [json.dumps({"id": f"g{i}", "caption": t}) for i, t in enumerate(good[:20])]
    lines.append('{"id": "broken", "caption": ')  # row 21: malformed JSON
    lines.append('{"id": "sur", "caption": "lone \\ud800 surrogate"}')  # row 22: not Unicode
    lines.append(json.dumps({"id": "boom", "caption": "BOOM goes the row"}))  # row 23
    lines.append(json.dumps({"id": "hang", "caption": "HANG on this row"}))  # row 24
    lines += [json.dumps({"id": f"g{i}", "caption": t}) for i, t in enumerate(good[20:], 20)]
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    encoder = TokenFake()
    opts = IndexOptions(build_index=False, decode_timeout_s=0.5)
    box: dict[str, object] = {}

    def work() -> None:
        box["report"] = run_index(
            [path], tmp_path / "index", encoder.spec, options=opts, encoder=encoder
        )

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "the text pipeline stalled"
    report = box["report"]
    found = {(f.row_number, f.stage, f.exc_class) for f in report.failures}  # type: ignore[attr-defined]
    assert found == {
        (21, "read", "JSONDecodeError"),
        (22, "read", "BadValueError"),
        (23, "tokenize", "ValueError"),
        (24, "tokenize", "TimeoutError"),
    }
    assert report.added == 40  # type: ignore[attr-defined]
    stored = _stored(tmp_path / "index")
    np.testing.assert_allclose(
        np.stack([stored[t] for t in good]), encoder.encode_texts(good), atol=1e-6
    )
