"""End-to-end CLI tests with the real mmsearch-tiny model, LanceDB and FAISS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmsearch.cli import app

runner = CliRunner()


def _mmsearch(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "mmsearch.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory):
    """sample-data 400 → index images + captions with mmsearch-tiny (the README's flow)."""
    root = tmp_path_factory.mktemp("e2e")
    cat, idx = root / "C", root / "I"
    done = _mmsearch("sample-data", str(cat), "--n", "400")
    assert done.returncode == 0, done.stderr
    done = _mmsearch("index", str(cat), "--index", str(idx), "--model", "mmsearch-tiny")
    assert done.returncode == 0, done.stderr
    rows = {
        json.loads(x)["file"]: json.loads(x)
        for x in (cat / "catalog.jsonl").read_text().splitlines()
    }
    return cat, idx, rows, done


def _row_of(uri: str, cat: Path, rows: dict) -> dict:
    rel = os.path.relpath(uri, cat).replace(os.sep, "/")
    return rows[rel]


def test_acceptance_red_circle_on_the_left(tiny_index):
    cat, idx, rows, first = tiny_index
    assert "added" in first.stdout and "400" in first.stdout
    done = _mmsearch(
        "query", "a red circle on the left", "--index", str(idx), "--json", "--top", "5"
    )
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    for key in ("rank", "id", "uri", "kind", "text", "score", "metadata"):
        assert key in hits[0]
    found = [_row_of(h["uri"], cat, rows) for h in hits]
    captions = [r["caption"] for r in found]
    n_true = sum(1 for r in rows.values() if r["caption"] == "a red circle on the left")
    good = sum(c == "a red circle on the left" for c in captions)
    assert captions[0] == "a red circle on the left"
    assert good >= min(4, n_true), captions


def test_reindex_embeds_nothing_then_delete_and_rewrite(tiny_index, tmp_path):
    cat, idx, rows, _ = tiny_index
    done = _mmsearch("index", str(cat), "--index", str(idx), "--model", "mmsearch-tiny", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["embedded"] == 0 and summary["unchanged"] == 400

    files = sorted(cat / f for f in rows)
    for path in files[:3]:
        path.unlink()
    for path, donor in zip(files[3:5], files[20:22], strict=True):
        path.write_bytes(donor.read_bytes())
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    done = _mmsearch("index", str(cat), "--index", str(idx), "--model", "mmsearch-tiny", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["deleted"], summary["updated"], summary["added"]) == (3, 2, 0)

    deleted = {str(p) for p in files[:3]}
    for path in files[:3]:
        caption = rows[os.path.relpath(path, cat)]["caption"]
        done = _mmsearch("query", caption, "--index", str(idx), "-f", "--top", "50")
        assert done.returncode == 0
        assert not deleted & set(done.stdout.splitlines())


def test_image_query_returns_matching_captions(tiny_index):
    cat, idx, rows, _ = tiny_index
    done = _mmsearch(
        "index", str(cat / "catalog.jsonl"), "--index", str(idx), "--model", "mmsearch-tiny"
    )
    assert done.returncode == 0, done.stderr
    probes = list(rows.values())[30:36]
    top1_ok = 0
    for probe in probes:
        if not (cat / probe["file"]).exists():
            continue
        done = _mmsearch(
            "query",
            str(cat / probe["file"]),
            "--index",
            str(idx),
            "--kind",
            "text",
            "--json",
            "--top",
            "3",
        )
        assert done.returncode == 0, done.stderr
        hits = json.loads(done.stdout)
        assert all(h["kind"] == "text" for h in hits)
        top1_ok += hits[0]["text"] == probe["caption"]
    assert top1_ok >= len(probes) - 1


def test_query_model_mismatch_and_missing_index(tmp_path):
    result = runner.invoke(app, ["query", "red", "--index", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "no mmsearch index" in result.output


def test_help_for_every_command():
    for cmd in ([], ["index"], ["query"], ["build-index"], ["info"], ["sample-data"], ["demo"]):
        result = runner.invoke(app, [*cmd, "--help"])
        assert result.exit_code == 0, cmd
        assert "Usage" in result.output


def test_info_json(tiny_index):
    _, idx, _, _ = tiny_index
    done = _mmsearch("info", "--index", str(idx), "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["model"] == "mmsearch-tiny"
    assert info["rows"] >= 397
    assert "image" in info["ann"]


def test_strict_exit_status_and_failures_report(tmp_path):
    cat, idx = tmp_path / "C", tmp_path / "I"
    assert _mmsearch("sample-data", str(cat), "--n", "20", "--corrupt", "2").returncode == 0
    done = _mmsearch("index", str(cat), "--index", str(idx), "--model", "mmsearch-tiny", "--strict")
    assert done.returncode == 1
    assert "2 item(s) skipped" in done.stderr
    report = (idx / "reports" / "failures-latest.jsonl").read_text().splitlines()
    assert len(report) == 2 and all(json.loads(line)["reason"] for line in report)
    done = _mmsearch("index", str(cat), "--index", str(idx), "--model", "mmsearch-tiny")
    assert done.returncode == 0  # without --strict, failures are reported, not fatal
    done = _mmsearch("index", str(cat), "--index", str(idx), "--model", "ViT-B-32")
    assert (
        done.returncode == 2 and "mmsearch-tiny" in done.stderr
    )  # one clear line naming both models


def test_corrupt_ann_file_is_detected_then_rebuilt(tiny_index):
    """Runs last: damages the shared index's ANN files, then repairs them."""
    _, idx, _, _ = tiny_index
    damaged = 0
    for path in (idx / "ann").rglob("*"):
        if path.is_file() and path.suffix not in (".json",) and path.stat().st_size > 64:
            with open(path, "r+b") as fh:
                fh.truncate(path.stat().st_size // 2)
            damaged += 1
    assert damaged
    done = _mmsearch("query", "red circle", "--index", str(idx))
    assert done.returncode == 2
    assert "build-index" in done.stderr
    assert len(done.stderr.strip().splitlines()) <= 3
    assert _mmsearch("build-index", "--index", str(idx)).returncode == 0
    done = _mmsearch("query", "red circle", "--index", str(idx), "--json")
    assert done.returncode == 0 and json.loads(done.stdout)
