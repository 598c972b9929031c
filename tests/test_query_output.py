"""What ``mmsearch query`` prints: no-results reasons and exit status, the results table."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from indexer.pipeline import IndexOptions, run_index
from mmsearch.cli import EXIT_NO_RESULTS, app
from mmsearch.datasets.synthetic import generate_catalog

runner = CliRunner()


@pytest.fixture(scope="module")
def image_index(tmp_path_factory, tiny_encoder):
    """20 plain images (no metadata sidecar) indexed with mmsearch-tiny."""
    root = tmp_path_factory.mktemp("query-output")
    info = generate_catalog(root / "catalog", n=20, seed=11)
    run_index(
        [info.root / "images"],
        root / "idx",
        tiny_encoder.spec,
        options=IndexOptions(workers=1),
        encoder=tiny_encoder,
    )
    return root


def _query(root, *args: str):
    return runner.invoke(
        app, ["query", *args, "--index", str(root / "idx")], env={"COLUMNS": "120"}
    )


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (
            ["red circle", "--kind", "text"],
            "no results (the index holds no text items; it holds: image)",
        ),
        (
            ["red circle", "--where", "kind = text"],
            "no results (no item matches the filters 'kind = text')",
        ),
    ],
)
def test_no_results_says_why_and_exits_3(image_index, args, reason):
    result = _query(image_index, *args)
    assert result.exit_code == EXIT_NO_RESULTS == 3
    assert result.output.strip() == reason  # no empty table
    as_json = _query(image_index, *args, "--json")
    assert as_json.exit_code == EXIT_NO_RESULTS
    assert json.loads(as_json.stdout) == []


def test_engine_reason_is_shown_when_given():
    from mmsearch.render import no_results_reason

    class Empty(list):
        reason = "every candidate scored below --min-score 0.9"

    assert no_results_reason(Empty(), kinds=["image"], kind="any", where=None) == Empty.reason
    assert (
        no_results_reason([], kinds=["image"], kind="any", where=None)
        == "nothing matched the query"
    )


def test_results_table_relative_paths_no_empty_metadata_column(image_index, monkeypatch):
    monkeypatch.chdir(image_index)
    result = _query(image_index, "red circle", "-k", "3")
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "score" in line)
    assert "metadata" not in header  # plain folders: no metadata column taking width
    rows = [line for line in result.output.splitlines() if " image " in line]
    assert len(rows) == 3
    for row in rows:
        path = row.split("│")[4].strip()
        assert (
            path.startswith("catalog" + os.sep) and (image_index / path).is_file()
        )  # whole, relative, copyable
