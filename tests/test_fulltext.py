"""Full-text queries on LanceDB's native core (mmsearch.storage.fulltext) answer exactly
as LanceDB's own Python API does, on a real table with a real FTS index, in a process
that never imports the ``lancedb`` package; a later ``import lancedb`` still works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

_TEXTS = [
    "red floral shirt",
    "blue striped shirt",
    "red dress with flowers",
    "green linen trousers",
    "floral summer dress",
    "red hat",
    "plain white shirt",
    "striped red scarf",
]

_NATIVE = """
import json, sys
from mmsearch.storage.fulltext import FullTextTable, match_query
table = FullTextTable.open(sys.argv[1], "items", version=int(sys.argv[2]))
out = []
for text, negative, where in json.loads(sys.argv[3]):
    got = table.search(match_query(text, "text", negative), ["id", "_score"], where, 10)
    out.append([got.column("id").to_pylist(), [round(s, 5) for s in got.column("_score").to_pylist()]])
out.append("lancedb" in sys.modules)
import lancedb  # the full package still imports after its native core was loaded alone
db = lancedb.connect(sys.argv[1])
out.append(db.open_table("items").count_rows())
print(json.dumps(out))
"""

QUERIES = [
    ("red shirt", "", None),
    ("red", "dress", None),  # a negative word excludes rows
    ("shirt", "", "id IN (1, 7)"),
    ("nothing matches this", "", None),
]


@pytest.fixture(scope="module")
def fts_table(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    import lancedb
    import pyarrow as pa
    from lancedb.index import FTS

    db_dir = tmp_path_factory.mktemp("fts") / "db"
    db = lancedb.connect(str(db_dir))
    data = pa.table({"id": pa.array(range(len(_TEXTS)), pa.int64()), "text": _TEXTS})
    table = db.create_table("items", data)
    table.create_index("text", config=FTS(with_position=False))
    version = table.version
    table.add(pa.table({"id": pa.array([99], pa.int64()), "text": ["red shirt added later"]}))
    return db_dir, version


def _lancedb_answers(db_dir: Path, version: int) -> list[list[list[float]]]:
    import lancedb
    from lancedb.query import BooleanQuery, MatchQuery, Occur

    table = lancedb.connect(str(db_dir)).open_table("items")
    table.checkout(version)
    out = []
    for text, negative, where in QUERIES:
        query = MatchQuery(text, "text")
        if negative:
            query = BooleanQuery(
                [(Occur.SHOULD, query), (Occur.MUST_NOT, MatchQuery(negative, "text"))]
            )
        search = table.search(query).select(["id", "_score"]).limit(10)
        got = (search.where(where, prefilter=True) if where else search).to_arrow()
        out.append(
            [got.column("id").to_pylist(), [round(s, 5) for s in got.column("_score").to_pylist()]]
        )
    return out


def test_native_answers_equal_lancedb_api(fts_table: tuple[Path, int]) -> None:
    db_dir, version = fts_table
    proc = subprocess.run(
        [sys.executable, "-c", _NATIVE, str(db_dir), str(version), json.dumps(QUERIES)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    *answers, imported_before, rows = json.loads(proc.stdout)
    assert imported_before is False
    assert rows == len(_TEXTS) + 1
    expected = _lancedb_answers(db_dir, version)
    assert answers == expected
    assert 99 not in answers[0][0]  # pinned to the version: the later row is not seen
    assert answers[0][0] and set(answers[1][0]) == {0, 5, 7}  # "red" minus "dress"
    assert set(answers[2][0]) <= {1, 7} and answers[3][0] == []


def test_missing_table_is_a_storage_error(tmp_path: Path) -> None:
    from mmsearch.errors import StorageError
    from mmsearch.storage.fulltext import FullTextTable

    with pytest.raises(StorageError, match="cannot open table items"):
        FullTextTable.open(str(tmp_path / "db"), "items")


_DEFERRED = """
import sys
from mmsearch.storage.lanceimport import import_lancedb
import pyarrow as pa
lancedb = import_lancedb()
db = lancedb.connect(sys.argv[1])
table = db.create_table("items", pa.table({"id": [1, 2], "text": ["red shirt", "blue hat"]}))
from lancedb.index import FTS
table.create_index("text", config=FTS(with_position=False))
hits = table.search("shirt", query_type="fts").select(["id"]).limit(5).to_arrow().column("id").to_pylist()
before = "lance_namespace_urllib3_client.api" in sys.modules
import lance_namespace_urllib3_client as client
print(hits, before, client.ApiClient.__name__, "lance_namespace_urllib3_client.api" in sys.modules)
"""


def test_lancedb_imports_without_the_rest_client_init_until_it_is_used(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _DEFERRED, str(tmp_path / "db")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["[1]", "False", "ApiClient", "True"]


def _answers(table) -> list[list[list[float]]]:
    from mmsearch.storage.fulltext import match_query

    out = []
    for text, negative, where in QUERIES:
        got = table.search(match_query(text, "text", negative), ["id", "_score"], where, 10)
        out.append(
            [got.column("id").to_pylist(), [round(s, 5) for s in got.column("_score").to_pylist()]]
        )
    return out


def test_the_native_core_is_used_for_the_pinned_releases_only(monkeypatch) -> None:
    """pyproject.toml pins the releases the native path was tested with; others (a new
    LanceDB in CI) run the public API."""
    import importlib.metadata
    import re

    import tomllib

    from mmsearch.storage import fulltext

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    (pin,) = [r for r in project["dependencies"] if r.startswith("lancedb")]
    low, high = (tuple(int(x) for x in v.split(".")) for v in re.findall(r"[<>]=?([\d.]+)", pin))
    assert (low, high) == fulltext.NATIVE_TESTED
    assert fulltext.native_matches()  # the installed release is in the pinned range
    for release, native in (
        ("0.39.9", False),
        ("0.40.7", True),
        ("0.41.0", False),
        ("1.0.0", False),
    ):
        monkeypatch.setattr(importlib.metadata, "version", lambda name, r=release: r)
        assert fulltext.native_matches() is native, release


def test_forced_public_api_answers_as_lancedb_does(fts_table: tuple[Path, int]) -> None:
    from mmsearch.storage.fulltext import FullTextTable

    db_dir, version = fts_table
    table = FullTextTable.open(str(db_dir), "items", version=version, native=False)
    assert not table.is_native
    assert _answers(table) == _lancedb_answers(db_dir, version)


def test_a_release_outside_the_pin_runs_the_public_api(fts_table, monkeypatch) -> None:
    import importlib.metadata

    from mmsearch.storage.fulltext import FullTextTable

    db_dir, version = fts_table
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.52.0")
    table = FullTextTable.open(str(db_dir), "items", version=version)
    assert not table.is_native and _answers(table) == _lancedb_answers(db_dir, version)


def test_a_changed_native_interface_falls_back_to_the_public_api(fts_table, monkeypatch) -> None:
    """A native core whose calls changed (another signature, a method gone) is detected
    at open or at the first query; the answers stay LanceDB's."""
    from mmsearch.storage import fulltext

    db_dir, version = fts_table
    expected = _lancedb_answers(db_dir, version)

    class ChangedCore:
        async def connect(self, uri: str):  # fewer parameters than the core this was written for
            raise AssertionError("not reached")

    with monkeypatch.context() as patched:
        patched.setattr(fulltext, "native_module", lambda: ChangedCore())
        table = fulltext.FullTextTable.open(str(db_dir), "items", version=version, native=True)
    assert not table.is_native and _answers(table) == expected

    table = fulltext.FullTextTable.open(str(db_dir), "items", version=version, native=True)
    assert table.is_native

    def gone(*args, **kwargs):
        raise AttributeError("'Query' object has no attribute 'nearest_to_text'")

    monkeypatch.setattr(fulltext, "_search_native", gone)
    assert _answers(table) == expected and not table.is_native
