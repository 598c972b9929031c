"""HTTP API (mmsearch.serve.app): shapes, typed filters, uploads, paths, URLs, load, reloads.

Indexes are built with the fake encoder (fast, deterministic: the same pixels give
the same vector, so an uploaded copy of an indexed image comes back first).
"""

from __future__ import annotations

import http.server
import io
import os
import select
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from mmsearch.indexer.pipeline import IndexOptions, run_index  # noqa: E402
from PIL import Image  # noqa: E402

from mmsearch.datasets.synthetic import generate_catalog  # noqa: E402
from mmsearch.serve.app import ServerConfig, create_app  # noqa: E402
from tests.conftest import FakeEncoder  # noqa: E402

N_ITEMS = 60


# -- helpers (also used by test_browser.py) ---------------------------------------------------
def build_index(catalog: Any, index_dir: Path, encoder: Any, *, with_texts: bool = True) -> Any:
    """Indexes the catalog's images (with its metadata sidecar) and, optionally, its captions."""
    paths: list[Any] = [catalog.image_dir]
    if with_texts:
        paths.append(catalog.jsonl_path)
    opts = IndexOptions(
        workers=1, batch_size=32, commit_every=64, image_metadata=catalog.jsonl_path
    )
    return run_index(paths, index_dir, encoder.spec, options=opts, encoder=encoder)


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Runs ``app`` under uvicorn on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def png_bytes(path: Path) -> bytes:
    """The image at ``path`` re-encoded losslessly as PNG."""
    buf = io.BytesIO()
    with Image.open(path) as img:
        img.convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def huge_header_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG file whose header claims ``width``×``height`` pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


class _LocalHTTP:
    """A tiny HTTP server on 127.0.0.1 serving fixed routes: path -> (status, headers, body)."""

    def __init__(self, routes: dict[str, tuple[int, dict[str, str], bytes]]) -> None:
        self.routes = routes
        self.requested: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # no keep-alive; a body without length ends at close

            def do_GET(self) -> None:  # noqa: N802
                outer.requested.append(self.path)
                status, headers, body = outer.routes.get(self.path, (404, {}, b"not found"))
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _LocalHTTP:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def encoder() -> FakeEncoder:
    return FakeEncoder()


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, encoder: FakeEncoder) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("server")
    catalog = generate_catalog(base / "catalog", n=N_ITEMS, seed=11)
    report = build_index(catalog, base / "idx", encoder)
    assert report.failed == 0 and report.added == 2 * N_ITEMS
    return {"base": base, "catalog": catalog, "index_dir": base / "idx"}


def _config(indexed: dict[str, Any], encoder: FakeEncoder, **kw: Any) -> ServerConfig:
    # TestClient sends "Host: testserver"; these tests compare full paths.
    return ServerConfig(
        index_dir=indexed["index_dir"],
        encoder=encoder,
        allowed_hosts=["testserver"],
        expose_paths=True,
        **kw,
    )


@pytest.fixture(scope="module")
def client(indexed: dict[str, Any], encoder: FakeEncoder) -> TestClient:
    return TestClient(create_app(_config(indexed, encoder)))


def _image_path(catalog: Any, row: dict[str, Any]) -> Path:
    return catalog.root / str(row["file"])


# -- search and filters -----------------------------------------------------------------------
def test_text_search_json_shape(client: TestClient) -> None:
    res = client.get("/api/search", params={"q": "a red circle on the left", "k": 7})
    assert res.status_code == 200, res.text
    data = res.json()
    assert data["query"] == "a red circle on the left"
    hits = data["results"]
    assert len(hits) == 7
    assert [h["rank"] for h in hits] == list(range(1, 8))
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    for hit in hits:
        assert set(hit) >= {"rank", "id", "uri", "kind", "text", "score", "metadata", "media"}
        assert isinstance(hit["id"], int) and isinstance(hit["score"], float)
        assert hit["media"] == (f"/media/{hit['id']}" if hit["kind"] == "image" else None)
    images = [h for h in hits if h["kind"] == "image"]
    assert all({"sku", "category", "price", "colour"} <= set(h["metadata"]) for h in images)


def test_kind_filter(client: TestClient) -> None:
    for kind in ("image", "text"):
        res = client.get("/api/search", params={"q": "blue star", "k": 30, "kind": kind})
        assert res.status_code == 200, res.text
        hits = res.json()["results"]
        assert len(hits) == 30 and {h["kind"] for h in hits} == {kind}
    assert client.get("/api/search", params={"q": "blue star", "kind": "video"}).status_code == 422


def test_where_price_lt_20_returns_exactly_the_cheap_images(
    client: TestClient, indexed: dict[str, Any]
) -> None:
    catalog = indexed["catalog"]
    expected = {str(_image_path(catalog, r)) for r in catalog.rows if float(r["price"]) < 20}
    assert 0 < len(expected) < N_ITEMS  # the seed gives both cheap and dear items
    res = client.get(
        "/api/search", params={"q": "anything", "k": 1000, "kind": "image", "where": "price < 20"}
    )
    assert res.status_code == 200, res.text
    hits = res.json()["results"]
    assert all(h["metadata"]["price"] < 20 for h in hits)
    assert {h["uri"] for h in hits} == expected


def test_where_two_conditions_and_in(client: TestClient, indexed: dict[str, Any]) -> None:
    catalog = indexed["catalog"]
    expected = {
        str(_image_path(catalog, r))
        for r in catalog.rows
        if r["category"] == "buttons" and r["colour"] in ("red", "blue", "green")
    }
    params = [("q", "x"), ("k", "1000"), ("kind", "image"), ("where", "category = buttons"),
              ("where", "colour in red,blue,green")]  # fmt: skip
    res = client.get("/api/search", params=params)
    assert res.status_code == 200, res.text
    assert {h["uri"] for h in res.json()["results"]} == expected


def test_where_non_numeric_value_for_numeric_column(client: TestClient) -> None:
    res = client.get("/api/search", params={"q": "x", "where": "price < cheap"})
    assert res.status_code == 400
    assert "price" in res.json()["error"] and "number" in res.json()["error"]


def test_where_unknown_column(client: TestClient) -> None:
    res = client.get("/api/search", params={"q": "x", "where": "password = hunter2"})
    assert res.status_code == 400
    assert "cannot filter on 'password'" in res.json()["error"]
    res = client.get("/api/search", params={"q": "x", "where": "vector = 1"})  # reserved column
    assert res.status_code == 400


@pytest.mark.parametrize(
    "where",
    [
        "category = x' OR 1=1 --",
        'category = x" OR "1"="1',
        "category = buttons' OR '1'='1",
        "sku = ' OR ''='",
    ],
)
def test_where_injection_never_widens(client: TestClient, where: str) -> None:
    res = client.get("/api/search", params={"q": "x", "k": 1000, "where": where})
    assert res.status_code == 200, res.text
    assert res.json()["results"] == []


def test_where_limits(client: TestClient) -> None:
    too_many = [("q", "x")] + [("where", f"price > {i}") for i in range(17)]
    res = client.get("/api/search", params=too_many)  # the schema says so: 422
    assert res.status_code == 422 and "at most" in res.json()["error"]
    res = client.get("/api/search", params={"q": "x", "where": "category = " + "a" * 300})
    assert res.status_code == 400 and "longer than" in res.json()["error"]
    long_total = [("q", "x")] + [("where", "category in " + ",".join(["b" * 200] * 3))] * 8
    res = client.get("/api/search", params=long_total)
    assert res.status_code == 400 and "longer than" in res.json()["error"]
    res = client.get("/api/search", params={"q": "x", "where": "price <> 3"})
    assert res.status_code == 400


def test_missing_or_oversized_query(client: TestClient) -> None:
    empty = client.get("/api/search")  # no query: an empty result that says why
    assert empty.status_code == 200 and empty.json()["results"] == []
    assert "no query" in empty.json()["reason"]
    assert client.get("/api/search", params={"q": "   "}).status_code == 422
    assert client.get("/api/search", params={"q": "a" * 2001}).status_code == 422
    assert client.get("/api/search", params={"q": "x", "k": 0}).status_code == 422


# -- uploads ----------------------------------------------------------------------------------
def test_image_upload_finds_the_same_image(client: TestClient, indexed: dict[str, Any]) -> None:
    catalog = indexed["catalog"]
    target = _image_path(catalog, catalog.rows[5])
    files = {"file": ("query.png", png_bytes(target), "image/png")}
    res = client.post("/api/search/image", params={"k": 3, "kind": "image"}, files=files)
    assert res.status_code == 200, res.text
    hits = res.json()["results"]
    assert hits[0]["uri"] == str(target)
    assert hits[0]["score"] > 0.999


def test_upload_over_cap_with_content_length(indexed: dict[str, Any], encoder: FakeEncoder) -> None:
    client = TestClient(create_app(_config(indexed, encoder, max_upload_bytes=50_000)))
    big = b"\x89PNG\r\n\x1a\n" + os.urandom(200_000)
    res = client.post("/api/search/image", files={"file": ("big.png", big, "image/png")})
    assert res.status_code == 413
    assert "larger than" in res.json()["error"]
    # Just over the file cap but inside the multipart slack: the handler's own check.
    res = client.post("/api/search/image", files={"file": ("big.png", big[:50_001], "image/png")})
    assert res.status_code == 413


def test_upload_over_cap_chunked_without_content_length(
    indexed: dict[str, Any], encoder: FakeEncoder
) -> None:
    client = TestClient(create_app(_config(indexed, encoder, max_upload_bytes=50_000)))
    boundary = "xyzBOUNDARY"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(40):
            yield b"\0" * 10_000
        yield f"\r\n--{boundary}--\r\n".encode()

    res = client.post(
        "/api/search/image",
        content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert "content-length" not in {k.lower() for k in res.request.headers}
    assert res.status_code == 413


def test_upload_over_cap_streamed_is_cut_off_early(
    indexed: dict[str, Any], encoder: FakeEncoder
) -> None:
    """A real chunked upload to uvicorn: the 413 arrives long before the client would finish."""
    app = create_app(_config(indexed, encoder, max_upload_bytes=100_000))
    total_planned = 64 * 1024 * 1024
    with serve_in_thread(app) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(
                b"POST /api/search/image HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: multipart/form-data; boundary=BB\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            part = b'--BB\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
            conn.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            chunk = b"\0" * 32768
            sent = 0
            answer = b""
            while sent < total_planned:
                readable, _, _ = select.select([conn], [], [], 0)
                if readable:
                    break
                try:
                    conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += len(chunk)
            try:
                conn.settimeout(10)
                while not answer.endswith(b"}") and len(answer) < 4096:
                    data = conn.recv(4096)
                    if not data:
                        break
                    answer += data
            except (ConnectionResetError, TimeoutError):
                pass
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 16 * 1024 * 1024  # cut off, not read to the end


def test_upload_huge_pixel_header_refused_quickly(client: TestClient) -> None:
    start = time.monotonic()
    res = client.post(
        "/api/search/image", files={"file": ("bomb.png", huge_header_png(), "image/png")}
    )
    elapsed = time.monotonic() - start
    assert res.status_code == 422
    assert "pixel" in res.json()["error"].lower()
    assert elapsed < 5.0


def test_upload_text_named_jpeg_is_refused(client: TestClient) -> None:
    res = client.post(
        "/api/search/image",
        files={"file": ("cat.jpg", b"hello, I am not a JPEG\n" * 20, "image/jpeg")},
    )
    assert res.status_code == 422
    assert res.json()["type"] == "ImageDecodeError"
    res = client.post("/api/search/image", files={"file": ("empty.jpg", b"", "image/jpeg")})
    assert res.status_code in (400, 422)


# -- media ------------------------------------------------------------------------------------
def test_media_serves_indexed_images_by_id_only(client: TestClient) -> None:
    hits = client.get("/api/search", params={"q": "green square", "k": 60, "kind": "any"}).json()[
        "results"
    ]
    image = next(h for h in hits if h["kind"] == "image")
    text = next(h for h in hits if h["kind"] == "text")
    res = client.get(image["media"])
    assert res.status_code == 200
    assert res.content == Path(image["uri"]).read_bytes()
    assert res.headers["content-type"].startswith("image/")
    assert client.get(f"/media/{text['id']}").status_code == 404
    assert client.get("/media/987654321").status_code == 404
    assert client.get("/media/-1").status_code == 422
    assert client.get(f"/media/{2**64}").status_code == 422
    for probe in ("/media/../../etc/passwd", "/media/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/media//etc/passwd",
                  "/media/1/../../../etc/passwd", "/media/%2Fetc%2Fpasswd"):  # fmt: skip
        res = client.get(probe)
        assert res.status_code in (404, 422), probe
        assert b"root:" not in res.content


# -- image paths in queries -------------------------------------------------------------------
def test_query_image_paths_refused_outside_roots(
    client: TestClient, indexed: dict[str, Any]
) -> None:
    catalog = indexed["catalog"]
    inside = _image_path(catalog, catalog.rows[0])
    for q in ("../../etc/passwd.jpg", "/etc/passwd.png", str(inside), f"red + {inside}",
              "/nonexistent/secret.jpg", f"2:{inside}"):  # fmt: skip
        res = client.get("/api/search", params={"q": q})
        assert res.status_code == 403, q
        assert "outside" in res.json()["error"]
    # A quoted term is text, whatever it looks like.
    assert client.get("/api/search", params={"q": '"holiday.jpg"'}).status_code == 200


def test_query_image_paths_under_root_and_symlinks(
    indexed: dict[str, Any], encoder: FakeEncoder, tmp_path: Path
) -> None:
    catalog = indexed["catalog"]
    root = catalog.root
    client = TestClient(create_app(_config(indexed, encoder, image_roots=[catalog.image_dir])))
    inside = _image_path(catalog, catalog.rows[3])
    res = client.get("/api/search", params={"q": str(inside), "k": 1, "kind": "image"})
    assert res.status_code == 200, res.text
    assert res.json()["results"][0]["uri"] == str(inside)
    # ../ out of the root, even to a real image, is refused.
    outside = tmp_path / "outside.png"
    outside.write_bytes(png_bytes(inside))
    escape = catalog.image_dir / os.path.relpath(outside, catalog.image_dir)
    assert ".." in str(escape)
    assert client.get("/api/search", params={"q": str(escape)}).status_code == 403
    # A symlink inside the root that points outside it is refused.
    link = catalog.image_dir / "sneaky.png"
    link.symlink_to(outside)
    try:
        res = client.get("/api/search", params={"q": str(link)})
        assert res.status_code == 403
        assert "outside" in res.json()["error"]
    finally:
        link.unlink()
    assert root.is_dir()


# -- image URLs -------------------------------------------------------------------------------
def test_image_urls_disabled_by_default(client: TestClient) -> None:
    res = client.get("/api/search", params={"url": "https://example.com/a.png"})
    assert res.status_code == 400
    assert "disabled" in res.json()["error"]


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/a.png",
        "gopher://127.0.0.1:70/",
        "http://127.0.0.1:9/a.png",
        "http://10.1.2.3/a.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:9/a.png",
        "http://0.0.0.0:9/a.png",
        "http://user:pw@example.com/a.png",
    ],
)
def test_image_urls_refused_when_enabled(
    indexed: dict[str, Any], encoder: FakeEncoder, url: str
) -> None:
    client = TestClient(create_app(_config(indexed, encoder, allow_urls=True)))
    res = client.get("/api/search", params={"url": url})
    if not url.startswith("http"):  # the schema takes http(s) URLs only
        assert res.status_code == 422, url
        return
    assert res.status_code == 400, url
    assert res.json()["type"] == "UnsafeURLError"


def test_redirect_to_private_address_refused(
    indexed: dict[str, Any], encoder: FakeEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A redirect is re-checked: its target (loopback) is refused.

    Honest setup note: the only server a test can run is on 127.0.0.1, which the
    real policy refuses at the first hop already. So ``_check_address`` is patched
    to let the FIRST check pass (standing in for "a public server"), and every later
    check is the real one with ``allow_private=False``.
    """
    import mmsearch.urlfetch as urlfetch

    real_check = urlfetch._check_address
    calls: list[str] = []

    def first_hop_allowed(host: str, port: int, policy: Any) -> None:
        calls.append(host)
        if len(calls) == 1:
            return
        real_check(host, port, policy)

    monkeypatch.setattr(urlfetch, "_check_address", first_hop_allowed)
    catalog = indexed["catalog"]
    image = png_bytes(_image_path(catalog, catalog.rows[0]))
    routes = {"/img.png": (200, {"Content-Type": "image/png"}, image)}
    with _LocalHTTP(routes) as srv:
        srv.routes["/go"] = (302, {"Location": f"{srv.base}/img.png"}, b"")
        client = TestClient(create_app(_config(indexed, encoder, allow_urls=True)))
        res = client.get("/api/search", params={"url": f"{srv.base}/go"})
        assert res.status_code == 400
        assert "non-public" in res.json()["error"]
        assert srv.requested == ["/go"]  # the private target was never fetched
    assert len(calls) == 2


def test_url_body_size_cap(indexed: dict[str, Any], encoder: FakeEncoder) -> None:
    body = b"\x89PNG\r\n\x1a\n" + b"\0" * 300_000
    routes = {
        "/declared.png": (
            200,
            {"Content-Type": "image/png", "Content-Length": str(len(body))},
            body,
        ),
        "/undeclared.png": (200, {"Content-Type": "image/png"}, body),  # HTTP/1.0, ends at close
    }
    with _LocalHTTP(routes) as srv:
        config = _config(
            indexed, encoder, allow_urls=True, url_allow_private=True, max_upload_bytes=100_000
        )
        client = TestClient(create_app(config))
        for path in ("/declared.png", "/undeclared.png"):
            res = client.get("/api/search", params={"url": srv.base + path})
            assert res.status_code == 400, path
            assert "larger than" in res.json()["error"]


def test_url_fetch_positive_from_local_server(
    indexed: dict[str, Any], encoder: FakeEncoder
) -> None:
    catalog = indexed["catalog"]
    target = _image_path(catalog, catalog.rows[9])
    routes = {"/q.png": (200, {"Content-Type": "image/png"}, png_bytes(target))}
    with _LocalHTTP(routes) as srv:
        config = _config(indexed, encoder, allow_urls=True, url_allow_private=True)
        client = TestClient(create_app(config))
        res = client.get(
            "/api/search", params={"url": srv.base + "/q.png", "k": 2, "kind": "image"}
        )
        assert res.status_code == 200, res.text
        assert res.json()["results"][0]["uri"] == str(target)
        # Not an image behind the URL, or an error status: 4xx with a reason.
        srv.routes["/text.png"] = (200, {"Content-Type": "image/png"}, b"just text")
        assert client.get("/api/search", params={"url": srv.base + "/text.png"}).status_code == 422
        assert (
            client.get("/api/search", params={"url": srv.base + "/missing.png"}).status_code == 400
        )


# -- load and reloads -------------------------------------------------------------------------
def test_concurrent_queries_are_consistent(indexed: dict[str, Any], encoder: FakeEncoder) -> None:
    queries = [
        "red circle",
        "a blue star on the top",
        "green",
        "yellow triangle",
        "black square left",
    ]
    app = create_app(_config(indexed, encoder))
    with serve_in_thread(app) as base:
        with httpx.Client(base_url=base, timeout=30) as http:
            expected = {
                q: http.get("/api/search", params={"q": q, "k": 10}).json()["results"]
                for q in queries
            }
        errors: list[str] = []
        mismatches: list[str] = []

        def worker(seed: int) -> None:
            with httpx.Client(base_url=base, timeout=30) as http:
                for i in range(25):
                    q = queries[(seed + i) % len(queries)]
                    try:
                        res = http.get("/api/search", params={"q": q, "k": 10})
                    except httpx.HTTPError as exc:
                        errors.append(repr(exc))
                        continue
                    if res.status_code != 200:
                        errors.append(f"{res.status_code} {res.text[:100]}")
                    elif res.json()["results"] != expected[q]:
                        mismatches.append(q)

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert mismatches == []


def test_reindex_while_querying_then_new_snapshot_is_served(
    tmp_path: Path, encoder: FakeEncoder
) -> None:
    catalog = generate_catalog(tmp_path / "catalog", n=40, seed=21)
    index_dir = tmp_path / "idx"
    build_index(catalog, index_dir, encoder, with_texts=False)
    client = TestClient(
        create_app(
            ServerConfig(
                index_dir=index_dir,
                encoder=encoder,
                allowed_hosts=["testserver"],
                expose_paths=True,
            )
        )
    )
    before = client.get("/api/info").json()
    assert before["rows"] == 40

    # New images land under the indexed folder; a re-index runs while queries keep coming.
    extra = generate_catalog(tmp_path / "extra", n=12, seed=99)
    new_dir = catalog.image_dir / "new"
    new_dir.mkdir()
    new_files = []
    for row in extra.rows:
        src = extra.root / str(row["file"])
        dst = new_dir / f"new-{src.name}"
        dst.write_bytes(src.read_bytes())
        new_files.append(dst)

    stop = threading.Event()
    errors: list[str] = []
    counts = {"queries": 0}

    def query_loop() -> None:
        while not stop.is_set():
            res = client.get("/api/search", params={"q": "purple circle", "k": 5})
            counts["queries"] += 1
            if res.status_code != 200 or len(res.json()["results"]) != 5:
                errors.append(f"{res.status_code} {res.text[:200]}")

    thread = threading.Thread(target=query_loop)
    thread.start()
    try:
        report = build_index(catalog, index_dir, encoder, with_texts=False)
    finally:
        time.sleep(0.2)
        stop.set()
        thread.join(timeout=60)
    assert report.added == 12
    assert errors == []
    assert counts["queries"] > 0

    after = client.get("/api/info").json()
    assert after["rows"] == 52
    assert after["table_version"] > before["table_version"]
    assert after["reload_error"] is None
    target = new_files[4]
    res = client.post("/api/search/image", params={"k": 1, "kind": "image"},
                      files={"file": ("q.png", png_bytes(target), "image/png")})  # fmt: skip
    assert res.status_code == 200
    assert res.json()["results"][0]["uri"] == str(target)


def test_missing_index_is_503_with_a_clear_message(tmp_path: Path, encoder: FakeEncoder) -> None:
    client = TestClient(
        create_app(
            ServerConfig(index_dir=tmp_path / "none", encoder=encoder, allowed_hosts=["testserver"])
        )
    )
    res = client.get("/api/search", params={"q": "x"})
    assert res.status_code == 503
    assert "no mmsearch index" in res.json()["error"]


def test_gallery_page_served_with_csp(client: TestClient) -> None:
    res = client.get("/")
    assert res.status_code == 200
    assert "<title>mmsearch</title>" in res.text
    assert "default-src 'none'" in res.headers["content-security-policy"]


class _SlowCountingEncoder:
    """Wraps an encoder: each text encode takes 50 ms and the most at once is recorded."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.spec, self.dim, self.image_size = (
            inner,
            inner.spec,
            inner.dim,
            inner.image_size,
        )
        self.active = self.most = 0
        self._lock = threading.Lock()

    def encode_texts(self, texts: Any) -> Any:
        with self._lock:
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            time.sleep(0.05)
            return self.inner.encode_texts(texts)
        finally:
            with self._lock:
                self.active -= 1

    def encode_images(self, batch: Any) -> Any:
        return self.inner.encode_images(batch)


@pytest.mark.parametrize("slots", [1, 3])
def test_search_concurrency_caps_searches_per_worker(indexed, encoder, slots: int) -> None:
    """8 simultaneous searches on a worker with ``slots`` search slots: every one is
    answered, and never more than ``slots`` run at once."""
    import httpx

    slow = _SlowCountingEncoder(encoder)
    app = create_app(_config(indexed, slow, search_concurrency=slots))
    with serve_in_thread(app) as base:
        codes: list[int] = []

        def ask(i: int) -> None:
            res = httpx.get(f"{base}/api/search", params={"q": f"red circle {i}", "k": 3},
                            headers={"host": "testserver"}, timeout=30)  # fmt: skip
            codes.append(res.status_code)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert codes == [200] * 8
    assert slow.most == slots
