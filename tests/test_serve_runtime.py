"""Serving runtime: math-thread policy of workers, ONNX Runtime threads, JSON bodies, GET parameters."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from pydantic import ValidationError

from mmsearch.serve import jsonbody
from mmsearch.serve.schemas import SearchParams

_POLICY_PROBE = """
import json, os
from mmsearch.serve.lifecycle import apply_thread_policy
apply_thread_policy()
from mmsearch.models.onnx_encoder import onnx_threads
import faiss
print(json.dumps({"omp": os.environ.get("OMP_NUM_THREADS"), "wait": os.environ.get("OMP_WAIT_POLICY"),
                  "onnx": onnx_threads(), "faiss": faiss.omp_get_max_threads()}))
"""


def _probe(env: dict[str, str]) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_", "OPENBLAS_"))}
    out = subprocess.run(
        [sys.executable, "-c", _POLICY_PROBE],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_serving_workers_run_one_math_thread_that_sleeps_when_idle() -> None:
    """FAISS (OpenMP) and ONNX Runtime both end up on one thread, idle threads passive."""
    got = _probe({})
    assert got == {"omp": "1", "wait": "PASSIVE", "onnx": 1, "faiss": 1}


def test_thread_policy_leaves_the_operators_settings_alone() -> None:
    got = _probe({"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "ACTIVE"})
    assert got == {"omp": "2", "wait": "ACTIVE", "onnx": 2, "faiss": 2}


def test_onnx_threads_default_to_the_usable_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    from mmsearch.models.onnx_encoder import onnx_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert onnx_threads() == len(os.sched_getaffinity(0))
    for bad in ("0", "", "two"):
        monkeypatch.setenv("OMP_NUM_THREADS", bad)
        assert onnx_threads() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert onnx_threads() == 3


@pytest.mark.parametrize("fast", [True, False], ids=["orjson", "json"])
def test_json_bodies_match_the_standard_encoder(
    monkeypatch: pytest.MonkeyPatch, fast: bool
) -> None:
    if not fast:
        monkeypatch.setattr(jsonbody, "orjson", None)
    data = {
        "results": [
            {"id": np.int64(7), "score": np.float32(0.25), "text": "été ☀", "media": None},
            {"id": 8, "score": float("nan"), "vector": np.arange(3, dtype=np.float32)},
        ],
        "timings": {"encode": 0.001, "inf": math.inf},
        "reason": None,
    }
    response = jsonbody.json_response(data)
    assert response.media_type == "application/json" and response.status_code == 200
    assert json.loads(response.body) == {
        "results": [
            {"id": 7, "score": 0.25, "text": "été ☀", "media": None},
            {"id": 8, "score": None, "vector": [0.0, 1.0, 2.0]},
        ],
        "timings": {"encode": 0.001, "inf": None},
        "reason": None,
    }
    with pytest.raises(TypeError):
        jsonbody.dumps({"x": object()})


def test_get_parameters_validate_as_before() -> None:
    p = SearchParams.model_validate({"q": "red", "k": "7", "where": ["price < 20"], "other": "x"})
    assert (p.q, p.k, p.where, p.kind, p.mode, p.alpha) == (
        "red",
        7,
        ["price < 20"],
        "any",
        None,
        0.7,
    )
    assert not hasattr(p, "other")  # unknown parameters are ignored, as before
    for bad in ({"k": 0}, {"kind": "video"}, {"q": "a" * 2001}, {"alpha": 2}, {"dedup": 0},
                {"mode": "fuzzy"}, {"offset": -1}, {"rerank_depth": 0}, {"min_match": 1.5},
                {"rerank_blend": -0.1}):  # fmt: skip
        with pytest.raises(ValidationError):
            SearchParams.model_validate(bad)
