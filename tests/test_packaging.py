"""The distribution installs one top-level import name, ``mmsearch``.

The repo keeps ``indexer/`` at its top, but it installs as ``mmsearch.indexer``, so no
generic module named ``indexer`` lands in a user's site-packages.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _package_folders() -> set[str]:
    found = set()
    for top, dotted in (("mmsearch", "mmsearch"), ("indexer", "mmsearch.indexer")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top)
            found.add(".".join([dotted, *rel.parts]))
    return found


def test_pyproject_names_every_package_under_the_mmsearch_namespace() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    setuptools = config["tool"]["setuptools"]
    assert set(setuptools["packages"]) == _package_folders()
    assert all(name.split(".")[0] == "mmsearch" for name in setuptools["packages"])
    assert setuptools["package-dir"] == {"mmsearch.indexer": "indexer"}


def test_no_top_level_indexer_module_is_importable(tmp_path: Path) -> None:
    code = (
        "import importlib.util, mmsearch.indexer.pipeline as p; "
        "print(importlib.util.find_spec('indexer') is None, p.__name__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "mmsearch.indexer.pipeline"]
