"""What a newcomer meets on the command line: narrow result tables, --version, clean
top-level help, empty folders, unreadable query images, check/build-index output,
the model-mismatch hint, index --reembed's flags and summary, query-by-example eval."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console
from typer.testing import CliRunner

from mmsearch.cli import app
from mmsearch.datasets.synthetic import generate_catalog

runner = CliRunner()
TINY = ["--model", "mmsearch-tiny", "--workers", "1"]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A catalog (8 images + captions + metadata) indexed with mmsearch-tiny."""
    root = tmp_path_factory.mktemp("newcomer")
    cat = generate_catalog(root / "catalog", n=8, seed=11)
    index_dir = root / "index"
    args = ["index", str(cat.root), str(cat.root / "catalog.jsonl"), "--index", str(index_dir)]
    done = runner.invoke(app, [*args, "--metadata", str(cat.root / "catalog.jsonl"), *TINY, "-q"])
    assert done.exit_code == 0, done.output
    return cat.root, index_dir


def _hit(rank: int, path: str) -> SimpleNamespace:
    meta = {"sku": f"SKU-{rank:05d}", "category": "buttons", "colour": "red", "shape": "circle"}
    meta |= {"position": "left", "price": 11.48, "file": "x.jpg"}
    return SimpleNamespace(
        rank=rank, score=0.98765, kind="image", text=None, path=path, uri=path, metadata=meta
    )


def test_result_table_at_80_columns_keeps_paths_scores_and_metadata_readable() -> None:
    from mmsearch.cli.render import result_table

    path = "/data/shop/catalog/images/buttons/item-000149.jpg"
    hits = [_hit(1, path), _hit(2, path.replace("149", "150"))]
    console = Console(width=80, record=True)
    console.print(result_table(hits, width=80))
    lines = console.export_text().splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert sum(path in line for line in lines) == 1  # the path whole, on one line
    assert sum("0.9877" in line for line in lines) == 2  # scores never cut to 0.9…
    assert any("sku=SKU-00001" in line and "colour=red" in line for line in lines)
    assert len(lines) <= 4 + 2 * 3  # header and borders, then at most 3 lines a hit
    wide = Console(width=200, record=True)
    wide.print(result_table(hits, width=200))
    text = wide.export_text()
    assert "metadata" in text and len(text.splitlines()) == 6  # one line a hit


def test_version_and_top_level_help() -> None:
    done = runner.invoke(app, ["--version"])
    assert done.exit_code == 0 and re.fullmatch(r"mmsearch \S+\n", done.output)
    helped = runner.invoke(app, ["--help"])
    assert helped.exit_code == 0 and "--version" in helped.output
    assert "<bool>" not in helped.output


@pytest.mark.parametrize("content", [None, "notes.txt"])
def test_folder_without_images_is_refused_and_leaves_no_index(tmp_path: Path, content) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    if content:
        (folder / content).write_text("not an image")
    index_dir = tmp_path / "idx"
    done = runner.invoke(app, ["index", str(folder), "--index", str(index_dir), *TINY])
    assert done.exit_code == 2
    assert "nothing to index: no images" in done.output and str(folder) in done.output
    assert not index_dir.exists()


def test_query_on_an_unreadable_image_names_the_file(shop, tmp_path: Path) -> None:
    _, index_dir = shop
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff this is not a JPEG")
    done = runner.invoke(app, ["query", str(bad), "--index", str(index_dir)])
    assert done.exit_code == 2
    assert "error:" in done.output and str(bad) in done.output.replace("\n", "")


def test_query_on_an_index_with_no_items_says_so(tmp_path: Path) -> None:
    captions = tmp_path / "captions.csv"
    captions.write_text("caption\na red circle\na blue square\n")
    index_dir = tmp_path / "idx"
    assert (
        runner.invoke(app, ["index", str(captions), "--index", str(index_dir), *TINY]).exit_code
        == 0
    )
    assert runner.invoke(app, ["remove", str(captions), "--index", str(index_dir)]).exit_code == 0
    done = runner.invoke(app, ["query", "red", "--index", str(index_dir), "--kind", "any"])
    assert done.exit_code == 3
    assert "holds no items yet" in done.output and "no any" not in done.output


def test_build_index_prints_a_summary_and_json_on_request(shop) -> None:
    _, index_dir = shop
    done = runner.invoke(app, ["build-index", "--index", str(index_dir), "--no-progress"])
    assert done.exit_code == 0
    assert "{" not in done.output
    assert re.search(r"image: \w+: flat, 8 vectors of \d+ dimensions, recall@10", done.output)
    raw = runner.invoke(app, ["build-index", "--index", str(index_dir), "--json", "-q"])
    assert json.loads(raw.output)["image"]["n"] == 8


def test_check_explains_a_changed_file(tmp_path: Path) -> None:
    cat = generate_catalog(tmp_path / "catalog", n=4, seed=12)
    index_dir = tmp_path / "idx"
    assert (
        runner.invoke(app, ["index", str(cat.root), "--index", str(index_dir), *TINY]).exit_code
        == 0
    )
    changed = cat.root / cat.rows[0]["file"]
    changed.write_bytes(changed.read_bytes() + b"\0")
    done = runner.invoke(app, ["check", "--index", str(index_dir)])
    assert done.exit_code == 1
    flat = done.output.replace("\n", "")  # the console folds long lines at 80 columns
    assert re.search(rf"changed since indexing: \S+{changed.name}: .+ \(item id \d+\)", flat)


def test_model_mismatch_suggests_reembed(shop) -> None:
    from mmsearch.errors import ModelMismatchError
    from mmsearch.models.spec import ModelSpec
    from mmsearch.storage.table import ItemStore

    _, index_dir = shop
    with pytest.raises(ModelMismatchError) as caught:
        ItemStore.open(index_dir).check_model(ModelSpec("ViT-B-32", "laion2b_s34b_b79k"))
    message = str(caught.value)
    assert "mmsearch-tiny" in message
    assert "mmsearch index --reembed --model ViT-B-32 --pretrained laion2b_s34b_b79k" in message


def test_reembed_honours_quiet_and_counts_rows_once(shop) -> None:
    catalog, index_dir = shop
    args = ["index", str(catalog), "--index", str(index_dir), "--reembed", *TINY]
    quiet = runner.invoke(app, [*args, "-q"])
    assert quiet.exit_code == 0, quiet.output
    assert quiet.output.strip() == ""  # no progress bar, no summary
    report = json.loads(runner.invoke(app, [*args, "--no-progress", "--json"]).output)
    assert report["updated"] == 16  # 8 images and 8 captions, each re-embedded once
    assert report["unchanged"] == 0 and report["added"] == 0 and report["deleted"] == 0


def test_image_query_finding_itself_is_neither_hit_nor_miss(shop, tmp_path: Path) -> None:
    """Query by example: the query image is left out of its own ranking unless listed."""
    import mmsearch
    from mmsearch.evaluation.inputs import EvalQuery
    from mmsearch.evaluation.runner import evaluate_queries

    catalog, index_dir = shop
    rows = [json.loads(line) for line in (catalog / "catalog.jsonl").open(encoding="utf-8")]
    query = str(catalog / rows[0]["file"])
    idx = mmsearch.open(index_dir)
    ranked = [h.path for h in idx.search(Path(query), k=3, kind="image", exact=True)]
    assert ranked[0] == query  # the image finds itself first
    other = ranked[1]
    alone = EvalQuery(query=query, relevant={other: 1.0}, line=1, kind="image")
    listed = EvalQuery(query=query, relevant={query: 1.0}, line=2, kind="image")
    report = evaluate_queries(idx, [alone, listed], variants=["exact"])
    first, second = report.queries
    assert first["metrics"]["exact"]["recall@1"] == 1.0  # the next image is now rank 1
    assert all(not uri.endswith(rows[0]["file"]) for uri in first["top"]["exact"])
    assert second["metrics"]["exact"]["recall@1"] == 1.0  # listed as relevant: a hit
