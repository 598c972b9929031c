"""Tests of mmsearch.indexer.textsource: every "Bad text collections" case builds its own file."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mmsearch.indexer.textsource import RowProblem, TextCollection, read_text_collection

from mmsearch.errors import TextCollectionError


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def problems_by_row(collection: TextCollection) -> dict[int, RowProblem]:
    return {p.row_number: p for p in collection.problems}


# --- good files of every format ---------------------------------------------------------------


def test_csv_auto_columns_and_typed_metadata(tmp_path: Path) -> None:
    p = write(
        tmp_path / "items.csv",
        "id,caption,price,stock,on_sale,sku,note\n"
        "a1,red shirt,9.5,3,true,007,\n"
        "a2,blue hat,12,0,False,010,hello\n",
    )
    col = read_text_collection(p)
    assert (col.text_column, col.id_column, col.format) == ("caption", "id", "csv")
    assert [(r.row_number, r.id, r.text) for r in col.rows] == [
        (1, "a1", "red shirt"),
        (2, "a2", "blue hat"),
    ]
    assert col.rows[0].metadata == {
        "price": 9.5,
        "stock": 3,
        "on_sale": True,
        "sku": "007",  # leading zeros: a string, not 7
        "note": None,
    }
    assert col.rows[1].metadata["price"] == 12.0 and isinstance(
        col.rows[1].metadata["price"], float
    )
    assert col.problems == []


def test_unpacks_as_rows_and_problems(tmp_path: Path) -> None:
    rows, problems = read_text_collection(write(tmp_path / "a.csv", "text\nhello\n"))
    assert [r.text for r in rows] == ["hello"] and problems == []


def test_tsv_and_quoted_multiline_fields(tmp_path: Path) -> None:
    p = write(tmp_path / "a.tsv", 'id\ttitle\n1\t"two\nlines"\n2\tplain, with comma\n')
    col = read_text_collection(p)
    assert [r.text for r in col.rows] == ["two\nlines", "plain, with comma"]


@pytest.mark.parametrize("suffix", [".jsonl", ".ndjson", ".json-lines", ".JSONL"])
def test_jsonl_extensions(tmp_path: Path, suffix: str) -> None:
    p = write(tmp_path / f"a{suffix}", '{"item_id": 5, "text": "cat", "tags": ["x"]}\n')
    col = read_text_collection(p)
    assert col.id_column == "item_id"
    assert [(r.id, r.text, r.metadata) for r in col.rows] == [("5", "cat", {"tags": '["x"]'})]


def test_parquet_typed_metadata(tmp_path: Path) -> None:
    table = pa.table(
        {
            "product_id": pa.array([10, 11, 12], pa.int64()),
            "description": ["lamp", "  ", "desk"],
            "price": [1.5, 2.0, None],
            "colour": ["red", "green", "blue"],
        }
    )
    pq.write_table(table, tmp_path / "c.parquet")
    col = read_text_collection(tmp_path / "c.parquet")
    assert (col.text_column, col.id_column, col.encoding) == ("description", "product_id", None)
    assert [(r.row_number, r.id, r.metadata) for r in col.rows] == [
        (1, "10", {"price": 1.5, "colour": "red"}),
        (3, "12", {"price": None, "colour": "blue"}),
    ]
    assert [(p.row_number, p.exc_class) for p in col.problems] == [(2, "EmptyTextError")]


def test_text_column_case_insensitive_fallback(tmp_path: Path) -> None:
    col = read_text_collection(write(tmp_path / "a.csv", "ID,Caption\n1,x\n"))
    assert (col.text_column, col.id_column) == ("Caption", "ID")


def test_explicit_columns(tmp_path: Path) -> None:
    p = write(tmp_path / "a.csv", "sku,caption,alt\nS1,first,second\n")
    col = read_text_collection(p, text_column="alt", id_column="sku")
    assert [(r.id, r.text, r.metadata) for r in col.rows] == [
        ("S1", "second", {"caption": "first"})
    ]


def test_derived_ids_without_id_column(tmp_path: Path) -> None:
    p = write(tmp_path / "shop.csv", "caption\na\n\nb\n")  # a blank line is not a row
    col = read_text_collection(p)
    assert col.id_column is None
    assert [r.id for r in col.rows] == ["shop:1", "shop:2"]


# --- malformed rows: skipped with row numbers -----------------------------------------------


def test_csv_wrong_field_count(tmp_path: Path) -> None:
    p = write(tmp_path / "a.csv", "id,caption\n1,ok\n2,too,many\n3\n4,fine\n")
    col = read_text_collection(p)
    assert [r.id for r in col.rows] == ["1", "4"]
    probs = problems_by_row(col)
    assert sorted(probs) == [2, 3]
    assert probs[2].exc_class == "FieldCountError" and "expected 2 fields, got 3" in probs[2].reason
    assert "line 3" in probs[2].reason


def test_malformed_jsonl_lines(tmp_path: Path) -> None:
    p = write(
        tmp_path / "a.jsonl",
        '{"id": 1, "caption": "ok"}\n{"id": 2, "caption": \n[1, 2]\n"just a string"\n\n{"id": 6, "caption": "fine"}\n',
    )
    col = read_text_collection(p)
    assert [(r.row_number, r.id) for r in col.rows] == [(1, "1"), (6, "6")]
    probs = problems_by_row(col)
    assert probs[2].exc_class == "JSONDecodeError" and "malformed JSON" in probs[2].reason
    assert probs[3].exc_class == "NotAnObjectError" and "list" in probs[3].reason
    assert probs[4].exc_class == "NotAnObjectError"
    assert 5 not in probs  # blank line: skipped silently


def test_empty_and_whitespace_and_missing_text(tmp_path: Path) -> None:
    lines = [
        {"id": 1, "caption": ""},
        {"id": 2, "caption": "  \t "},
        {"id": 3},
        {"id": 4, "caption": None},
        {"id": 5, "caption": {"nested": 1}},
        {"id": 6, "caption": "kept"},
    ]
    p = write(tmp_path / "a.jsonl", "\n".join(json.dumps(x) for x in lines))
    col = read_text_collection(p)
    assert [r.id for r in col.rows] == ["6"]
    assert [p.exc_class for p in col.problems] == ["EmptyTextError"] * 4 + ["BadValueError"]


def test_huge_caption_skipped_not_truncated(tmp_path: Path) -> None:
    rng = random.Random(3)
    huge = "".join(rng.choice("abcdef ") for _ in range(10_001))
    p = tmp_path / "a.csv"
    with open(p, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["id", "caption"], ["1", huge], ["2", "short"]])
    col = read_text_collection(p)
    assert [r.id for r in col.rows] == ["2"]
    (prob,) = col.problems
    assert (prob.row_number, prob.exc_class) == (1, "TextTooLongError")
    assert "10001 characters" in prob.reason
    assert len(read_text_collection(p, max_text_chars=20_000).rows) == 2


def test_field_beyond_csv_field_limit_is_a_row_problem(tmp_path: Path) -> None:
    p = write(tmp_path / "a.csv", "id,caption\n1," + "x" * 200_000 + "\n2,ok\n")
    col = read_text_collection(p, max_text_chars=500_000)
    assert [r.id for r in col.rows] == ["2"]
    assert col.problems[0].row_number == 1 and col.problems[0].exc_class == "csv.Error"


def test_duplicate_ids_keep_first(tmp_path: Path) -> None:
    p = write(tmp_path / "a.csv", "id,caption\n7,first\n8,other\n7,second\n7,third\n")
    col = read_text_collection(p)
    assert [(r.id, r.text) for r in col.rows] == [("7", "first"), ("8", "other")]
    assert [(p.row_number, p.exc_class) for p in col.problems] == [
        (3, "DuplicateIdError"),
        (4, "DuplicateIdError"),
    ]
    assert "row 1" in col.problems[0].reason


def test_missing_id_value_skips_row(tmp_path: Path) -> None:
    col = read_text_collection(write(tmp_path / "a.csv", "id,caption\n,no id\n2,ok\n"))
    assert [r.id for r in col.rows] == ["2"]
    assert col.problems[0].exc_class == "MissingIdError"


def test_mixed_json_types_become_one_string_column(tmp_path: Path) -> None:
    lines = [{"text": "a", "size": 1}, {"text": "b", "size": "L"}, {"text": "c", "size": 2.5}]
    col = read_text_collection(write(tmp_path / "a.jsonl", "\n".join(map(json.dumps, lines))))
    assert [r.metadata["size"] for r in col.rows] == ["1", "L", "2.5"]
    lines = [{"text": "a", "w": 1}, {"text": "b", "w": 2.5}, {"text": "c"}]
    col = read_text_collection(write(tmp_path / "b.jsonl", "\n".join(map(json.dumps, lines))))
    assert [r.metadata["w"] for r in col.rows] == [1.0, 2.5, None]


# --- encodings -------------------------------------------------------------------------------


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    p = tmp_path / "a.csv"
    p.write_bytes(b"\xef\xbb\xbfid,caption\n1,caf\xc3\xa9\n")
    col = read_text_collection(p)
    assert col.id_column == "id" and col.rows[0].text == "café"


def test_utf16_with_bom_is_accepted(tmp_path: Path) -> None:
    p = write(tmp_path / "a.csv", "\ufeffid,caption\n1,naïve\n", encoding="utf-16-le")
    assert read_text_collection(p).rows[0].text == "naïve"


def test_wrong_encoding_names_the_byte_offset(tmp_path: Path) -> None:
    body = "id,caption\n1,plain\n2,caf\u00e9\n"
    p = write(tmp_path / "a.csv", body, encoding="cp1252")
    with pytest.raises(TextCollectionError) as err:
        read_text_collection(p)
    msg = str(err.value)
    offset = body.encode("cp1252").index(b"\xe9")
    assert f"byte 0xE9 at offset {offset} (line 3)" in msg
    assert "encoding='cp1252'" in msg
    assert read_text_collection(p, encoding="cp1252").rows[1].text == "café"


def test_bad_byte_far_into_a_large_file_is_located(tmp_path: Path) -> None:
    head = "id,caption\n" + "".join(f"{i},caption number {i} \u00e9\u20ac\n" for i in range(80_000))
    raw = head.encode("utf-8") + b"80000,bad \xff byte\n"
    p = tmp_path / "big.csv"
    p.write_bytes(raw)  # ~2 MiB: the bad byte is in the second 1 MiB scan chunk
    bad_offset = raw.index(b"\xff")
    with pytest.raises(TextCollectionError, match=rf"offset {bad_offset} \(line 80002\)"):
        read_text_collection(p)


# --- file-level errors, raised before anything is returned -------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TextCollectionError, match="cannot read"):
        read_text_collection(tmp_path / "nope.csv")


def test_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(TextCollectionError, match=r"unknown .*'\.xlsx'.*\.csv"):
        read_text_collection(write(tmp_path / "a.xlsx", "id,caption\n"))


def test_empty_files(tmp_path: Path) -> None:
    for name in ("a.csv", "a.jsonl", "a.parquet"):
        with pytest.raises(TextCollectionError, match="empty"):
            read_text_collection(write(tmp_path / name, ""))
    with pytest.raises(TextCollectionError, match="no JSON lines"):
        read_text_collection(write(tmp_path / "b.jsonl", "\n\n  \n"))


def test_missing_requested_text_column_names_existing(tmp_path: Path) -> None:
    p = write(tmp_path / "a.csv", "id,label,price\n1,x,2\n")
    with pytest.raises(TextCollectionError) as err:
        read_text_collection(p, text_column="caption")
    assert "'caption'" in str(err.value) and "['id', 'label', 'price']" in str(err.value)
    with pytest.raises(TextCollectionError, match="none of the usual text columns"):
        read_text_collection(p)


def test_missing_requested_id_column(tmp_path: Path) -> None:
    p = write(tmp_path / "a.jsonl", '{"sku": 1, "caption": "x"}\n')
    with pytest.raises(
        TextCollectionError, match=r"no id column 'id'; its columns are \['sku', 'caption'\]"
    ):
        read_text_collection(p, id_column="id")


def test_semicolon_csv_gets_a_delimiter_hint(tmp_path: Path) -> None:
    with pytest.raises(TextCollectionError, match="another delimiter"):
        read_text_collection(write(tmp_path / "a.csv", "id;caption\n1;x\n"))


def test_unreadable_parquet(tmp_path: Path) -> None:
    pq.write_table(pa.table({"caption": ["a"] * 100}), tmp_path / "ok.parquet")
    raw = (tmp_path / "ok.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(TextCollectionError, match="not a readable Parquet"):
        read_text_collection(tmp_path / "cut.parquet")
    with pytest.raises(TextCollectionError, match="not a readable Parquet"):
        read_text_collection(write(tmp_path / "fake.parquet", "id,caption\n1,x\n"))


def test_duplicate_header_names(tmp_path: Path) -> None:
    with pytest.raises(TextCollectionError, match="repeats column names"):
        read_text_collection(write(tmp_path / "a.csv", "id,caption,caption\n1,a,b\n"))


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(TextCollectionError, match="not a file"):
        read_text_collection(tmp_path / "d.csv")


def test_bad_utf8_scan_handles_characters_split_across_chunks(tmp_path: Path) -> None:
    from mmsearch.indexer.textencoding import _first_bad_utf8

    raw = "é€\n😀a\n".encode() + b"\xe2\x82" + b"\nz"  # truncated euro sign on line 3
    p = tmp_path / "x.csv"
    p.write_bytes(raw)
    for chunk_size in range(1, 12):  # every split point, including inside characters
        assert _first_bad_utf8(p, chunk_size) == (len("é€\n😀a\n".encode()), 3)
    p.write_bytes("é€\n😀".encode())
    assert all(_first_bad_utf8(p, n) == (None, 2) for n in range(1, 8))
    p.write_bytes(b"ok\n\xf0\x9f")  # file ends inside a character
    assert all(_first_bad_utf8(p, n) == (3, 2) for n in range(1, 6))
