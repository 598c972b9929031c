"""What ``mmsearch query`` prints: no-results reasons and exit status, the results table."""

from __future__ import annotations

import json
import os
import re

import pytest
from mmsearch.indexer.pipeline import IndexOptions, run_index
from typer.testing import CliRunner

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
    from mmsearch.cli.render import no_results_reason

    class Empty(list):
        reason = "every candidate scored below --min-score 0.9"

    assert no_results_reason(Empty(), kinds=["image"], kind="any", where=None) == Empty.reason
    assert (
        no_results_reason([], kinds=["image"], kind="any", where=None)
        == "nothing matched the query"
    )
    without_reason = no_results_reason([], kinds=["image"], kind="text", where=None)  # a plain list
    assert without_reason == "the index holds no text items; it holds: image"
    assert no_results_reason([], kinds=["image"], kind="any", where=["price < 1"]) == (
        "no item matches the filters 'price < 1'"
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


def test_previews_inline_images_with_kitty_and_iterm(image_index, monkeypatch):
    import base64
    import io

    from PIL import Image

    for protocol, start in (("kitty", "\x1b_Gf=100,a=T,"), ("iterm", "\x1b]1337;File=inline=1;")):
        monkeypatch.setenv("MMSEARCH_PREVIEW", protocol)
        result = _query(image_index, "red circle", "-k", "2", "-p")
        assert result.exit_code == 0, result.output
        assert result.stdout.count(start) == 2  # one preview per image hit
        if protocol == "kitty":  # the first image: its chunks up to the one with m=0
            parts = []
            for head, chunk in re.findall(r"\x1b_G([^;]*);([^\x1b]*)\x1b\\", result.stdout):
                parts.append(chunk)
                if "m=0" in head:
                    break
            data = "".join(parts)
        else:
            data = result.stdout.split(start, 1)[1].split(":", 1)[1].split("\x07", 1)[0]
        thumb = Image.open(io.BytesIO(base64.b64decode(data)))
        assert thumb.format == "PNG" and max(thumb.size) <= 192


def test_previews_fall_back_to_the_table_where_images_cannot_show(image_index, monkeypatch):
    from mmsearch.cli.termimage import detect_protocol

    monkeypatch.delenv("MMSEARCH_PREVIEW", raising=False)
    result = _query(image_index, "red circle", "-k", "2", "-p")  # not a terminal
    assert result.exit_code == 0
    assert "\x1b_G" not in result.stdout and "1337;File" not in result.stdout
    assert "does not show images" in result.output and "score" in result.stdout
    assert detect_protocol({"TERM": "xterm-kitty"}) == "kitty"
    assert detect_protocol({"TERM_PROGRAM": "WezTerm"}) == "iterm"
    assert detect_protocol({"TERM": "xterm-256color"}) is None
    assert detect_protocol({"TERM": "xterm-kitty"}, isatty=False) is None


def test_zero_shot_label_shows_its_probability_when_it_is_the_only_metadata():
    from types import SimpleNamespace

    from rich.console import Console

    from mmsearch.cli.render import result_table

    hit = SimpleNamespace(
        rank=1,
        score=0.5,
        kind="image",
        text=None,
        path="a.jpg",
        uri="a.jpg",
        metadata={"category_zs": "dress", "category_zs_prob": 0.734},
    )
    console = Console(width=200, record=True)
    console.print(result_table([hit]))
    text = console.export_text()
    assert "category_zs=dress (0.73)" in text and "category_zs_prob" not in text
