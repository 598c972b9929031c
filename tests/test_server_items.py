"""Writes over HTTP (mmsearch.serve.item_routes): ``PUT /api/items``, ``DELETE /api/items/{id}``
and ``GET /api/items/{id}`` against a real uvicorn server on 127.0.0.1, a real image
server for record URLs (tests/image_server.py), LanceDB and FAISS; the fake encoder
keeps embedding fast and deterministic. Bad input and faults (ROBUSTNESS.md): missing
or wrong token, a cookie instead of the bearer header, a foreign Origin, a non-JSON
body, an oversized body, schema violations, duplicate ids, a busy writer, a write
while searches run, private URLs, and ``--allow-writes`` without a token.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mmsearch.indexer.upsert import create_index
from typer.testing import CliRunner

from mmsearch.cli import app as cli_app
from mmsearch.datasets.synthetic import generate_catalog
from mmsearch.serve.app import ServerConfig, create_app
from mmsearch.serve.contract import undeclared_answers
from mmsearch.serve.item_schemas import MAX_RECORDS
from mmsearch.serve.security import InsecureWriteError
from mmsearch.storage.locks import index_write_lock
from tests.conftest import FakeEncoder
from tests.image_server import ImageServer
from tests.test_server import serve_in_thread

TOKEN = "items-token-0123456789-abcdef"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def encoder() -> FakeEncoder:
    return FakeEncoder()


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return generate_catalog(tmp_path_factory.mktemp("cat") / "c", n=24, seed=2101, image_size=48)


@pytest.fixture(scope="module")
def images(catalog: Any) -> ImageServer:
    with ImageServer(slow_s=3.0) as srv:
        for row in catalog.rows:
            srv.add("img/" + row["file"], (catalog.root / row["file"]).read_bytes())
        yield srv


def data_uri(path: Path) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()


def record(catalog: Any, i: int, **extra: Any) -> dict[str, Any]:
    """Record ``i``: its caption as title, a unique brand word, its image as a data URI."""
    row = catalog.rows[i]
    return {"id": f"sku-{i}", "title": f"{row['caption']} brand{i:03d}x", "price": float(row["price"]),
            "category": row["category"], "image": data_uri(catalog.root / row["file"]), **extra}  # fmt: skip


def new_index(tmp_path: Path, encoder: FakeEncoder) -> Path:
    index = tmp_path / "idx"
    create_index(index, encoder.spec, encoder=encoder)
    return index


@pytest.fixture
def server(tmp_path: Path, encoder: FakeEncoder) -> Iterator[tuple[str, ServerConfig]]:
    config = ServerConfig(index_dir=new_index(tmp_path, encoder), encoder=encoder, token=TOKEN,
                          writes=True, allow_private_write_urls=True, url_timeout_s=1.5)  # fmt: skip
    with serve_in_thread(create_app(config)) as base:
        yield base, config


def lexical_ids(http: httpx.Client, word: str, mode: str = "lexical") -> set[str]:
    res = http.get("/api/search", params={"q": word, "mode": mode, "k": 50, "kind": "any"})
    assert res.status_code == 200, res.text
    return {h["metadata"].get("id") for h in res.json()["results"]}


def test_put_search_get_delete_round_trip(server: Any, catalog: Any, images: ImageServer) -> None:
    base, _ = server
    with httpx.Client(base_url=base, headers=AUTH, timeout=60) as http:
        for mode in ("lexical", "hybrid"):  # a new index, before its first write: no items yet
            empty = http.get("/api/search", params={"q": "brand000x", "mode": mode})
            assert empty.status_code == 200 and empty.json()["results"] == [], empty.text
            assert "no items yet" in empty.json()["reason"]
        batch = [record(catalog, 0), record(catalog, 1)]
        batch[1]["image"] = images.url("img/" + catalog.rows[1]["file"])  # a URL this time
        batch.append({"id": "sku-2", "title": "no picture", "images": [images.url("missing.jpg")]})
        res = http.put("/api/items", json=batch)
        assert res.status_code == 200, res.text
        body = res.json()
        assert body["ids"] == ["sku-0", "sku-1", "sku-2"] and body["records"] == 3
        assert body["images"]["added"] == 2 and body["texts"]["added"] == 3
        assert [(f["id"], "404" in f["reason"]) for f in body["failed"]] == [("sku-2", True)]
        version = int(res.headers["x-mmsearch-snapshot"].split(".")[0])
        assert version == body["table_version"]  # the answer names the snapshot it published
        for mode in ("lexical", "hybrid", "vector"):  # searchable at once, in every mode
            assert "sku-1" in lexical_ids(http, "brand001x", mode)
        got = http.get("/api/items/sku-1").json()
        assert got["id"] == "sku-1" and sorted(r["kind"] for r in got["items"]) == ["image", "text"]
        assert all(r["metadata"]["category"] == catalog.rows[1]["category"] for r in got["items"])
        hit = http.get("/api/search", params={"q": "brand001x", "mode": "lexical"}).json()
        assert all(h["media"] is None for h in hit["results"])  # a record's image has no file

        again = http.put("/api/items", json=batch[:2]).json()  # idempotent: nothing embedded
        assert again["embedded"] == 0 and again["images"]["unchanged"] == 2
        changed = http.put("/api/items", json=[{**batch[0], "title": "renamed brand000y"}]).json()
        assert changed["texts"]["updated"] == 1 and changed["embedded"] == 1
        assert (
            lexical_ids(http, "brand000y") == {"sku-0"} and lexical_ids(http, "brand000x") == set()
        )

        assert http.delete("/api/items/sku-1").json() == {"id": "sku-1", "deleted": True}
        assert http.delete("/api/items/sku-1").json() == {"id": "sku-1", "deleted": False}
        for mode in ("lexical", "hybrid", "vector"):
            assert "sku-1" not in lexical_ids(http, "brand001x", mode)
        missing = http.get("/api/items/sku-1")
        assert missing.status_code == 404 and missing.json()["type"] == "NotFound"


def test_writes_refuse_what_they_must(
    tmp_path: Path, encoder: FakeEncoder, catalog: Any, images: ImageServer
) -> None:
    """Token, cookie, Origin, content type, size cap, schema, duplicates, private URLs."""
    config = ServerConfig(index_dir=new_index(tmp_path, encoder), encoder=encoder, token=TOKEN,
                          writes=True, max_upload_bytes=64 * 1024)  # fmt: skip
    good = [{"id": "sku-1", "title": "a red circle"}]
    with (
        serve_in_thread(create_app(config)) as base,
        httpx.Client(base_url=base, timeout=60) as http,
    ):
        assert http.put("/api/items", json=good).status_code == 401
        wrong = http.put("/api/items", json=good, headers={"authorization": "Bearer nope-nope"})
        assert wrong.status_code == 401
        signed_in = http.post("/login", data={"token": TOKEN}, follow_redirects=False)
        assert signed_in.status_code == 303 and "mmsearch_session" in http.cookies
        assert http.get("/api/info").status_code == 200  # the cookie reads ...
        refused = http.put("/api/items", json=good)  # ... but never writes
        assert refused.status_code == 401 and "Bearer" in refused.json()["error"]
        assert http.delete("/api/items/sku-1").status_code == 401
        cookie_and_wrong = http.put(
            "/api/items", json=good, headers={"authorization": "Bearer wrong-token-xyz"}
        )
        assert cookie_and_wrong.status_code == 401  # a wrong bearer is not saved by the cookie
        http.cookies.clear()
        foreign = http.put(
            "/api/items", json=good, headers={**AUTH, "origin": "https://evil.example"}
        )
        assert foreign.status_code == 403
        form = http.put("/api/items", content=b'[{"id":"a","title":"b"}]',
                        headers={**AUTH, "content-type": "text/plain"})  # fmt: skip
        assert form.status_code == 415
        big = [{"id": f"sku-{i}", "title": "x" * 900} for i in range(200)]  # ~190 KB > 128 KB
        assert http.put("/api/items", json=big, headers=AUTH).status_code == 413
        bad_bodies = [
            [],  # no record
            {"id": "sku-1", "title": "not a list"},
            [{"title": "no id"}],
            [{"id": "sku-1"}],  # nothing to index
            [{"id": "../etc", "title": "a path as id"}],
            [{"id": "sku-1", "title": "   "}],  # blank
            [{"id": "sku-1", "title": None}],
            [{"id": 7, "title": "an int id"}],
            [{"id": "sku-1", "image": "/etc/passwd"}],  # a server path
            [{"id": "sku-1", "image": "s3://bucket/key.jpg"}],
            [{"id": "sku-1", "image": "data:image/png;base64,not base64!"}],
            [{"id": "sku-1", "images": []}],
            [{"id": "sku-1", "title": "t", "price": float("1e300")}],
            [{"id": "sku-1", "title": "t", "nested": {"a": 1}}],
            [{"id": "sku-1", "title": "t", "bad name": 1}],
            [{"id": f"s{i}", "title": "t"} for i in range(MAX_RECORDS + 1)],
        ]
        for body in bad_bodies:
            res = http.put("/api/items", json=body, headers=AUTH)
            assert res.status_code in (413, 422), (
                body if len(str(body)) < 200 else "many",
                res.text,
            )
            assert res.json()["type"] in ("ValidationError", "PayloadTooLarge", "BodyTooLarge")
        twice = http.put("/api/items", json=good + good, headers=AUTH)
        assert twice.status_code == 400 and "sku-1" in twice.json()["error"]
        assert http.delete("/api/items/a%2Fb", headers=AUTH).status_code in (404, 422)
        # Private and loopback image hosts are refused unless the server allows them.
        local = [
            {"id": "sku-9", "title": "local", "image": images.url("img/" + catalog.rows[0]["file"])}
        ]
        res = http.put("/api/items", json=local, headers=AUTH)
        assert res.status_code == 200 and res.json()["failed"][0]["id"] == "sku-9"
        assert "non-public address" in res.json()["failed"][0]["reason"]
        assert http.get("/api/items/sku-9", headers=AUTH).json()["items"][0]["kind"] == "text"
        assert http.get("/api/items/sku-1", headers=AUTH).status_code == 404  # nothing written


def test_a_busy_writer_answers_503_with_retry_after(tmp_path: Path, encoder: FakeEncoder) -> None:
    index = new_index(tmp_path, encoder)
    config = ServerConfig(index_dir=index, encoder=encoder, token=TOKEN, writes=True,
                          write_wait_s=0.2)  # fmt: skip
    body = [{"id": "sku-1", "title": "a blue star"}]
    with (
        serve_in_thread(create_app(config)) as base,
        httpx.Client(base_url=base, headers=AUTH, timeout=60) as http,
    ):
        with index_write_lock(index):  # an indexing run, another worker
            busy = http.put("/api/items", json=body)
            gone = http.delete("/api/items/sku-1")
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert (
            busy.json()["type"] == "WriterBusyError" and "writing the index" in busy.json()["error"]
        )
        assert gone.status_code == 503
        assert http.put("/api/items", json=body).status_code == 200  # the retry completes


def test_a_write_holds_no_search_slot(
    tmp_path: Path, encoder: FakeEncoder, images: ImageServer
) -> None:
    """With one search slot, searches answer while a write waits on a slow image URL."""
    config = ServerConfig(index_dir=new_index(tmp_path, encoder), encoder=encoder, token=TOKEN,
                          writes=True, allow_private_write_urls=True, url_timeout_s=10,
                          search_concurrency=1)  # fmt: skip
    slow = [{"id": "sku-slow", "title": "late image", "image": images.url("slow.jpg")}]
    with (
        serve_in_thread(create_app(config)) as base,
        httpx.Client(base_url=base, headers=AUTH, timeout=60) as http,
    ):
        assert http.put("/api/items", json=[{"id": "sku-0", "title": "first"}]).status_code == 200
        answer: list[httpx.Response] = []
        writer = threading.Thread(target=lambda: answer.append(http.put("/api/items", json=slow)))
        writer.start()
        while not any(p == "/slow.jpg" for p in images.requests):
            assert writer.is_alive()
            threading.Event().wait(0.02)
        searched = [
            http.get("/api/search", params={"q": "first", "mode": "lexical"}) for _ in range(3)
        ]
        still_writing = writer.is_alive()
        writer.join(timeout=60)
        assert still_writing  # the searches answered while the write was fetching
        assert [r.status_code for r in searched] == [200] * 3
        assert answer[0].status_code == 200
        assert answer[0].json()["failed"][0]["id"] == "sku-slow"  # "late" is not an image


def test_writes_are_declared_exactly_and_only_when_on(tmp_path: Path, encoder: FakeEncoder) -> None:
    index = new_index(tmp_path, encoder)
    on = create_app(ServerConfig(index_dir=index, encoder=encoder, token=TOKEN, writes=True))
    off = create_app(ServerConfig(index_dir=index, encoder=encoder, token=TOKEN))
    assert undeclared_answers(on) == [] and undeclared_answers(off) == []
    spec = on.openapi()
    put = spec["paths"]["/api/items"]["put"]
    assert set(spec["paths"]["/api/items"]) == {"put"}
    assert set(spec["paths"]["/api/items/{id}"]) == {"get", "delete"}
    body = put["requestBody"]["content"]["application/json"]["schema"]
    assert body["maxItems"] == MAX_RECORDS and body["minItems"] == 1
    record_schema = spec["components"]["schemas"]["RecordIn"]
    assert record_schema["required"] == ["id"] and "maxProperties" in record_schema
    assert {"401", "403", "413", "415", "422", "503"} <= set(put["responses"])
    assert put["responses"]["200"]["links"]["GetItem"]["operationId"] == "get_item"
    off_spec = off.openapi()
    assert "/api/items" not in off_spec["paths"]
    assert set(off_spec["paths"]["/api/items/{id}"]) == {"get"}


def test_writes_need_a_token_even_on_loopback(tmp_path: Path, encoder: FakeEncoder) -> None:
    index = new_index(tmp_path, encoder)
    with pytest.raises(InsecureWriteError, match="without a token"):
        create_app(ServerConfig(index_dir=index, encoder=encoder, writes=True))
    runner = CliRunner()
    env = {"MMSEARCH_TOKEN": ""}
    res = runner.invoke(cli_app, ["serve", "--index", str(index), "--allow-writes"], env=env)
    assert res.exit_code == 2 and "without a token" in res.output
    res = runner.invoke(cli_app, ["serve", "--index", str(index), "--allow-private-urls"], env=env)
    assert res.exit_code == 2 and "--allow-writes" in res.output


def test_a_request_that_waited_for_the_first_open_sees_a_later_write(
    tmp_path: Path, encoder: FakeEncoder
) -> None:
    """The start-up warm-up opens the index while another worker answers a write: a search
    that waited for that open must not be answered from the snapshot before the write."""
    from mmsearch.engine import SearchIndex
    from mmsearch.serve.holder import IndexHolder

    index = new_index(tmp_path, encoder)
    SearchIndex(index, encoder=encoder).upsert([{"id": "sku-0", "title": "first"}])
    holder = IndexHolder(ServerConfig(index_dir=index, encoder=encoder))
    opening, go = threading.Event(), threading.Event()
    real_open = holder._open

    def slow_first_open(enc: Any) -> Any:
        opened = real_open(enc)
        if not opening.is_set():
            got["first"] = opened.snapshot.table_version
            opening.set()
            assert go.wait(60)
        return opened

    got: dict[str, Any] = {}
    holder._open = slow_first_open  # type: ignore[method-assign]
    warm = threading.Thread(target=lambda: got.setdefault("warm", holder.get()))
    warm.start()
    assert opening.wait(60)  # the warm-up has opened the first snapshot, not yet returned
    report = SearchIndex(index, encoder=encoder).upsert([{"id": "sku-1", "title": "second"}])
    search = threading.Thread(target=lambda: got.setdefault("search", holder.get()))
    search.start()
    search.join(timeout=0.5)
    assert search.is_alive()  # waiting for the first open
    go.set()
    warm.join(timeout=60)
    search.join(timeout=60)
    assert got["first"] < report.table_version  # the first open predates the write ...
    assert got["search"].snapshot.table_version == report.table_version  # ... its waiter not


def test_writes_to_an_object_store_index(s3: Any, encoder: FakeEncoder) -> None:
    """A server over ``s3://`` writes under the writer lease and serves its write at once."""
    from fastapi.testclient import TestClient

    from tests.s3server import BUCKET

    uri = f"s3://{BUCKET}/items"
    create_index(uri, encoder.spec, encoder=encoder)
    config = ServerConfig(index_dir=uri, encoder=encoder, token=TOKEN, writes=True)  # type: ignore[arg-type]
    with TestClient(create_app(config), base_url="http://127.0.0.1", headers=AUTH) as http:
        put = http.put("/api/items", json=[{"id": "sku-1", "title": "a red circle brand001x"}])
        assert put.status_code == 200, put.text
        version = put.json()["table_version"]
        assert int(put.headers["x-mmsearch-snapshot"].split(".")[0]) == version
        found = http.get("/api/search", params={"q": "brand001x", "mode": "lexical"})
        assert [h["metadata"]["id"] for h in found.json()["results"]] == ["sku-1"]
        assert http.delete("/api/items/sku-1").json() == {"id": "sku-1", "deleted": True}
        assert http.get("/api/items/sku-1").status_code == 404
