"""Indexing progress and summary: failed files are not counted as embedded, the rate
excludes model loading, and --quiet prints only what went wrong."""

from __future__ import annotations

import time

from typer.testing import CliRunner

from indexer.pipeline import IndexOptions, run_index
from mmsearch.cli import app
from mmsearch.datasets.synthetic import generate_catalog

runner = CliRunner()


def test_progress_never_counts_failed_files_as_embedded(tmp_path, fake_encoder):
    cat = generate_catalog(tmp_path / "cat", n=12, seed=2, corrupt=3)
    calls: list[tuple[str, int, int | None]] = []
    report = run_index(
        [cat.root],
        tmp_path / "idx",
        fake_encoder.spec,
        options=IndexOptions(workers=1),
        progress=lambda *call: calls.append(call),
        encoder=fake_encoder,
    )
    images = [(a, t) for stage, a, t in calls if stage == "images"]
    assert sum(a for a, _ in images) == report.embedded == 12
    assert sum(t for _, t in images if t) == 12  # 15 announced, 3 withdrawn as they failed
    assert sum(a for stage, a, _ in calls if stage == "failed") == 3


def test_rate_excludes_model_loading(tmp_path, fake_encoder, monkeypatch):
    import mmsearch.models

    def slow_load(spec, device=None):
        time.sleep(1.0)
        return fake_encoder

    monkeypatch.setattr(mmsearch.models, "load_encoder", slow_load)
    cat = generate_catalog(tmp_path / "cat", n=4, seed=3)
    opts = IndexOptions(workers=1, build_index=False)
    started = time.perf_counter()
    report = run_index([cat.root], tmp_path / "idx", fake_encoder.spec, options=opts)
    wall = time.perf_counter() - started
    assert report.load_s >= 1.0
    assert report.elapsed_s + report.load_s <= wall
    assert report.items_per_s == report.embedded / report.elapsed_s


def test_quiet_prints_only_problems(tmp_path):
    cat = generate_catalog(tmp_path / "cat", n=6, seed=4, corrupt=1)
    args = [
        "index",
        str(cat.root),
        "--index",
        str(tmp_path / "idx"),
        "--model",
        "mmsearch-tiny",
        "--workers",
        "1",
    ]
    quiet = runner.invoke(app, [*args, "--quiet"])
    assert quiet.exit_code == 0, quiet.output
    assert "index summary" not in quiet.output
    assert "1 item(s) skipped" in quiet.output
    loud = runner.invoke(app, [*args, "--no-progress"])
    assert loud.exit_code == 0 and "index summary" in loud.output
