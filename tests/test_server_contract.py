"""The HTTP contract: ``/openapi.json`` tells the truth, checked by schemathesis.

Every documented operation is exercised by schemathesis' pytest integration against
the application in-process (seeded, bounded in examples), with all of its checks:
statuses, content types, headers and bodies as declared, schema-valid requests
accepted and schema-invalid ones refused (per ``schemathesis.toml``), no 5xx, 405
with ``Allow`` for undocumented methods. A route added without declared answers fails
:func:`test_every_route_declares_its_answers`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")

from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from mmsearch.datasets.synthetic import generate_catalog  # noqa: E402
from mmsearch.serve.app import ServerConfig, create_app  # noqa: E402
from mmsearch.serve.contract import undeclared_answers  # noqa: E402
from tests.conftest import FakeEncoder  # noqa: E402
from tests.test_server import build_index  # noqa: E402

TOKEN = "contract-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def _in_repo() -> Iterator[None]:
    """In the repository root, where schemathesis finds schemathesis.toml (what a
    schema-valid request may still be answered, and why)."""
    before = os.getcwd()
    os.chdir(REPO)
    try:
        yield
    finally:
        os.chdir(before)


# The application is made at import, so that schemathesis can read its schema while
# pytest collects (its fixture-based loader needs pytest internals that pytest 9 no
# longer has); its index is built into WORK by the module fixture below, before any
# request reaches it (the schema itself needs no index).
WORK = Path(tempfile.mkdtemp(prefix="mmsearch-contract-"))
ENCODER = FakeEncoder()


def _config() -> ServerConfig:
    return ServerConfig(
        index_dir=WORK / "idx", encoder=ENCODER, token=TOKEN, allowed_hosts=["*"],
        image_roots=[WORK / "catalog"], rerank_model="mmsearch-tiny-itm", log_format="none",
        auth_failures_per_minute=100_000,
    )  # fmt: skip


APP = create_app(_config())
with _in_repo():
    schema = schemathesis.openapi.from_asgi("/openapi.json", APP, headers=AUTH)
# The token as configuration (like `schemathesis run -H`), not added to each call: then
# schemathesis knows every request carries it and never counts its absence as tested.
schema.config.update(headers=AUTH)


@pytest.fixture(scope="module", autouse=True)
def contract_app() -> Iterator[FastAPI]:
    catalog = generate_catalog(WORK / "catalog", n=16, seed=21)
    build_index(catalog, WORK / "idx", ENCODER)
    try:
        yield APP
    finally:
        shutil.rmtree(WORK, ignore_errors=True)


@schema.parametrize()
@settings(max_examples=40, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_schema_tells_the_truth(case: Any) -> None:
    case.call_and_validate()


def test_every_route_declares_its_answers(contract_app: FastAPI) -> None:
    assert undeclared_answers(contract_app) == []


def test_a_route_without_declared_answers_is_caught(contract_app: FastAPI) -> None:
    app = create_app(_config())

    @app.get("/api/new-thing")
    def new_thing(n: int = 1) -> dict[str, int]:
        return {"n": n}

    problems = undeclared_answers(app)
    assert any(p.startswith("GET /api/new-thing: 401 not declared") for p in problems), problems
    assert any("FastAPI's default 422" in p for p in problems), problems


def test_options_and_allow_match_the_schema(contract_app: FastAPI) -> None:
    client = TestClient(contract_app, headers=AUTH)
    spec = contract_app.openapi()
    for path, operations in spec["paths"].items():
        url = path.replace("{item_id}", "1")
        documented = {m.upper() for m in operations}
        res = client.options(url)
        assert res.status_code == 204, (path, res.status_code)
        allowed = {m.strip() for m in res.headers["allow"].split(",")}
        assert allowed - {"HEAD", "OPTIONS"} == documented, (path, allowed)
        for method in {"GET", "POST", "PUT", "DELETE", "PATCH"} - documented:
            refused = client.request(method, url)
            assert refused.status_code == 405, (method, path)
            assert {m.strip() for m in refused.headers["allow"].split(",")} == allowed
            assert refused.json()["type"] == "MethodNotAllowed"


def test_the_schema_states_what_the_server_requires(contract_app: FastAPI) -> None:
    """The cases schemathesis first found: each is now refused by the schema, or answered."""
    import jsonschema

    spec = contract_app.openapi()
    request = spec["components"]["schemas"]["SearchRequest"]
    resolver = {"components": spec["components"], **request}
    for body in ({}, {"terms": []}, {"q": "   "}, {"terms": [{"text": "a", "image": "b.png"}]}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(body, resolver)
    jsonschema.validate({"q": "red"}, resolver)
    client = TestClient(contract_app, headers=AUTH)
    assert client.post("/api/search", json={}).status_code == 422
    empty = client.get("/api/search")  # no q: an empty answer with a reason
    assert empty.status_code == 200 and empty.json()["results"] == [] and empty.json()["reason"]
    upload = spec["components"]["schemas"]["Body_search_image_api_search_image_post"]
    assert upload["properties"]["file"]["minLength"] == 1
    assert client.post("/api/search/image", files={"file": ("e.png", b"")}).status_code == 422
    media = spec["paths"]["/media/{item_id}"]["get"]["responses"]["200"]["content"]
    assert "image/*" in media and "application/json" not in media
    assert "url" not in spec["components"]["schemas"]["TermIn"]["properties"]  # URLs are off
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_json_routes_require_a_json_content_type(contract_app: FastAPI) -> None:
    client = TestClient(contract_app, headers=AUTH)
    body = b'{"q": "red"}'
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"content-type": content_type} if content_type else {}
        res = client.post("/api/search", content=body, headers=headers)
        assert res.status_code == 415 and res.json()["type"] == "UnsupportedMediaType", content_type
    ok = client.post(
        "/api/search", content=body, headers={"content-type": "application/json; charset=utf-8"}
    )
    assert ok.status_code == 200
