"""No input gives a 5xx: hypothesis over the request schemas of the search routes.

GET parameters, JSON bodies and multipart uploads built from the routes' own field
names, filled with hostile values: lone surrogates, NaN and infinities, huge and
negative numbers, over-long and path-like strings, wrong types and nesting. Every
answer must be a 2xx or a 4xx, errors in the one error model, never echoing much.
Seeded (``derandomize``) and bounded in examples.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("hypothesis")

from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mmsearch.datasets.synthetic import generate_catalog  # noqa: E402
from mmsearch.serve.app import ServerConfig, create_app  # noqa: E402
from mmsearch.serve.schemas import SearchParams, SearchRequest, TermIn  # noqa: E402
from tests.conftest import FakeEncoder  # noqa: E402
from tests.test_server import build_index, huge_header_png, png_bytes  # noqa: E402

FUZZ = settings(
    max_examples=120,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
MAX_ERROR_BYTES = 8_000

surrogates = st.text(alphabet=st.characters(categories=("Cs",)), min_size=1, max_size=3)
texts = st.one_of(
    st.text(max_size=40),
    surrogates,
    st.builds(lambda a, b: a + b, st.text(max_size=5), surrogates),
    st.sampled_from(
        [
            "", " ", "\x00", "../../etc/passwd", "/etc/passwd", "./" + "a" * 300 + ".jpg",
            "a" * 3000, "x' OR 1=1 --", '"unbalanced', "2:red + ./x.png - \"s\"", "price < 20",
            "colour in red,blue", "https://127.0.0.1/a.png", "file:///etc/passwd", "-1e999",
            "NaN", "Infinity", "9" * 400,
        ]
    ),
)  # fmt: skip
numbers = st.one_of(
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, 1000, 1001, 10_000, 10**18, 0.5, 1e-320]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.one_of(st.text(max_size=8), surrogates), children, max_size=4)
    ),
    max_leaves=8,
)


def _field_values(model: Any) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts of a model's own field names (plus a stray one), each a hostile value."""
    names = sorted(model.model_fields) + ["unknown_field"]
    return st.dictionaries(st.sampled_from(names), json_values, max_size=6)


terms = st.lists(st.one_of(_field_values(TermIn), json_values), max_size=4)
bodies = st.one_of(
    _field_values(SearchRequest),
    st.builds(lambda d, t: {**d, "terms": t}, _field_values(SearchRequest), terms),
    json_values,
)


def _as_param(value: Any) -> str:
    """A query-string value: text as UTF-8 (surrogates kept as their bytes), others as JSON."""
    text = value if isinstance(value, str) else json.dumps(value, allow_nan=True)
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    base = tmp_path_factory.mktemp("fuzz")
    catalog = generate_catalog(base / "catalog", n=12, seed=4)
    encoder = FakeEncoder()
    build_index(catalog, base / "idx", encoder)
    config = ServerConfig(
        index_dir=base / "idx", encoder=encoder, allowed_hosts=["testserver"],
        image_roots=[base], max_upload_bytes=100_000, log_format="none",
    )  # fmt: skip
    client = TestClient(create_app(config), raise_server_exceptions=False)
    client.sample_png = png_bytes(next(Path(catalog.image_dir).rglob("*.jpg")))  # type: ignore[attr-defined]
    return client


def _check(res: Any) -> None:
    assert res.status_code < 500, (res.status_code, res.text[:300])
    assert res.headers["content-type"].startswith("application/json")
    if res.status_code >= 400:
        body = res.json()
        assert isinstance(body["error"], str) and isinstance(body["type"], str)
        assert len(res.content) < MAX_ERROR_BYTES, len(res.content)


@FUZZ
@given(body=bodies)
def test_json_bodies_never_answer_5xx(client: TestClient, body: Any) -> None:
    raw = json.dumps(body, allow_nan=True).encode()  # NaN, Infinity and \ud800 escapes as sent
    _check(client.post("/api/search", content=raw, headers={"content-type": "application/json"}))


@FUZZ
@given(params=_field_values(SearchParams), repeated_where=st.lists(texts, max_size=20))
def test_get_parameters_never_answer_5xx(
    client: TestClient, params: dict[str, Any], repeated_where: list[str]
) -> None:
    pairs = [(k, _as_param(v)) for k, v in params.items()]
    pairs += [("where", _as_param(w)) for w in repeated_where]
    query = "&".join(f"{k}={v}" for k, v in pairs)
    _check(client.get(f"/api/search?{query}"))


uploads = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([b"", b"GIF89a not really", huge_header_png(), huge_header_png(1, 1)]),
    st.just("sample"),
)
upload_params = st.dictionaries(
    st.sampled_from(
        ["k", "kind", "where", "rerank", "rerank_depth", "min_match", "rerank_blend", "x"]
    ),
    scalars,
    max_size=4,
)


@FUZZ
@given(data=uploads, filename=texts, params=upload_params, field=st.sampled_from(["file", "other"]))
def test_multipart_uploads_never_answer_5xx(
    client: TestClient, data: Any, filename: str, params: dict[str, Any], field: str
) -> None:
    content = client.sample_png if data == "sample" else data  # type: ignore[attr-defined]
    safe_name = filename.encode("utf-8", "surrogatepass").decode("latin-1")
    query = "&".join(f"{k}={_as_param(v)}" for k, v in params.items())
    res = client.post(
        f"/api/search/image?{query}",
        files={field: (safe_name, content, "application/octet-stream")},
    )
    _check(res)
