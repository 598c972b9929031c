"""The server as a hostile client sees it: files, hosts, tokens, inputs, paths, and operations.

Indexes are built with the fake encoder (fast, deterministic). Tests that change
files on disk build their own small index; the rest share one module index.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from mmsearch.cli import app as cli_app  # noqa: E402
from mmsearch.datasets.synthetic import generate_catalog  # noqa: E402
from mmsearch.serve.app import ServerConfig, create_app  # noqa: E402
from mmsearch.serve.auth import SessionKeeper  # noqa: E402
from mmsearch.serve.files import FileChangedError, check_index_files, open_indexed_file  # noqa: E402
from mmsearch.serve.security import InsecureBindError, check_bind_policy  # noqa: E402
from tests.conftest import FakeEncoder  # noqa: E402
from tests.test_server import build_index, huge_header_png, png_bytes  # noqa: E402

TOKEN = "correct-horse-battery-staple-42"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def encoder() -> FakeEncoder:
    return FakeEncoder()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, encoder: FakeEncoder) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("security")
    catalog = generate_catalog(base / "catalog", n=24, seed=5)
    build_index(catalog, base / "idx", encoder)
    return {"base": base, "catalog": catalog, "index_dir": base / "idx"}


def _client(index_dir: Path, encoder: FakeEncoder, **kw: Any) -> TestClient:
    kw.setdefault("allowed_hosts", ["testserver"])
    return TestClient(create_app(ServerConfig(index_dir=index_dir, encoder=encoder, **kw)))


@pytest.fixture(scope="module")
def client(shared: dict[str, Any], encoder: FakeEncoder) -> TestClient:
    return _client(shared["index_dir"], encoder)


@pytest.fixture
def small(tmp_path: Path, encoder: FakeEncoder) -> dict[str, Any]:
    """A fresh 6-image index whose files a test may change."""
    catalog = generate_catalog(tmp_path / "catalog", n=6, seed=3)
    build_index(catalog, tmp_path / "idx", encoder, with_texts=False)
    client = _client(tmp_path / "idx", encoder)
    hits = client.get("/api/search", params={"q": "x", "k": 6, "kind": "image"}).json()["results"]
    assert len(hits) == 6
    by_name = {Path(h["metadata"]["file"]).name: h for h in hits}
    return {"catalog": catalog, "client": client, "hits": by_name, "tmp": tmp_path}


def _file_of(small: dict[str, Any], name: str) -> Path:
    return next(small["catalog"].image_dir.rglob(name))


def _assert_refused_as_changed(
    client: TestClient, hit: dict[str, Any], secret: bytes = b""
) -> None:
    res = client.get(hit["media"])
    assert res.status_code == 404, res.text
    assert "changed since indexing" in res.json()["error"]
    if secret:
        assert secret not in res.content


# -- /media confinement -----------------------------------------------------------------------
def test_media_serves_the_indexed_bytes(small: dict[str, Any]) -> None:
    name, hit = sorted(small["hits"].items())[0]
    res = small["client"].get(hit["media"])
    assert res.status_code == 200
    assert res.content == _file_of(small, name).read_bytes()
    assert res.headers["content-type"] == "image/jpeg"
    assert res.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "probe",
    [
        "/media/../../etc/passwd",
        "/media/..%2f..%2fetc%2fpasswd",
        "/media/%2e%2e/%2e%2e/etc/passwd",
        "/media//etc/passwd",
        "/media/1/../../../etc/passwd",
        "/media/%2Fetc%2Fpasswd",
        "/media/1%00.jpg",
        "/media/0x1",
        "/media/1e3",
        "/media/-1",
        f"/media/{2**64}",
        "/media/..\\..\\etc\\passwd",
    ],
)
def test_media_traversal_forms(client: TestClient, probe: str) -> None:
    res = client.get(probe)
    assert res.status_code in (404, 422), probe
    assert b"root:" not in res.content


def test_symlink_swap_of_an_indexed_file(small: dict[str, Any]) -> None:
    secret = small["tmp"] / "secret.txt"
    secret.write_bytes(b"root:x:0:0:TOP SECRET\n")
    name, hit = sorted(small["hits"].items())[1]
    path = _file_of(small, name)
    path.unlink()
    path.symlink_to(secret)
    _assert_refused_as_changed(small["client"], hit, b"TOP SECRET")
    # A link to another indexed image inside the root is refused too (not what was indexed).
    other = _file_of(small, sorted(small["hits"])[2])
    path.unlink()
    path.symlink_to(other)
    _assert_refused_as_changed(small["client"], hit)


def test_symlink_swap_of_a_parent_folder(small: dict[str, Any]) -> None:
    name, hit = sorted(small["hits"].items())[0]
    path = _file_of(small, name)
    parent = path.parent
    assert parent != small["catalog"].image_dir  # the images sit in a subfolder of the root
    outside = small["tmp"] / "outside"
    shutil.copytree(parent, outside, copy_function=shutil.copy2)  # same names, sizes, mtimes
    parent.rename(parent.with_name(parent.name + ".orig"))
    parent.symlink_to(outside, target_is_directory=True)
    _assert_refused_as_changed(small["client"], hit)


def test_parent_swapped_between_check_and_open_is_not_followed(
    small: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race: resolution saw a real folder, the open meets a symlink there: O_NOFOLLOW refuses."""
    name = sorted(small["hits"])[0]
    path = _file_of(small, name)
    root = small["catalog"].image_dir
    st = path.stat()
    parent = path.parent
    moved = parent.with_name(parent.name + ".real")
    parent.rename(moved)
    parent.symlink_to(moved, target_is_directory=True)  # same bytes behind it, but a link
    monkeypatch.setattr(
        os.path, "realpath", lambda p: os.path.abspath(p)
    )  # "checked" before the swap
    with pytest.raises(FileChangedError, match="folder on its path changed"):
        open_indexed_file(str(path), str(root), size=st.st_size, mtime_ns=st.st_mtime_ns)
    monkeypatch.undo()
    fd = open_indexed_file(str(moved / name), str(root), size=st.st_size, mtime_ns=st.st_mtime_ns)
    os.close(fd)


def test_file_changed_since_indexing_and_check_reports_it(small: dict[str, Any]) -> None:
    names = sorted(small["hits"])
    grown = _file_of(small, names[0])
    with open(grown, "ab") as fh:
        fh.write(b"\0" * 10)
    touched = _file_of(small, names[1])
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    gone = _file_of(small, names[2])
    gone.unlink()
    fifo = _file_of(small, names[3])
    fifo.unlink()
    os.mkfifo(fifo)
    for name in names[:4]:
        _assert_refused_as_changed(small["client"], small["hits"][name])
    assert small["client"].get(small["hits"][names[4]]["media"]).status_code == 200

    index_dir = small["tmp"] / "idx"
    checked, changed = check_index_files(index_dir)
    assert checked == 6
    reasons = {Path(c.path).name: c.reason for c in changed}
    assert set(reasons) == set(names[:4])
    assert "size changed" in reasons[names[0]] and "modified" in reasons[names[1]]
    assert "no longer exists" in reasons[names[2]] and "regular file" in reasons[names[3]]
    result = CliRunner().invoke(cli_app, ["check", "--index", str(index_dir), "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["checked"] == 6 and {Path(c["path"]).name for c in report["changed"]} == set(
        names[:4]
    )


def test_check_passes_on_an_unchanged_index(small: dict[str, Any]) -> None:
    result = CliRunner().invoke(cli_app, ["check", "--index", str(small["tmp"] / "idx")])
    assert result.exit_code == 0, result.output
    assert "6 image(s) checked, 0 changed" in result.stdout


# -- Host allowlist ---------------------------------------------------------------------------
def test_foreign_host_refused_loopback_and_allowed_accepted(
    shared: dict[str, Any], encoder: FakeEncoder
) -> None:
    app = create_app(
        ServerConfig(
            index_dir=shared["index_dir"], encoder=encoder, allowed_hosts=["search.example.com"]
        )
    )
    client = TestClient(app, base_url="http://127.0.0.1:8000")
    for host in ("evil.example", "127.0.0.1.evil.example", "localhost.evil", "example.com"):
        res = client.get("/api/search", params={"q": "red"}, headers={"host": host})
        assert res.status_code == 400, host
        assert client.get("/media/1", headers={"host": host}).status_code == 400
    for host in ("127.0.0.1:8000", "localhost", "localhost:9", "[::1]:8000", "search.example.com"):
        res = client.get("/api/search", params={"q": "red"}, headers={"host": host})
        assert res.status_code == 200, host
    assert (
        client.get("/healthz", headers={"host": "10.0.0.7:8000"}).status_code == 200
    )  # LB probes by IP


def test_host_check_can_be_turned_off(shared: dict[str, Any], encoder: FakeEncoder) -> None:
    client = _client(shared["index_dir"], encoder, allowed_hosts=["*"])
    assert client.get("/api/info", headers={"host": "anything.example"}).status_code == 200


# -- tokens -----------------------------------------------------------------------------------
def _every_route(app: Any) -> list[tuple[str, str]]:
    out = []
    for route in app.routes:
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            if method == "HEAD":
                continue
            out.append((method, route.path.replace("{item_id}", "1")))
    return out


@pytest.fixture(scope="module")
def token_app(shared: dict[str, Any], encoder: FakeEncoder) -> Any:
    return create_app(
        ServerConfig(
            index_dir=shared["index_dir"],
            encoder=encoder,
            allowed_hosts=["testserver"],
            token=TOKEN,
            auth_failures_per_minute=10_000,  # this module's tests try many wrong tokens
        )
    )


def test_token_absent_wrong_right_on_every_route(token_app: Any) -> None:
    client = TestClient(token_app)
    routes = _every_route(token_app)
    assert {p for _, p in routes} >= {
        "/", "/api/search", "/api/search/image", "/api/info", "/media/1", "/healthz", "/readyz", "/metrics",
        "/docs", "/openapi.json", "/login",
    }  # fmt: skip
    for method, path in routes:
        if path in ("/healthz", "/login"):
            continue
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Bearer {TOKEN}x"},
                        {"authorization": TOKEN}, {"authorization": f"Basic {TOKEN}"}):  # fmt: skip
            res = client.request(method, path, headers=headers)
            assert res.status_code == 401, (method, path, headers)
            assert TOKEN not in res.text
        right = client.request(method, path, headers={"authorization": f"Bearer {TOKEN}"})
        assert right.status_code != 401, (method, path)
    assert client.get("/healthz").status_code == 200
    assert client.get("/api/search", params={"q": "red"}).headers["www-authenticate"] == "Bearer"


def test_gallery_asks_once_and_keeps_a_strict_cookie(token_app: Any) -> None:
    client = TestClient(token_app)
    page = client.get("/")
    assert page.status_code == 401 and 'action="/login"' in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    wrong = client.post("/login", data={"token": "nope"}, follow_redirects=False)
    assert (
        wrong.status_code == 401 and "not right" in wrong.text and "set-cookie" not in wrong.headers
    )
    ok = client.post("/login", data={"token": TOKEN}, follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/"
    cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert TOKEN not in cookie
    assert client.get("/").status_code == 200  # the client keeps the cookie
    assert client.get("/api/search", params={"q": "red", "k": 2}).status_code == 200
    issued = client.cookies["mmsearch_session"]
    forged_with = SessionKeeper("another-token-0123456789").issue()
    forged = TestClient(token_app, cookies={"mmsearch_session": forged_with})
    assert forged.get("/api/info").status_code == 401
    tampered = TestClient(token_app, cookies={"mmsearch_session": issued[:-2] + "xx"})
    assert tampered.get("/api/info").status_code == 401
    assert (
        TestClient(token_app, cookies={"mmsearch_session": TOKEN}).get("/api/info").status_code
        == 401
    )


def test_no_docs_hides_docs(shared: dict[str, Any], encoder: FakeEncoder) -> None:
    client = _client(shared["index_dir"], encoder, docs=False, token=TOKEN)
    auth = {"authorization": f"Bearer {TOKEN}"}
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert client.get(path, headers=auth).status_code == 404


def test_bind_refusal_and_busy_port_fail_before_the_index_opens(tmp_path: Path) -> None:
    with pytest.raises(InsecureBindError, match="without a token"):
        check_bind_policy("0.0.0.0", None, False)
    check_bind_policy("0.0.0.0", "t", False)
    check_bind_policy("10.1.2.3", None, True)
    check_bind_policy("::1", None, False)
    missing = str(tmp_path / "no-index")  # opening it would fail with "no mmsearch index"
    runner = CliRunner()
    env = {"MMSEARCH_TOKEN": ""}
    result = runner.invoke(cli_app, ["serve", "--index", missing, "--host", "0.0.0.0"], env=env)
    assert result.exit_code == 2 and "refusing to serve on 0.0.0.0" in result.output
    assert "no mmsearch index" not in result.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(cli_app, ["serve", "--index", missing, "--port", str(port)], env=env)
    assert result.exit_code == 2 and "already in use" in result.output
    assert "no mmsearch index" not in result.output and "serving" not in result.output
    assert len(result.output.strip().replace("\n", " ")) < 200
    args = ["serve", "--index", missing, "--port", str(port), "--workers", "2"]  # port free again
    result = runner.invoke(cli_app, args, env=env)
    assert result.exit_code == 2 and "no searchable mmsearch index" in result.output


def test_listening_socket_gets_nodelay_connections() -> None:
    """asyncio sets TCP_NODELAY on accepted connections only for IPPROTO_TCP sockets (else ~40 ms per answer)."""
    from mmsearch.serve.lifecycle import bind_socket

    sock = bind_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
        with socket.create_connection(sock.getsockname()):
            conn, _ = sock.accept()
            with conn:
                assert conn.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


# -- hostile input ----------------------------------------------------------------------------
def test_bombs_and_oversized_uploads(shared: dict[str, Any], encoder: FakeEncoder) -> None:
    client = _client(shared["index_dir"], encoder, max_upload_bytes=60_000)
    res = client.post(
        "/api/search/image", files={"file": ("bomb.png", huge_header_png(), "image/png")}
    )
    assert res.status_code == 422 and "pixel" in res.json()["error"].lower()
    big = b"\x89PNG\r\n\x1a\n" + os.urandom(300_000)
    assert (
        client.post("/api/search/image", files={"file": ("big.png", big, "image/png")}).status_code
        == 413
    )
    res = client.post(
        "/api/search/image", files={"file": ("x.jpg", b"GIF89a not really", "image/jpeg")}
    )
    assert res.status_code == 422
    metrics = client.get("/metrics").text
    assert 'mmsearch_upload_rejections_total{reason="bad_image"} 2.0' in metrics
    assert 'mmsearch_upload_rejections_total{reason="too_large"} 1.0' in metrics


@pytest.mark.parametrize(
    "where",
    [
        "category = x' OR 1=1 --",
        "category = buttons' OR '1'='1",
        'colour = red" OR "1"="1',
        "price < 20 OR 1=1",
        "sku = '; DROP TABLE items; --",
        "category in a,b') OR ('1'='1",
    ],
)
def test_filter_injection_never_widens(client: TestClient, where: str) -> None:
    res = client.get("/api/search", params={"q": "x", "k": 100, "where": where})
    assert res.status_code in (200, 400), res.text
    if res.status_code == 200:
        assert res.json()["results"] == []


def test_oversized_input_is_not_echoed_back(client: TestClient) -> None:
    huge = "a" * 60_000
    res = client.get("/api/search", params={"q": huge})
    assert res.status_code == 422
    assert len(res.content) < 2_000
    assert "60000 characters" in res.text
    res = client.get("/api/search", params=[("q", "x"), ("k", "9" * 5000)])
    assert res.status_code == 422 and len(res.content) < 2_000


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def test_no_absolute_paths_leave_the_server(client: TestClient, shared: dict[str, Any]) -> None:
    base = str(shared["base"])
    catalog = shared["catalog"]
    bodies = [
        client.get("/api/search", params={"q": "red circle", "k": 48, "kind": "any"}).json(),
        client.get("/api/info").json(),
        client.post(
            "/api/search/image",
            files={
                "file": (
                    "q.png",
                    png_bytes(catalog.root / str(catalog.rows[0]["file"])),
                    "image/png",
                )
            },
        ).json(),
    ]
    hits = bodies[0]["results"]
    assert {h["kind"] for h in hits} == {"image", "text"}
    for body in bodies:
        assert not [s for s in _strings(body) if base in s or s.startswith("/tmp")]
    for hit in hits:
        assert not hit["uri"].startswith("/")
        if hit["kind"] == "image":
            assert (catalog.image_dir / hit["uri"]).is_file()
        else:
            assert hit["uri"].startswith(catalog.jsonl_path.name + "#")
    assert bodies[2]["results"][0]["uri"] == str(
        Path(str(catalog.rows[0]["file"])).relative_to("images")
    )


# -- operations -------------------------------------------------------------------------------
def test_readyz_then_metrics_and_drain(shared: dict[str, Any], encoder: FakeEncoder) -> None:
    app = create_app(
        ServerConfig(index_dir=shared["index_dir"], encoder=encoder, allowed_hosts=["testserver"])
    )
    client = TestClient(app)
    assert client.get("/healthz").json() == {"status": "alive"}
    first = client.get("/readyz")
    assert first.status_code == 503 and first.json()["status"] == "starting"
    deadline = time.monotonic() + 30
    while (res := client.get("/readyz")).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    body = res.json()
    assert body["status"] == "ready" and body["items"] == 48
    snap = body["snapshot"]
    search = client.get("/api/search", params={"q": "red", "k": 3})
    assert search.headers["x-mmsearch-snapshot"] == f"{snap['table_version']}.{snap['generation']}"
    client.get("/api/search", params={"q": "x", "where": "nope = 1"})
    text = client.get("/metrics").text
    assert 'mmsearch_http_requests_total{method="GET",route="/api/search",status="200"} 1.0' in text
    assert 'mmsearch_http_requests_total{method="GET",route="/api/search",status="400"} 1.0' in text
    assert (
        'mmsearch_http_request_duration_seconds_count{method="GET",route="/readyz",status="503"}'
        in text
    )
    assert f"mmsearch_snapshot_table_version {float(snap['table_version'])}" in text
    assert (
        'mmsearch_items{kind="image"} 24.0' in text and 'mmsearch_items{kind="text"} 24.0' in text
    )
    assert "mmsearch_query_results_count 1.0" in text

    app.state.serve_state.draining = True  # what SIGTERM does
    assert client.get("/api/search", params={"q": "red"}).status_code == 503
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200


def test_access_log_json_without_token_or_query(
    shared: dict[str, Any], encoder: FakeEncoder, caplog: pytest.LogCaptureFixture
) -> None:
    for log_queries in (False, True):
        client = _client(
            shared["index_dir"], encoder, token=TOKEN, log_format="json", log_queries=log_queries
        )
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="mmsearch.access"):
            client.get("/api/search", params={"q": "secret query words", "k": 4},
                       headers={"authorization": f"Bearer {TOKEN}"})  # fmt: skip
            client.get("/api/info", headers={"authorization": "Bearer wrong"})
        lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "mmsearch.access"]
        assert [(x["route"], x["status"]) for x in lines] == [
            ("/api/search", 200),
            ("/api/info", 401),
        ]
        assert (
            lines[0]["results"] == 4
            and lines[0]["latency_ms"] > 0
            and lines[0]["time"].endswith("Z")
        )
        raw = " ".join(r.getMessage() for r in caplog.records)
        assert TOKEN not in raw and "wrong" not in raw
        assert ("secret+query+words" in raw) is log_queries


_WORKERS_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from mmsearch.serve.lifecycle import bind_socket, prepare_workers, run
    from mmsearch.serve.app import ServerConfig
    from tests.conftest import FakeEncoder

    sock = bind_socket("127.0.0.1", 0)
    config = ServerConfig(index_dir=Path(sys.argv[1]), encoder=FakeEncoder(), token=sys.argv[2], drain_s=6.0,
                          log_format="none")
    print(sock.getsockname()[1], flush=True)
    with prepare_workers(2):
        run(config, sock, workers=2, log_format="none")
    """
)


def test_two_workers_swap_snapshots_under_load_and_drain_on_sigterm(
    tmp_path: Path, encoder: FakeEncoder
) -> None:
    catalog = generate_catalog(tmp_path / "catalog", n=16, seed=8)
    index_dir = tmp_path / "idx"
    build_index(catalog, index_dir, encoder, with_texts=False)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", _WORKERS_SCRIPT, str(index_dir), TOKEN],
        cwd=REPO, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        base = f"http://127.0.0.1:{port}"
        auth = {"authorization": f"Bearer {TOKEN}"}
        pids: dict[int, dict[str, Any]] = {}

        def poll_ready(until: Any) -> None:
            deadline = (
                time.monotonic() + 180
            )  # each worker imports lancedb etc.: slow on a busy box
            while time.monotonic() < deadline:
                try:
                    res = httpx.get(
                        base + "/readyz", headers=auth, timeout=10
                    )  # new connection each time
                except httpx.HTTPError:
                    res = None
                if res is not None and res.status_code == 200:
                    body = res.json()
                    pids[body["pid"]] = body["snapshot"]
                if until():
                    return
                time.sleep(0.05)
            raise AssertionError(f"workers not ready in time: {pids}")

        poll_ready(lambda: len(pids) == 2)
        old_version = next(iter(pids.values()))["table_version"]
        old_max_id = 15  # ids 0..15 in the first snapshot

        extra = generate_catalog(tmp_path / "extra", n=8, seed=77)
        for row in extra.rows:
            src = extra.root / str(row["file"])
            shutil.copy2(src, catalog.image_dir / f"new-{src.name}")
        errors: list[str] = []
        answers: list[tuple[str, list[int]]] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=base, headers=auth, timeout=30) as http:
                while not stop.is_set():
                    try:
                        res = http.get(
                            "/api/search", params={"q": "blue star", "k": 10, "kind": "image"}
                        )
                    except httpx.HTTPError as exc:
                        errors.append(repr(exc))
                        continue
                    if res.status_code != 200 or len(res.json()["results"]) != 10:
                        errors.append(f"{res.status_code} {res.text[:100]}")
                    else:
                        answers.append(
                            (
                                res.headers["x-mmsearch-snapshot"],
                                [h["id"] for h in res.json()["results"]],
                            )
                        )

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            report = build_index(
                catalog, index_dir, encoder, with_texts=False
            )  # commits a new snapshot
            assert report.added == 8
            pids.clear()
            poll_ready(
                lambda: (
                    len(pids) == 2 and all(s["table_version"] > old_version for s in pids.values())
                )
            )
        finally:
            time.sleep(0.3)
            stop.set()
            for t in threads:
                t.join(timeout=30)
        assert errors == []
        versions = {v for v, _ in answers}
        assert len(versions) >= 2, versions  # answers came from the old and the new snapshot
        for version, ids in answers:  # each answer from one complete snapshot
            if int(version.split(".")[0]) == old_version:
                assert max(ids) <= old_max_id
        metrics = httpx.get(base + "/metrics", headers=auth, timeout=10).text
        assert (
            metrics.count("mmsearch_snapshot_table_version{pid=") == 2
        )  # merged from both workers

        # Graceful stop: a request in flight finishes, a new one meets 503, the process exits.
        with httpx.Client(base_url=base, headers=auth, timeout=30) as idle:
            assert idle.get("/api/info").status_code == 200  # a keep-alive connection, now idle
            slow = socket.create_connection(("127.0.0.1", port), timeout=30)
            image = png_bytes(next(catalog.image_dir.rglob("*.jpg")))
            head = (
                f"POST /api/search/image?k=3 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Content-Type: multipart/form-data; boundary=BB\r\nContent-Length: "
            )
            body = (b'--BB\r\nContent-Disposition: form-data; name="file"; filename="q.png"\r\n\r\n'
                    + image + b"\r\n--BB--\r\n")  # fmt: skip
            slow.sendall(head.encode() + str(len(body)).encode() + b"\r\n\r\n" + body[:100])
            time.sleep(0.5)
            proc.terminate()  # the supervisor passes SIGTERM on to the workers within ~0.5 s
            statuses = [idle.get("/api/info").status_code]
            deadline = time.monotonic() + 4
            while statuses[-1] != 503 and time.monotonic() < deadline:
                time.sleep(0.1)
                statuses.append(idle.get("/api/info").status_code)
            assert statuses[-1] == 503 and set(statuses) <= {200, 503}, statuses
            slow.sendall(body[100:])
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += slow.recv(65536)
            slow.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert proc.wait(timeout=90) == 0
    finally:
        if proc.poll() is None:  # a failed test: kill the workers too, not only the supervisor
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# -- hostile clients, round two ---------------------------------------------------------------
# Each test below names the finding of the hostile-client probe it covers.
AUTH = {"authorization": f"Bearer {TOKEN}"}


@contextlib.contextmanager
def _guarded_server(app: Any, **limits: Any) -> Iterator[tuple[str, int]]:
    """``app`` behind the connection guards of ``mmsearch serve``, in a thread; yields (base URL, port)."""
    import uvicorn

    from mmsearch.serve.connections import ConnectionLimits, uvicorn_config

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn_config(
        app, http="auto", limits=ConnectionLimits(**limits), lifespan="off", log_level="error"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", port
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _read_answer(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


@pytest.fixture(scope="module")
def guarded_token_app(shared: dict[str, Any], encoder: FakeEncoder) -> Any:
    return create_app(
        ServerConfig(index_dir=shared["index_dir"], encoder=encoder, token=TOKEN, log_format="none")
    )


def test_finding1_huge_header_is_refused_before_auth_without_delaying_others(
    guarded_token_app: Any,
) -> None:
    with _guarded_server(guarded_token_app, max_header_bytes=8192) as (base, port):
        hostile = socket.create_connection(("127.0.0.1", port))
        hostile.sendall(b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        sent = 0
        try:
            while sent < 4 * 1024 * 1024:  # would be 4 MB of header: refused long before
                hostile.sendall(b"a" * 65536)
                sent += 65536
        except OSError:  # the server closed the connection: what it should do
            pass
        answer = _read_answer(hostile)
        hostile.close()
        assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["type"] == "HeadersTooLarge"
        # Headers just under the limit still pass, and other clients are served.
        ok = httpx.get(base + "/api/info", headers={**AUTH, "x-pad": "a" * 6000}, timeout=10)
        assert ok.status_code == 200


def test_finding2_rerank_model_failure_is_remembered_and_never_holds_a_search_slot(
    shared: dict[str, Any], encoder: FakeEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mmsearch.errors import RerankModelError
    from mmsearch.rerank.itm import ItmScorer

    attempts: list[float] = []

    def slow_failing_load(name: str, device: str | None = None, **kw: Any) -> Any:
        attempts.append(time.monotonic())
        time.sleep(2.0)  # a download that ends in an error
        raise RerankModelError(f"cannot load rerank model {name!r} (not in the local cache)")

    monkeypatch.setattr(ItmScorer, "load", staticmethod(slow_failing_load))
    app = create_app(
        ServerConfig(
            index_dir=shared["index_dir"], encoder=encoder, log_format="none",
            search_concurrency=1, rerank_model="Salesforce/blip-itm-base-coco",
        )
    )  # fmt: skip
    done: dict[str, float] = {}
    statuses: dict[str, int] = {}
    with _guarded_server(app) as (base, _):
        httpx.get(base + "/api/search", params={"q": "warm"}, timeout=30)

        def ask(name: str, params: dict[str, Any]) -> None:
            statuses[name] = httpx.get(base + "/api/search", params=params, timeout=60).status_code
            done[name] = time.monotonic()

        rerank = threading.Thread(target=ask, args=("rerank", {"q": "red", "rerank": "true"}))
        rerank.start()
        time.sleep(0.3)  # the model load is under way
        plain = threading.Thread(target=ask, args=("plain", {"q": "red"}))
        plain.start()
        plain.join(60)
        rerank.join(60)
        assert statuses == {"rerank": 503, "plain": 200}
        assert done["plain"] < done["rerank"]  # the search did not wait for the model load
        again = [
            httpx.get(base + "/api/search", params={"q": "red", "rerank": "true"}, timeout=60)
            for _ in range(3)
        ]
    assert [r.status_code for r in again] == [503, 503, 503]
    assert all(r.json()["type"] == "RerankModelError" for r in again)
    assert all(1 <= int(r.headers["retry-after"]) <= 60 for r in again)
    assert len(attempts) == 1  # tried once; the failure is remembered


def test_finding2_rerank_model_named_at_start_up_is_loaded_then(
    shared: dict[str, Any], encoder: FakeEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mmsearch.rerank.itm import ItmScorer

    loaded: list[str] = []
    real_load = ItmScorer.load
    monkeypatch.setattr(
        ItmScorer, "load", staticmethod(lambda name, device=None, **kw: loaded.append(name) or real_load(name, device=device))
    )  # fmt: skip
    app = create_app(
        ServerConfig(index_dir=shared["index_dir"], encoder=encoder, allowed_hosts=["testserver"],
                     rerank_model="mmsearch-tiny-itm")
    )  # fmt: skip
    with TestClient(app) as client:  # runs the start-up
        deadline = time.monotonic() + 60
        while not loaded and time.monotonic() < deadline:
            time.sleep(0.05)
        assert loaded == ["mmsearch-tiny-itm"]
        res = client.get("/api/search", params={"q": "red circle", "rerank": "true", "k": 3})
        assert res.status_code == 200, res.text
    assert loaded == ["mmsearch-tiny-itm"]


HOSTILE_JSON = [
    '{"q": "x", "alpha": 1e999}',
    '{"q": "x", "k": -1e999}',
    '{"q": "x", "alpha": Infinity}',
    '{"q": "x", "dedup": NaN}',
    '{"q": "\\ud800"}',
    '{"terms": [{"text": "\\ud800"}]}',
    '{"terms": [{"image": "\\ud800.jpg"}]}',
    '{"terms": [{"url": "https://a.example/\\ud800.png"}]}',
    '{"q": "x", "group_by": "\\ud800"}',
    '{"q": "x", "where": {"colour": "\\ud800"}}',
    '{"q": "x", "where": ["colour = \\ud800"]}',
    '{"terms": [{"text": "x", "weight": NaN}]}',
]


@pytest.mark.parametrize("body", HOSTILE_JSON)
def test_finding3_hostile_json_answers_4xx(client: TestClient, body: str) -> None:
    res = client.post(
        "/api/search", content=body.encode(), headers={"content-type": "application/json"}
    )
    assert 400 <= res.status_code < 500, (body, res.status_code, res.text[:200])
    assert res.json()["type"]


def test_finding3_over_long_file_name_in_an_image_term(
    shared: dict[str, Any], encoder: FakeEncoder
) -> None:
    client = _client(shared["index_dir"], encoder, image_roots=[shared["base"]])
    long_name = str(shared["base"] / ("a" * 300 + ".jpg"))  # errno 36 from stat()
    for res in (
        client.post("/api/search", json={"terms": [{"image": long_name}]}),
        client.get("/api/search", params={"q": long_name}),
    ):
        assert res.status_code == 404, res.text[:200]
        assert "image not found" in res.json()["error"]


def test_finding4_swapped_content_with_size_and_mtime_restored(small: dict[str, Any]) -> None:
    names = sorted(small["hits"])
    rewritten = _file_of(small, names[0])
    st = rewritten.stat()
    data = bytearray(rewritten.read_bytes())
    data[-20:] = b"\xff" * 20  # other bytes, same size
    rewritten.write_bytes(bytes(data))
    os.utime(rewritten, ns=(st.st_atime_ns, st.st_mtime_ns))  # touch -r: mtime put back
    linked = _file_of(small, names[1])
    st = linked.stat()
    outside = small["tmp"] / "outside.jpg"
    outside.write_bytes(b"SECRET" * (st.st_size // 6) + b"S" * (st.st_size % 6))
    os.utime(outside, ns=(st.st_atime_ns, st.st_mtime_ns))
    linked.unlink()
    os.link(outside, linked)  # a hard link to a file outside the folder, same size and mtime
    _assert_refused_as_changed(small["client"], small["hits"][names[0]])
    _assert_refused_as_changed(small["client"], small["hits"][names[1]], b"SECRET")
    checked, changed = check_index_files(small["tmp"] / "idx")
    assert checked == 6
    reasons = {Path(c.path).name: c.reason for c in changed}
    assert set(reasons) == set(names[:2]) and all("content" in r for r in reasons.values())


def test_finding5_idle_and_slow_connections_are_closed(guarded_token_app: Any) -> None:
    with _guarded_server(guarded_token_app, header_timeout_s=1.0) as (_, port):
        idle = socket.create_connection(("127.0.0.1", port))
        slow = socket.create_connection(("127.0.0.1", port))
        start = time.monotonic()
        request = b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        answer = b""
        slow.settimeout(0.2)
        for byte in request:  # slowloris: one byte at a time
            try:
                slow.sendall(bytes([byte]))
                answer = slow.recv(1024)
            except TimeoutError:
                continue
            except OSError:
                break
            if answer:
                break
        assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
        assert _read_answer(idle, timeout=5) == b""  # closed without a word
        assert time.monotonic() - start < 8
        idle.close()
        slow.close()


def test_finding5_connection_cap_answers_503_never_500(guarded_token_app: Any) -> None:
    with _guarded_server(guarded_token_app, max_connections=20, header_timeout_s=2.0) as (
        base,
        port,
    ):
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", port))
        answer = _read_answer(extra)
        assert answer.startswith(b"HTTP/1.1 503"), answer[:100]
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["type"] == "TooManyConnections"
        res = httpx.get(base + "/api/info", headers=AUTH, timeout=10)
        assert res.status_code == 503
        for sock in held:
            sock.close()
        time.sleep(0.2)
        assert httpx.get(base + "/api/info", headers=AUTH, timeout=10).status_code == 200


_LOW_FD_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    from pathlib import Path
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    from mmsearch.serve.app import ServerConfig
    from mmsearch.serve.connections import ConnectionLimits
    from mmsearch.serve.lifecycle import bind_socket, run
    from tests.conftest import FakeEncoder

    sock = bind_socket("127.0.0.1", 0)
    config = ServerConfig(index_dir=Path(sys.argv[1]), encoder=FakeEncoder(), log_format="none")
    print(sock.getsockname()[1], flush=True)
    run(config, sock, log_format="none", limits=ConnectionLimits(header_timeout_s=3.0))
    """
)


def test_finding5_low_open_file_limit_answers_503_never_500(shared: dict[str, Any]) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _LOW_FD_SCRIPT, str(shared["index_dir"])],
        cwd=REPO, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=10).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server not ready"
            time.sleep(0.1)
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
        statuses = []
        for i in range(20):
            try:
                res = httpx.get(base + "/api/search", params={"q": f"red {i}", "k": 3}, timeout=10)
                statuses.append(res.status_code)
            except httpx.HTTPError as exc:
                statuses.append(repr(exc))
        for sock in idle:
            sock.close()
        assert set(statuses) <= {200, 503}, statuses
        time.sleep(0.5)
        assert httpx.get(base + "/api/search", params={"q": "red"}, timeout=10).status_code == 200
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_finding6_every_echoed_value_is_capped(client: TestClient) -> None:
    huge_column = {"q": "x", "where": {"a" * 5_000_000: 1}}
    res = client.post("/api/search", json=huge_column)
    assert 400 <= res.status_code < 500 and len(res.content) < 4_000
    res = client.post("/api/search", json={"q": "x", "where": ["b" * 4000 + " = 1"]})
    assert 400 <= res.status_code < 500 and len(res.content) < 4_000
    body = b'{"q": "x", "k": ' + b"9" * 4000 + b"}"
    res = client.post("/api/search", content=body, headers={"content-type": "application/json"})
    assert res.status_code == 422 and len(res.content) < 2_000
    res = client.post(
        "/api/search/image", files={"file": ("n" * 100_000 + ".png", b"\x89PNG\r\n", "image/png")}
    )
    assert 400 <= res.status_code < 500 and len(res.content) < 2_000


@pytest.mark.parametrize("bad", [" ", "short-token", f" {TOKEN}", f"{TOKEN}\n"])
def test_finding7_weak_tokens_are_refused_at_start_up(
    bad: str, shared: dict[str, Any], encoder: FakeEncoder
) -> None:
    from mmsearch.serve.security import InsecureTokenError

    with pytest.raises(InsecureTokenError):
        create_app(ServerConfig(index_dir=shared["index_dir"], encoder=encoder, token=bad))
    result = CliRunner().invoke(
        cli_app, ["serve", "--index", str(shared["index_dir"]), "--host", "0.0.0.0"],
        env={"MMSEARCH_TOKEN": bad},
    )  # fmt: skip
    assert result.exit_code == 2 and "token" in result.output and "serving" not in result.output


def test_finding7_session_cookie_expires_and_logout_revokes_it(
    shared: dict[str, Any], encoder: FakeEncoder
) -> None:
    from mmsearch.serve.auth import SessionKeeper

    client = _client(shared["index_dir"], encoder, token=TOKEN)
    assert client.post("/login", data={"token": TOKEN}, follow_redirects=False).status_code == 303
    cookie = client.cookies["mmsearch_session"]
    copied = TestClient(client.app, cookies={"mmsearch_session": cookie})
    assert copied.get("/api/info").status_code == 200
    assert client.post("/logout", follow_redirects=False).status_code == 303
    assert "mmsearch_session" not in client.cookies
    assert copied.get("/api/info").status_code == 401  # a copy stops working too
    keeper = SessionKeeper(TOKEN, max_age_s=1)
    value = keeper.issue()
    assert keeper.session_id(value) is not None
    time.sleep(2.1)
    assert keeper.session_id(value) is None  # expired


def test_finding7_failed_logins_are_slowed_per_client(
    shared: dict[str, Any], encoder: FakeEncoder
) -> None:
    client = _client(shared["index_dir"], encoder, token=TOKEN)
    statuses = [client.post("/login", data={"token": f"wrong-{i}"}).status_code for i in range(30)]
    assert statuses[:10] == [401] * 10 and set(statuses[10:]) == {429}
    last = client.post("/login", data={"token": TOKEN}, follow_redirects=False)
    assert last.status_code == 429 and int(last.headers["retry-after"]) >= 1
    wrong_bearer = client.get("/api/info", headers={"authorization": "Bearer nope-nope"})
    assert wrong_bearer.status_code == 429


def test_finding8_duplicate_host_and_foreign_absolute_target_are_refused(
    guarded_token_app: Any, shared: dict[str, Any], encoder: FakeEncoder
) -> None:
    client = _client(shared["index_dir"], encoder, allowed_hosts=["search.example.com"])
    res = client.get(
        "/api/info", headers=[("host", "search.example.com"), ("host", "evil.example")]
    )
    assert res.status_code == 400 and res.json()["type"] == "BadHost"
    with _guarded_server(guarded_token_app) as (_, port):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(
            b"GET http://evil.example/api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
        )
        answer = _read_answer(sock)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 400"), answer[:100]


def test_finding8_cross_origin_writes_are_refused(client: TestClient) -> None:
    image = ("q.png", huge_header_png(8, 8), "image/png")
    for origin in ("https://evil.example", "null", "http://testserver.evil.example"):
        res = client.post("/api/search/image", files={"file": image}, headers={"origin": origin})
        assert res.status_code == 403 and res.json()["type"] == "CrossOriginRequest", origin
        res = client.post("/api/search", json={"q": "x"}, headers={"origin": origin})
        assert res.status_code == 403, origin
    res = client.post("/api/search", json={"q": "x"}, headers={"sec-fetch-site": "cross-site"})
    assert res.status_code == 403
    same = client.post("/api/search", json={"q": "x"}, headers={"origin": "http://testserver"})
    assert same.status_code == 200
    assert client.post("/api/search", json={"q": "x"}).status_code == 200  # curl, a backend


def test_finding8_nosniff_csp_nonce_and_local_docs(client: TestClient) -> None:
    for res in (
        client.get("/api/search", params={"q": "red"}),
        client.get("/api/info"),
        client.get("/api/search", params={"q": "x", "k": 0}),
        client.get("/media/999999"),
    ):
        assert res.headers["x-content-type-options"] == "nosniff", res.url
    page = client.get("/")
    csp = page.headers["content-security-policy"]
    script_src = next(p for p in csp.split(";") if p.strip().startswith("script-src"))
    assert "unsafe-inline" not in script_src
    nonce = script_src.split("'nonce-")[1].split("'")[0]
    assert f'<script nonce="{nonce}">' in page.text and "<script>" not in page.text
    assert client.get("/").headers["content-security-policy"] != csp  # a fresh nonce each time
    docs = client.get("/docs")
    assert docs.status_code == 200 and "cdn" not in docs.text.lower()
    assert "unsafe-inline" not in next(
        p for p in docs.headers["content-security-policy"].split(";") if "script-src" in p
    )
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/docs/assets/{asset}" in docs.text
        assert client.get(f"/docs/assets/{asset}").status_code == 200


def test_lexical_rerank_query_cannot_open_images_outside_the_roots(
    shared: dict[str, Any], encoder: FakeEncoder
) -> None:
    """A lexical query encodes no image, but re-ranking opened its image terms unchecked."""
    outside = shared["base"] / "outside.png"
    outside.write_bytes(png_bytes(next(shared["catalog"].image_dir.rglob("*.jpg"))))
    client = _client(
        shared["index_dir"], encoder, image_roots=[shared["catalog"].image_dir],
        rerank_model="mmsearch-tiny-itm",
    )  # fmt: skip
    body = {"mode": "lexical", "rerank": True, "terms": [{"text": "red"}, {"image": str(outside)}]}
    res = client.post("/api/search", json=body)
    assert res.status_code == 403 and res.json()["type"] == "UnsafePathError", res.text[:200]
    res = client.get(
        "/api/search", params={"q": f"red + {outside}", "mode": "lexical", "rerank": "true"}
    )
    assert res.status_code == 403, res.text[:200]
