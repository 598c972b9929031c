"""docs/ARCHITECTURE.md names only files that exist, and its module tree covers the package."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "ARCHITECTURE.md"
ROOTS = ("mmsearch/", "indexer/", "tests/", "benchmarks/", "scripts/", "docs/", ".ci/")
#: A tree line: indentation, then a name ending in ``/`` (a folder) or a file extension.
TREE_ENTRY = re.compile(r"^( *)([\w.-]+(?:/|\.(?:py|json|md|sh|html|toml)))(?:\s|$)")


def tree_paths(text: str) -> list[str]:
    """Paths of the ```` ```tree ```` blocks: each entry relative to the folder above it."""
    paths: list[str] = []
    for block in re.findall(r"^```tree\n(.*?)^```", text, flags=re.S | re.M):
        stack: list[tuple[int, str]] = []  # (indent, folder path)
        for line in block.splitlines():
            match = TREE_ENTRY.match(line)
            if not match:
                continue  # a description carried over to the next line
            indent, name = len(match.group(1)), match.group(2)
            while stack and stack[-1][0] >= indent:
                stack.pop()
            path = (stack[-1][1] if stack else "") + name
            paths.append(path)
            if name.endswith("/"):
                stack.append((indent, path))
    return paths


def prose_paths(text: str) -> list[str]:
    """Repository paths written in backticks outside the tree (``mmsearch/engine/``...)."""
    outside = re.sub(r"^```tree\n.*?^```", "", text, flags=re.S | re.M)
    return [p for p in re.findall(r"`([^`\s]+)`", outside) if p.startswith(ROOTS)]


def test_tree_parser_follows_indentation() -> None:
    text = "```tree\nmmsearch/    lib\n  ann/        x\n    index.py  y\n              more words\n  uris.py\nindexer/\n```\n"
    assert tree_paths(text) == [
        "mmsearch/",
        "mmsearch/ann/",
        "mmsearch/ann/index.py",
        "mmsearch/uris.py",
        "indexer/",
    ]


def test_every_path_the_architecture_names_exists() -> None:
    text = DOC.read_text(encoding="utf-8")
    named = tree_paths(text) + prose_paths(text)
    assert len(named) > 50, "the module tree is missing (a ```tree block)"
    missing = sorted({p for p in named if not (REPO / p.rstrip("/")).exists()})
    assert missing == [], f"docs/ARCHITECTURE.md names paths that do not exist: {missing}"


def test_the_tree_lists_every_package_and_top_level_module() -> None:
    """Each layer's members (the children of mmsearch/, as import-linter's layers list them)."""
    listed = set(tree_paths(DOC.read_text(encoding="utf-8")))
    children = {
        str(p.relative_to(REPO)) + ("/" if p.is_dir() else "")
        for p in (REPO / "mmsearch").iterdir()
        if (p.is_dir() and (p / "__init__.py").exists())
        or (p.suffix == ".py" and p.name != "__init__.py")
    } | {"indexer/"}
    unlisted = sorted(children - listed)
    assert unlisted == [], f"missing from docs/ARCHITECTURE.md's tree: {unlisted}"
