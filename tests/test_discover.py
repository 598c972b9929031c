"""Tests of mmsearch.indexer.discover: symlinks, loops, unreadable folders, non-UTF-8 names."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mmsearch.indexer import discover
from mmsearch.indexer.discover import FileItem, path_to_uri, uri_to_path, walk_images

posix_only = pytest.mark.skipif(
    os.name != "posix", reason="needs POSIX symlinks and byte file names"
)


def touch(path: Path, data: bytes = b"img") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def names(items: list[FileItem], root: Path) -> list[str]:
    return [os.path.relpath(i.path, root) for i in items]


def test_recursive_case_insensitive_sorted(tmp_path: Path) -> None:
    touch(tmp_path / "b" / "x.PNG")
    touch(tmp_path / "a.jpg")
    touch(tmp_path / "b" / "c" / "y.JpEg")
    touch(tmp_path / "notes.txt")
    touch(tmp_path / "noext")
    res = walk_images(tmp_path)
    assert names(res.items, tmp_path) == ["a.jpg", "b/c/y.JpEg", "b/x.PNG"]
    assert res.complete and res.problems == []


def test_items_carry_mtime_and_size(tmp_path: Path) -> None:
    p = touch(tmp_path / "a.webp", b"12345")
    os.utime(p, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    (item,) = walk_images(tmp_path).items
    assert (item.size, item.mtime_ns) == (5, 1_600_000_000_123_456_789)
    assert os.path.isabs(item.path)


def test_custom_extensions(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    touch(tmp_path / "b.RAW")
    assert names(walk_images(tmp_path, extensions={".raw"}).items, tmp_path) == ["b.RAW"]


def test_order_is_deterministic_regardless_of_creation_order(tmp_path: Path) -> None:
    rng = random.Random(7)
    files = [f"d{rng.randrange(5)}/f{i:03d}.png" for i in range(60)]
    rng.shuffle(files)
    for rel in files:
        touch(tmp_path / rel)
    got = names(walk_images(tmp_path).items, tmp_path)
    assert got == sorted(files)


@posix_only
def test_non_utf8_name_found_and_round_trips_through_arrow(tmp_path: Path) -> None:
    raw_dir = os.fsencode(tmp_path) + b"/dossier-\xff"
    os.mkdir(raw_dir)
    raw = raw_dir + b"/caf\xe9 100%.jpg"  # latin-1 bytes: not UTF-8
    with open(raw, "wb") as fh:
        fh.write(b"pixels")
    (item,) = walk_images(tmp_path).items
    assert os.fsencode(item.path) == raw  # lossless
    with open(item.path, "rb") as fh:
        assert fh.read() == b"pixels"
    with pytest.raises(UnicodeEncodeError):  # why the uri form is needed
        item.path.encode("utf-8")
    uri = path_to_uri(item.path)
    uri.encode("utf-8")  # valid UTF-8 now
    assert uri.endswith("/dossier-%FF/caf%E9 100%25.jpg")
    table = pa.table({"uri": [uri]})
    pq.write_table(table, tmp_path / "t.parquet")
    back = pq.read_table(tmp_path / "t.parquet").column("uri")[0].as_py()
    assert uri_to_path(back) == item.path
    assert os.fsencode(uri_to_path(back)) == raw


@pytest.mark.parametrize(
    "raw",
    [
        b"/plain/a.jpg",
        b"/caf\xc3\xa9/\xe2\x82\xac.png",
        b"/%41%/x",
        b"/\xc3(/\xed\xa0\x80/\x80\xff.jpg",
    ],
)
def test_path_uri_round_trip(raw: bytes) -> None:
    path = os.fsdecode(raw)
    uri = path_to_uri(path)
    uri.encode("utf-8")
    assert uri_to_path(uri) == path
    assert os.fsencode(uri_to_path(uri)) == raw


def test_path_uri_round_trip_random_bytes() -> None:
    rng = random.Random(42)
    for _ in range(300):
        raw = bytes(rng.choice([0x25, 0x2F, 0x41, 0xC3, 0xA9, 0xFF, 0x80, 0xE2]) for _ in range(12))
        path = os.fsdecode(raw)
        assert os.fsencode(uri_to_path(path_to_uri(path))) == raw


def test_plain_paths_are_stored_unchanged() -> None:
    assert path_to_uri("/photos/été/a b.jpg") == "/photos/été/a b.jpg"


def test_uri_with_stray_percent_is_rejected() -> None:
    with pytest.raises(ValueError):
        uri_to_path("/a/100%.jpg")


@posix_only
def test_symlink_loop_finishes_and_visits_each_dir_once(tmp_path: Path) -> None:
    touch(tmp_path / "a" / "x.jpg")
    os.symlink(tmp_path, tmp_path / "a" / "back_to_root")
    os.symlink(tmp_path / "a", tmp_path / "a" / "self")
    res = walk_images(tmp_path)
    assert names(res.items, tmp_path) == ["a/x.jpg"]
    kinds = sorted((p.kind, os.path.basename(p.path)) for p in res.problems)
    assert kinds == [("loop", "back_to_root"), ("loop", "self")]
    assert res.complete  # a loop hides nothing


@posix_only
def test_symlinked_dir_alias_walked_once_under_real_path(tmp_path: Path) -> None:
    touch(tmp_path / "z_real" / "x.jpg")
    os.symlink(tmp_path / "z_real", tmp_path / "a_alias")  # sorts (and is met) first
    res = walk_images(tmp_path)
    assert names(res.items, tmp_path) == ["z_real/x.jpg"]
    assert [(p.kind, os.path.basename(p.path)) for p in res.problems] == [
        ("duplicate-dir", "a_alias")
    ]


@posix_only
def test_symlinks_to_outside_files_and_dirs_are_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    touch(outside / "o.png")
    touch(outside / "sub" / "deep.png")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside / "o.png", root / "link.png")
    os.symlink(outside, root / "linkdir")
    res = walk_images(root)
    assert names(res.items, root) == ["link.png", "linkdir/o.png", "linkdir/sub/deep.png"]
    assert res.items[0].size == 3
    assert res.complete


@posix_only
def test_follow_symlinks_false_ignores_links(tmp_path: Path) -> None:
    touch(tmp_path / "outside" / "o.png")
    root = tmp_path / "root"
    touch(root / "r.png")
    os.symlink(tmp_path / "outside", root / "linkdir")
    os.symlink(tmp_path / "missing.png", root / "broken.png")
    res = walk_images(root, follow_symlinks=False)
    assert names(res.items, root) == ["r.png"]
    assert res.problems == [] and res.complete


@posix_only
def test_broken_symlink_is_a_problem_not_an_item(tmp_path: Path) -> None:
    touch(tmp_path / "ok.jpg")
    os.symlink(tmp_path / "gone.jpg", tmp_path / "broken.jpg")
    os.symlink(tmp_path / "self.jpg", tmp_path / "self.jpg")  # resolves to itself (ELOOP)
    res = walk_images(tmp_path)
    assert names(res.items, tmp_path) == ["ok.jpg"]
    assert sorted((p.kind, os.path.basename(p.path)) for p in res.problems) == [
        ("broken-link", "broken.jpg"),
        ("broken-link", "self.jpg"),
    ]
    # The target might be on an unmounted disk: never sweep on such a walk.
    assert res.complete is False


def test_missing_root_is_incomplete(tmp_path: Path) -> None:
    res = walk_images(tmp_path / "not-mounted")
    assert res.items == [] and res.complete is False
    assert [p.kind for p in res.problems] == ["root-missing"]


def test_root_that_is_a_file_is_incomplete(tmp_path: Path) -> None:
    res = walk_images(touch(tmp_path / "a.jpg"))
    assert res.complete is False and [p.kind for p in res.problems] == ["root-not-dir"]


def _scandir_refusing(target: bytes):  # type: ignore[no-untyped-def]
    real_scandir = os.scandir

    def scandir(path):  # type: ignore[no-untyped-def]
        if os.fsencode(path) == target:
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    return scandir


def test_unreadable_subdir_makes_walk_incomplete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests may run as root, which ignores chmod: simulate the refusal instead.
    touch(tmp_path / "ok" / "a.jpg")
    touch(tmp_path / "locked" / "b.jpg")
    monkeypatch.setattr(discover.os, "scandir", _scandir_refusing(os.fsencode(tmp_path / "locked")))
    res = walk_images(tmp_path)
    assert names(res.items, tmp_path) == ["ok/a.jpg"]
    assert [(p.kind, os.path.basename(p.path)) for p in res.problems] == [
        ("unreadable-dir", "locked")
    ]
    assert "Permission denied" in res.problems[0].reason
    assert res.complete is False


def test_unreadable_root_is_incomplete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    touch(tmp_path / "a.jpg")
    monkeypatch.setattr(discover.os, "scandir", _scandir_refusing(os.fsencode(tmp_path)))
    res = walk_images(tmp_path)
    assert res.items == [] and res.complete is False


@pytest.mark.skipif(
    os.name != "posix" or os.geteuid() == 0,
    reason="root bypasses permissions; see the monkeypatched test",
)
def test_unreadable_subdir_real_permissions(tmp_path: Path) -> None:
    touch(tmp_path / "locked" / "b.jpg")
    (tmp_path / "locked").chmod(0)
    try:
        res = walk_images(tmp_path)
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert res.complete is False and res.problems[0].kind == "unreadable-dir"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs mkfifo")
def test_fifo_named_like_an_image_is_skipped(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.jpg")
    res = walk_images(tmp_path)
    assert res.items == []
    assert [p.kind for p in res.problems] == ["not-regular-file"]
    assert res.complete


def test_many_files_scale(tmp_path: Path) -> None:
    for d in range(20):
        sub = tmp_path / f"d{d:02d}"
        sub.mkdir()
        for i in range(100):
            (sub / f"{i:03d}.jpg").write_bytes(b"")
    res = walk_images(tmp_path)
    assert len(res.items) == 2000 and res.complete
    assert [i.path for i in res.items] == sorted(i.path for i in res.items)
