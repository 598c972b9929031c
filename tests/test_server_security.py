"""The server as a hostile client sees it: files, hosts, tokens, inputs, paths, and operations.

Indexes are built with the fake encoder (fast, deterministic). Tests that change
files on disk build their own small index; the rest share one module index.
"""

from __future__ import annotations

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
from mmsearch.serve.files import FileChangedError, check_index_files, open_indexed_file  # noqa: E402
from mmsearch.serve.security import InsecureBindError, check_bind_policy, session_value  # noqa: E402
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
    assert TOKEN not in cookie and session_value(TOKEN) in cookie
    assert client.get("/").status_code == 200  # the client keeps the cookie
    assert client.get("/api/search", params={"q": "red", "k": 2}).status_code == 200
    forged = TestClient(token_app, cookies={"mmsearch_session": session_value("another-token")})
    assert forged.get("/api/info").status_code == 401
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
