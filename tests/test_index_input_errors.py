"""Indexing input that cannot work fails at once, with one line, and leaves nothing behind.

Missing paths and unreachable model weights are refused before any model loads and
before the index directory is created; a run in which every item failed is an error
(library) and a non-zero exit status (CLI); a metadata sidecar that joins nothing stops
the run and says where its first path was looked for.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mmsearch.indexer.pipeline import IndexOptions, run_index
from typer.testing import CliRunner

from mmsearch.cli import EXIT_ITEMS_FAILED, app
from mmsearch.errors import (
    IndexingFailedError,
    MetadataJoinError,
    ModelLoadError,
    SourceNotFoundError,
)
from mmsearch.models.spec import ModelSpec

runner = CliRunner()
#: Weights that cannot load: reaching them would raise ModelLoadError, not the error under test.
UNLOADABLE = ["--model", "ViT-B-32", "--pretrained", "/no/such/weights.safetensors"]


def _one_error_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error: "), output
    return lines[0]


# -- a path that does not exist ------------------------------------------------------------


def test_missing_path_fails_before_model_load_and_creates_nothing(tmp_path):
    idx = tmp_path / "idx"
    missing = tmp_path / "holiday photos from the summer" / "phtos"  # long: the line must not wrap
    result = runner.invoke(app, ["index", str(missing), "--index", str(idx), *UNLOADABLE])
    assert result.exit_code == 2
    line = _one_error_line(result.output)
    assert len(line) > 100 and str(missing) in line and "no such file or folder" in line
    assert not idx.exists()


def test_missing_path_library_error(tmp_path, fake_encoder):
    with pytest.raises(SourceNotFoundError, match="no such file or folder") as caught:
        run_index(
            [tmp_path / "nope"], tmp_path / "idx", ModelSpec("ViT-B-32", "/no/such.safetensors")
        )
    assert isinstance(caught.value, FileNotFoundError)
    assert not (tmp_path / "idx").exists()
    not_a_collection = tmp_path / "photo.jpg"
    not_a_collection.write_bytes(b"x")
    with pytest.raises(SourceNotFoundError, match="not a folder or a text collection"):
        run_index([not_a_collection], tmp_path / "idx", fake_encoder.spec, encoder=fake_encoder)
    assert not (tmp_path / "idx").exists()


# -- the default model without a network ---------------------------------------------------


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """A Hugging Face cache without the default model's weights."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path / "hf-cache"


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "--offline", "unreachable hub"])
def test_default_model_offline_fails_at_once_without_litter(
    how, tmp_path, small_catalog, empty_hf_cache, monkeypatch
):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    args = ["index", str(small_catalog.root), "--index", str(tmp_path / "idx")]
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    elif how == "--offline":
        args.append("--offline")
    else:  # the one quick try: a closed local port answers at once
        monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    try:
        result = runner.invoke(app, args)
    finally:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # --offline sets it for the process
    assert result.exit_code == 2
    line = _one_error_line(result.output)
    assert "ViT-B-32/laion2b_s34b_b79k" in line and "not in the local Hugging Face cache" in line
    assert ("127.0.0.1 cannot be reached" in line) == (how == "unreachable hub")
    assert not (tmp_path / "idx").exists()  # no empty folder, no .write.lock


def test_failed_model_load_leaves_no_index_folder(tmp_path, small_catalog):
    with pytest.raises(ModelLoadError):
        run_index(
            [small_catalog.root],
            tmp_path / "idx",
            ModelSpec("ViT-B-32", str(tmp_path / "missing.pt")),
        )
    assert not (tmp_path / "idx").exists()


# -- every item failed ---------------------------------------------------------------------


@pytest.fixture
def all_bad(tmp_path) -> Path:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.png").write_text("not an image")
    (folder / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF")
    return folder


def test_every_item_failed_is_an_error(tmp_path, all_bad, fake_encoder):
    opts = IndexOptions(workers=1)
    with pytest.raises(IndexingFailedError, match="all 3 item") as caught:
        run_index(
            [all_bad], tmp_path / "idx", fake_encoder.spec, options=opts, encoder=fake_encoder
        )
    report = caught.value.report
    assert report.failed == 3 and report.embedded == 0
    assert len(Path(report.report_path).read_text().splitlines()) == 3


def test_every_item_failed_exits_non_zero(tmp_path, all_bad):
    result = runner.invoke(
        app,
        [
            "index",
            str(all_bad),
            "--index",
            str(tmp_path / "idx"),
            "--model",
            "mmsearch-tiny",
            "--workers",
            "1",
        ],
    )
    assert result.exit_code == EXIT_ITEMS_FAILED
    assert "nothing was indexed: all 3 item(s) failed" in result.output
    assert result.output.count("skip ") == 3


# -- a metadata sidecar that joins nothing -------------------------------------------------


def _sidecar(path: Path, files: list[str]) -> Path:
    path.write_text(
        "".join(json.dumps({"file": f, "brand": f"b{i}"}) + "\n" for i, f in enumerate(files))
    )
    return path


def test_sidecar_joining_nothing_names_first_path_and_where(tmp_path, small_catalog, fake_encoder):
    images = small_catalog.root
    rel_to_images = [Path(r["file"]).relative_to("images").as_posix() for r in small_catalog.rows]
    meta = _sidecar(
        tmp_path / "meta.jsonl", rel_to_images
    )  # relative to ./images, not to the sidecar
    opts = IndexOptions(workers=1, image_metadata=meta)
    with pytest.raises(MetadataJoinError) as caught:
        run_index([images], tmp_path / "idx", fake_encoder.spec, options=opts, encoder=fake_encoder)
    message = str(caught.value)
    assert repr(rel_to_images[0]) in message
    assert str(tmp_path / rel_to_images[0]) in message  # where it was looked for
    assert fake_encoder.calls == 0  # stopped before embedding anything


def test_sidecar_join_counts_in_report_and_summary(tmp_path, small_catalog, fake_encoder):
    files = [r["file"] for r in small_catalog.rows]
    meta = _sidecar(
        small_catalog.root / "meta.jsonl", files[:-5] + ["images/gone-1.jpg", "images/gone-2.jpg"]
    )
    opts = IndexOptions(workers=1, image_metadata=meta)
    report = run_index(
        [small_catalog.root],
        tmp_path / "idx",
        fake_encoder.spec,
        options=opts,
        encoder=fake_encoder,
    )
    n = small_catalog.n
    assert report.metadata_join == {
        "rows": n - 3,
        "matched": n - 5,
        "unmatched": 2,
        "images_without_row": 5,
    }

    from rich.console import Console

    from mmsearch.cli.render import print_summary

    out, err = Console(record=True, width=200), Console(record=True, width=200)
    print_summary(report, out, err)
    assert f"{n - 5} matched, 2 unmatched; 5 image(s) without a row" in out.export_text()
