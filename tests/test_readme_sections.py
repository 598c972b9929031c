"""The README's later sections run as written: eval/finetune/label, re-ranking, deploying
(served with a token, probed like a load balancer and a reverse proxy, stopped with
SIGTERM), and scale-out on a local Ray cluster with the index on a loopback S3 server.

Blocks, substitutions and the lines that do not run are in ``tests/readme_doc.py``;
the sections run in the folder the Command line block left (``readme_cli``).
"""

from __future__ import annotations

import inspect
import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from mmsearch.datasets.captioned import write_coco_captions
from tests.readme_doc import (
    SUBSTITUTIONS,
    Ran,
    block,
    cli_env,
    free_port,
    http,
    run_commands,
    run_lines,
    served,
    substitute,
)

MEASURE = "Measure and adapt: eval, finetune, label#1"
BENCHMARK = "Measure and adapt: eval, finetune, label#2"
SCALE_OUT = "Scale out: Ray, object storage, large indexes#1"


def _run_block(key: str, cwd: Path, env: dict[str, str] | None = None, **values) -> list[Ran]:
    lines = run_lines(key)
    ran = run_commands([substitute(c, SUBSTITUTIONS[key], **values) for c in lines], cwd, env)
    assert len(ran) == len(lines)
    return ran


def _ok(r: Ran) -> Ran:
    assert r.code == 0, (r.line, r.stdout[-2000:], r.stderr[-2000:])
    return r


# ------------------------------------------------------------- eval, finetune, label


@pytest.fixture(scope="module")
def measured(readme_cli, tmp_path_factory) -> dict[str, list[Ran]]:
    """Both blocks of the section, in order, in one process (one interpreter start)."""
    root = readme_cli.root
    # queries.jsonl, as the README describes it: relevant paths relative to the file.
    indexed = [
        json.loads(line)
        for line in (root / "catalog" / "catalog.jsonl").read_text().splitlines()
        if "/tiles/" not in line  # the Command line block removed the tiles
    ]
    (root / "queries.jsonl").write_text(
        "".join(
            json.dumps({"query": row["caption"], "relevant": [f"catalog/{row['file']}"]}) + "\n"
            for row in indexed[:30:5]
        )
    )
    write_coco_captions(root, n=8, seed=1)  # ./captions.json + ./images/
    # COCO / Flickr30k files of the same layout, generated: Karpathy-format JSON naming
    # images under --images (COCO's as val2014/NAME, Flickr30k's as NAME).
    for cmd in run_lines(BENCHMARK):
        source, images = cmd.argv[2], cmd.argv[cmd.argv.index("--images") + 1]
        sub = "val2014" if "coco" in source else ""
        written = write_coco_captions(tmp_path_factory.mktemp("captions"), n=6, seed=2)
        data = json.loads(written.read_text())
        dest = root / images.lstrip("/") / sub
        dest.mkdir(parents=True)
        for image in data["images"]:
            (written.parent / image["filepath"] / image["filename"]).rename(
                dest / image["filename"]
            )
            image["filepath"] = sub
        (root / source).write_text(json.dumps(data))
    info = ["mmsearch", "info", "--index", "./idx"]  # which weights the index runs on now
    measure = [substitute(c, SUBSTITUTIONS[MEASURE]) for c in run_lines(MEASURE)] + [info]
    benchmark = [substitute(c, SUBSTITUTIONS[BENCHMARK]) for c in run_lines(BENCHMARK)]
    ran = run_commands(measure + benchmark, root)
    return {"measure": ran[: len(measure)], "benchmark": ran[len(measure) :]}


def test_measure_block(readme_cli, measured):
    root = readme_cli.root
    ran = measured["measure"]
    evaluated, captioned, finetuned, reembedded, labelled, queried, info_after = map(_ok, ran)
    assert "6 queries" in evaluated.stdout
    for variant in ("exact", "ann", "+hybrid"):
        assert re.search(rf"^│ {re.escape(variant)} +│ +[01]\.\d{{4}}", evaluated.stdout, re.M)
    assert "recall@10" in (root / "report.html").read_text(encoding="utf-8")
    figures = json.loads(captioned.stdout)
    assert figures["mode"] == "captioned" and figures["overall"]["t2i_recall@10"] > 0.5
    assert (root / "shop.safetensors").is_file() and "checkpoint:" in finetuned.stderr
    assert re.search(r"updated\s+\d+", reembedded.stdout), reembedded.stdout
    model = re.search(r"^ model +(\S+)", info_after.stdout, re.M).group(1)
    assert model.startswith("mmsearch-tiny/") and model.endswith("shop.safetensors"), model
    counts = dict(re.findall(r"^│ (shirt|dress|shoe) +│ +(\d+) │", labelled.stdout, re.M))
    assert set(counts) == {"shirt", "dress", "shoe"} and sum(map(int, counts.values())) == 60
    rows = re.findall(r"^│ +\d+ │(.*)│$", queried.stdout, re.M)
    assert rows, queried.stdout
    for row in rows:
        prob = float(re.search(r"category_zs=dress \((0\.\d+)\)", row).group(1))
        assert prob > 0.5, row


def test_captioned_benchmark_block(readme_cli, measured):
    """The COCO / Flickr30k commands, on generated collections of the same layout."""
    ran = measured["benchmark"]
    assert len(ran) == len(run_lines(BENCHMARK)) == 2
    for r in map(_ok, ran):
        assert "36 queries · 36 items" in r.stdout  # 6 images, 5 captions each: both ways
        for column in ("t2i R@1", "t2i R@10", "i2t R@1", "i2t R@10"):  # both directions
            assert column in r.stdout, (column, r.stdout)
        assert re.search(r"^│ ann +│ +[01]\.\d{4}", r.stdout, re.M), r.stdout
    assert "recall" in (readme_cli.root / "coco.html").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------- re-ranking


def test_rerank_block(readme_cli):
    sample, indexed, query = _run_block("Re-ranking#1", readme_cli.root)
    assert "wrote 40 items" in _ok(sample).stdout
    assert re.search(r"added\s+80\b", _ok(indexed).stdout)
    out = _ok(query).stdout
    scores = [float(s) for s in re.findall(r"^│ +\d+ │ +([01]\.\d{4}) │ image", out, re.M)]
    # Scores are the model's blend of match probability and first-stage score, in [0, 1];
    # --min-match keeps only candidates whose match probability reaches it.
    assert scores and all(0 <= s <= 1 for s in scores), out
    assert scores == sorted(scores, reverse=True)
    wanted = query.argv[query.argv.index("query") + 1]
    rows = [json.loads(line) for line in (readme_cli.root / "pairs" / "catalog.jsonl").open()]
    exact = {r["file"] for r in rows if r["caption"] == wanted}
    assert exact, "the README's query names a scene of the sample catalog"
    top = re.search(r"^│ +1 │ +[01]\.\d{4} │ image │ pairs/(\S+)", out, re.M)
    assert top and top.group(1) in exact, out  # the exact scene first


# ----------------------------------------------------------------------------- deploying


def _nginx_proxy_headers() -> dict[str, str]:
    """The headers the README's nginx snippet sets, as nginx would send them for a client."""
    values = {"$host": "search.example.com", "$scheme": "https"}
    values["$proxy_add_x_forwarded_for"] = "203.0.113.7"
    out = {}
    for name, value in re.findall(r"proxy_set_header (\S+) (\S+);", block("Deploying#3").text):
        out[name] = values[value]
    return out


def test_deploying_block(readme_cli):
    key = "Deploying#1"
    root = readme_cli.root
    export, serve = run_lines(key)
    assert export.argv[0] == "export"
    token = subprocess.run(  # the export line as written, in bash
        ["bash", "-c", f'{export.raw}\nprintf %s "$MMSEARCH_TOKEN"'],
        env=cli_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert len(token) >= 40 and "$" not in token
    port = free_port()
    argv = substitute(serve, SUBSTITUTIONS[key], port=port)
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {token}"}
    with served(argv, port, root, cli_env(MMSEARCH_TOKEN=token), token=token) as proc:
        assert http(f"{base}/healthz")[0] == 200  # no token needed for load balancers
        deadline = time.monotonic() + 120  # each of the 2 workers answers 200 once it is warm
        while (answer := http(f"{base}/readyz", auth))[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        status, _, body = answer
        assert status == 200, body
        for name in ("table_version", "generation", "model", "items", "pid"):
            assert f'"{name}"' in body.decode(), (name, body)
        search = f"{base}/api/search?q=red+circle&k=3"
        assert http(search)[0] == 401  # the token is required
        status, headers, body = http(search, auth)
        assert status == 200 and len(json.loads(body)["results"]) == 3
        assert re.fullmatch(r"\d+\.\d+", headers["x-mmsearch-snapshot"])
        proxied = {**auth, **_nginx_proxy_headers()}  # through the README's nginx
        assert http(search, proxied)[0] == 200
        assert http(search, {**auth, "Host": "evil.example.net"})[0] == 400  # DNS rebinding
        assert http(f"{base}/docs", auth)[0] == 404  # --no-docs
        assert http(f"{base}/metrics")[0] == 401
        status, _, metrics = http(f"{base}/metrics", auth)
        assert status == 200
        for name in ("mmsearch_http_requests_total", "mmsearch_items", "mmsearch_query_results"):
            assert name in metrics.decode(), name
    assert proc.returncode in (0, -signal.SIGTERM)
    log = proc.stderr.read() if proc.stderr else ""
    assert "with 2 workers (token required)" in log
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert token not in log
    clients = {e.get("client") for e in entries if e.get("route") == "/api/search"}
    assert "203.0.113.7" in clients, clients  # --proxy-headers: the client behind the proxy


def test_proxy_snippets_match_the_serve_command():
    """Caddy's and nginx's values must agree with the served flags (host, port, host name)."""
    serve = next(c for c in run_lines("Deploying#1") if c.argv[:2] == ["mmsearch", "serve"])
    args = serve.argv
    upstream = f"{args[args.index('--host') + 1]}:{args[args.index('--port') + 1]}"
    site = args[args.index("--allowed-host") + 1]
    assert "--proxy-headers" in args
    caddy = block("Deploying#2").text
    assert re.search(rf"^{re.escape(site)} \{{", caddy, re.M), caddy
    assert re.search(rf"^\s+reverse_proxy {re.escape(upstream)}$", caddy, re.M), caddy
    nginx = block("Deploying#3").text
    assert re.search(rf"server_name {re.escape(site)};", nginx)
    assert re.search(rf"proxy_pass http://{re.escape(upstream)};", nginx)
    assert nginx.count("{") == nginx.count("}") and caddy.count("{") == caddy.count("}")
    from mmsearch.cli.serve import serve_cmd

    default_mb = inspect.signature(serve_cmd).parameters["max_upload_mb"].default
    body_mb = float(re.search(r"client_max_body_size (\d+)m;", nginx).group(1))
    assert default_mb < body_mb <= default_mb * 1.25  # "a little above --max-upload-mb"
    assert set(_nginx_proxy_headers()) == {"Host", "X-Forwarded-For", "X-Forwarded-Proto"}


# ----------------------------------------------------------------------------- scale out


@pytest.fixture(scope="module")
def s3_endpoint():
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def test_scale_out_block(readme_cli, s3_endpoint):
    import boto3

    root = readme_cli.root
    lines = run_lines(SCALE_OUT)
    uri = next(a for c in lines for a in c.argv if a.startswith("s3://"))
    bucket = uri.split("/")[2]
    env = cli_env(
        AWS_ENDPOINT_URL=s3_endpoint,
        AWS_ALLOW_HTTP="true",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION="us-east-1",
    )
    boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name=env["AWS_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    ).create_bucket(Bucket=bucket)
    # One process: the first line starts a local Ray cluster, the second runs on it too.
    argvs = [substitute(c, SUBSTITUTIONS[SCALE_OUT]) for c in lines]
    check = ["mmsearch", "query", "red circle", "--index", uri, "--kind", "image", "--json"]
    ran = run_commands([*argvs, check], root, env)  # a query replica reads the store
    on_cluster, local, query = ran
    for r in ran:
        _ok(r)
    photos = len(list((root / "photos").iterdir()))
    assert re.search(rf"added\s+{photos}\b", on_cluster.stdout), on_cluster.stdout
    hits = json.loads(query.stdout)  # a query replica reads the index from the store
    assert len(hits) == photos and all(h["kind"] == "image" for h in hits)
    assert re.search(rf"added\s+{photos}\b", local.stdout), local.stdout
    assert (root / ".mmsearch").is_dir()  # `--ray local` wrote the default index here
