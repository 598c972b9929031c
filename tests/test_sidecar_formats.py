"""Image-metadata sidecars in every format, read by the text-collection readers (no
pandas): the same rows, one type per CSV column, missing keys as None, bad rows named."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mmsearch.indexer.sidecar import TEXT_KEY, load_image_metadata

from mmsearch.errors import TextCollectionError


def _rows(sidecar) -> dict[str, dict]:
    return {Path(where).name: sidecar.by_path[where] for _, where in sidecar.files}


def test_csv_and_tsv_cells_are_typed_per_column(tmp_path: Path) -> None:
    for suffix, sep in ((".csv", ","), (".tsv", "\t")):
        path = tmp_path / f"meta{suffix}"
        lines = ["file,price,sku,in_stock,caption", "a.jpg,9.5,007,true,red", "b.jpg,12,010,false,"]
        path.write_text("\n".join(line.replace(",", sep) for line in lines) + "\n")
        rows = _rows(load_image_metadata(path))
        assert rows["a.jpg"] == {
            "price": 9.5, "sku": "007", "in_stock": True, "caption": "red", TEXT_KEY: "red"
        }  # fmt: skip
        assert rows["b.jpg"]["price"] == 12.0 and rows["b.jpg"]["caption"] is None
        assert rows["b.jpg"][TEXT_KEY] is None


def test_jsonl_rows_get_every_column_and_keep_json_types(tmp_path: Path) -> None:
    path = tmp_path / "meta.jsonl"
    rows_in = [{"file": "a.jpg", "brand": "x", "n": 3}, {"file": "b.jpg", "tags": ["p", "q"]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows_in))
    rows = _rows(load_image_metadata(path, text_column="brand"))
    assert rows["a.jpg"] == {"brand": "x", "n": 3, "tags": None, TEXT_KEY: "x"}
    assert rows["b.jpg"] == {"brand": None, "n": None, "tags": ["p", "q"], TEXT_KEY: None}


def test_parquet_sidecar(tmp_path: Path) -> None:
    path = tmp_path / "meta.parquet"
    table = pa.table({"file": ["a.jpg", "b.jpg"], "price": [1.5, None], "title": ["t", "u"]})
    pq.write_table(table, path)
    rows = _rows(load_image_metadata(path))
    assert rows["a.jpg"] == {"price": 1.5, "title": "t", TEXT_KEY: "t"}
    assert rows["b.jpg"]["price"] is None


def test_bad_sidecars_fail_with_one_line_naming_the_problem(tmp_path: Path) -> None:
    bad_row = tmp_path / "meta.csv"
    bad_row.write_text("file,brand\na.jpg,x\nb.jpg,y,extra\nc.jpg,z,1\n")
    with pytest.raises(
        TextCollectionError, match=r"row 2: line 3: expected 2 fields, got 3.*1 more"
    ):
        load_image_metadata(bad_row)
    no_file = tmp_path / "nofile.jsonl"
    no_file.write_text('{"path": "a.jpg"}\n')
    with pytest.raises(TextCollectionError, match="no 'file' column.*--file-column"):
        load_image_metadata(no_file)
    with pytest.raises(TextCollectionError, match=r"use \.csv, \.tsv, \.jsonl or \.parquet"):
        load_image_metadata(tmp_path / "meta.xlsx")
    with pytest.raises(TextCollectionError, match="cannot read"):
        load_image_metadata(tmp_path / "missing.csv")
    not_parquet = tmp_path / "meta.parquet"
    not_parquet.write_bytes(b"not parquet")
    with pytest.raises(TextCollectionError, match="not a readable Parquet file"):
        load_image_metadata(not_parquet)
