"""The README's examples run as written: Quick start, Install, Command line, Querying.

Every fenced block of README.md is named in ``tests/readme_doc.py``: run by a test
(``COVERAGE``) or not run for a stated reason (``NOT_RUN_BLOCKS``/``NOT_RUN_LINES``),
and the guard here fails when a block is neither. Command lines are read from the
README, never copied; the few replacements (a smaller catalog, a free port, ...) are
the explicit ``SUBSTITUTIONS`` table. The later sections are run by
``tests/test_readme_sections.py``, the Python example by ``tests/test_python_example.py``.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import tomllib

from tests.readme_doc import (
    COVERAGE,
    NOT_RUN_BLOCKS,
    NOT_RUN_LINES,
    README,
    REPO,
    SUBSTITUTIONS,
    Ran,
    block,
    cli_env,
    commands,
    readme_blocks,
    run_commands,
    run_lines,
    substitute,
)

EXIT_NO_RESULTS = 3  # mmsearch.cli.EXIT_NO_RESULTS, as the README documents it


# ---------------------------------------------------------------------------- the guard


def uncovered(text: str) -> list[str]:
    """Blocks of ``text`` that no test runs and no allowlist names."""
    return [
        b.key for b in readme_blocks(text) if b.key not in COVERAGE and b.key not in NOT_RUN_BLOCKS
    ]


def test_every_readme_block_is_run_or_listed_with_a_reason():
    assert uncovered(README.read_text(encoding="utf-8")) == []
    keys = {b.key for b in readme_blocks()}
    # The tables name only blocks and lines that exist, and a block is run or listed, not both.
    assert set(COVERAGE) <= keys and set(NOT_RUN_BLOCKS) <= keys and set(SUBSTITUTIONS) <= keys
    assert not set(COVERAGE) & set(NOT_RUN_BLOCKS)
    for (key, line), reason in NOT_RUN_LINES.items():
        assert line in [c.source for c in commands(block(key))], (key, line)
        assert reason and key in COVERAGE
    for key, table in SUBSTITUTIONS.items():
        source = " ".join(c.source for c in run_lines(key))
        for old, _new, reason in table:
            assert old in source and reason, (key, old)
    for key, node in COVERAGE.items():
        path, name = node.split("::")
        assert f"def {name}(" in (REPO / path).read_text(encoding="utf-8"), (key, node)


def test_the_guard_flags_a_block_no_test_runs():
    text = README.read_text(encoding="utf-8")
    added = text + "\n## Brand new\n\n```bash\nmmsearch query 'x' --index ./idx\n```\n"
    assert uncovered(added) == ["Brand new#1"]
    nested = text.replace("## Deploying\n", "## Deploying\n\n  ```\n  extra\n  ```\n", 1)
    assert uncovered(nested) == ["Deploying#4"]  # a fourth block under Deploying


# ------------------------------------------------------------------ Quick start, Install


def _repo_copy_with_installed_venv(dest: Path) -> Path:
    """scripts/ + pyproject.toml, and a .venv that setup.sh finds installed (as on a second run)."""
    root = dest / "repo"
    (root / "scripts").mkdir(parents=True)
    for name in ("demo.sh", "setup.sh", "demo-requirements.txt"):
        shutil.copy(REPO / "scripts" / name, root / "scripts" / name)
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    venv_bin = root / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(sys.executable)
    (venv_bin / "activate").write_text(f'export PATH="{Path(sys.executable).parent}:$PATH"\n')
    digest = subprocess.run(  # the stamp setup.sh keys its installs on
        "cat pyproject.toml scripts/demo-requirements.txt | sha256sum",
        shell=True,
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[0]
    (root / ".venv" / ".mmsearch-install-stamp").write_text(f"{digest} dev\n")
    return root


def test_quick_start_demo(tmp_path):
    key = "Quick start#1"
    root = _repo_copy_with_installed_venv(tmp_path)
    lines = run_lines(key)
    assert [c.argv[:2] for c in lines] == [["bash", "scripts/demo.sh"]]
    done = subprocess.run(
        substitute(lines[0], SUBSTITUTIONS[key]),
        cwd=root,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"added\s+20\b", done.stdout), done.stdout  # 10 images + 10 captions
    shown = set()  # the headings of the queries it ran: text→image, image→image, image→text
    for query, kind in re.findall(r"─ (.+?) → (image|text) ─", done.stdout):
        shown.add(("image" if re.search(r"\.(jpg|png) \(", query) else "text", kind))
    assert shown == {("text", "image"), ("image", "image"), ("image", "text")}, shown
    assert (root / "demo-out" / "results.html").is_file()  # where the README says it is
    assert "demo-out/results.html" in done.stdout
    assert "Location" not in done.stderr and "setuptools" not in done.stderr  # installed once


def test_install_block_matches_the_package():
    """The Install block needs PyPI; what it names must match the package it would install."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = {d.split("==")[0]: d for d in project["dependencies"] if "==" in d}
    install = commands(block("Install#1"))
    pip_lines = [c.argv for c in install if c.argv[:2] == ["pip", "install"]]
    torch_line = next(a for a in pip_lines if any(x.startswith("torch==") for x in a))
    assert sorted(torch_line[2:]) == sorted(pins.values())  # same pins as the package
    assert ["pip", "install", "-e", "."] in pip_lines
    extras = re.findall(r"\[(\w+)\]", block("Install#1").text)
    assert extras and set(extras) <= set(project["optional-dependencies"]), extras
    rerank_pip = [k for k in NOT_RUN_LINES if k[1].startswith("pip install")]
    for _key, line in rerank_pip:
        assert set(re.findall(r"mmsearch\[(\w+)\]", line)) <= set(project["optional-dependencies"])
    setup = (REPO / "scripts" / "setup.sh").read_text(encoding="utf-8")
    assert all(pin in setup for pin in pins.values())  # the scripts install the same torch


# ---------------------------------------------------------------------- Command line


def _rows(ran: Ran) -> list[str]:
    return [ran.table_row(i) for i in range(1, 200) if re.search(rf"^│ *{i} *│", ran.stdout, re.M)]


def test_command_line_block(readme_cli):
    key = "Command line#1"
    root = readme_cli.root
    ran = readme_cli.ran
    assert [r.argv[:2] for r in ran] == [c.argv[:2] for c in run_lines(key)]  # every line ran
    catalog = {
        json.loads(line)["file"]: json.loads(line)
        for line in (root / "catalog" / "catalog.jsonl").read_text().splitlines()
    }
    for r in ran:
        args, line = r.argv[1:], r.line
        if args[0] == "serve":
            assert r.code in (0, -signal.SIGTERM), (line, r.stderr[-2000:])
            assert len(readme_cli.search["results"]) == 3
            assert "Traceback" not in r.stderr
            continue
        if args[0] == "query" and "mauve" in line:
            assert r.code == EXIT_NO_RESULTS, (line, r.stderr)
            assert r.stderr.startswith("no results (no item matches the filters"), r.stderr
            continue
        if args[0] == "index" and "--model" not in args:  # the default model: not cached here
            assert r.code == 2, (line, r.stderr)
            assert r.stderr.count("\n") == 1 and "not in the local Hugging Face cache" in r.stderr
            continue
        assert r.code == 0, (line, r.stdout[-2000:], r.stderr[-2000:])
        if args[0] == "sample-data":
            assert "wrote 60 items" in r.stdout
        elif args[0] == "index" and "-q" in args:
            assert r.stdout == r.stderr == ""  # --quiet prints only problems
            assert (root / "shop").is_dir()
        elif args[0] == "index":
            assert re.search(r"added\s+120\b", r.stdout), r.stdout  # 60 images + 60 captions
        elif args[0] == "query" and "--json" in args:
            hits = json.loads(r.stdout)
            assert [h["rank"] for h in hits] == list(range(1, 11))
            shown = re.search(r"JSON: (.*)", block(key).text).group(1).split(", ")
            assert all(set(shown) <= set(h) for h in hits), shown
            assert {h["kind"] for h in hits[:4]} == {"image", "text"}  # kinds interleave
        elif args[0] == "query" and "-f" in args:
            out = r.stdout.splitlines()
            assert len(out) == 10
            assert all(
                Path(p).is_file() if p.endswith((".jpg", ".png")) else p.startswith("a ")
                for p in out
            ), out  # an image's path, a caption's text
        elif args[0] == "query" and "-p" in args:
            assert "previews need kitty, iTerm2 or WezTerm" in r.stderr  # the plain fallback
            assert all(" image " in row for row in _rows(r)) and len(_rows(r)) == 10
        elif args[0] == "query" and "--where" in args:
            for row in _rows(r):
                assert float(re.search(r"price=([\d.]+)", row).group(1)) < 20, row
                assert re.search(r"colour=(red|blue)\b", row), row
        elif args[0] == "query" and "--kind" in args and "text" in args:
            image = next(a for a in args if a.endswith(".jpg"))
            item = catalog[str(Path(image).relative_to("catalog"))]
            rows = _rows(r)
            assert rows and all(" text " in row for row in rows)
            assert item["shape"] in rows[0], (item, rows[0])  # image → its shape's captions
        elif args[0] == "query":
            top = "--top" in args and int(args[args.index("--top") + 1])
            assert len(_rows(r)) == (top or 10), r.stdout
            assert any("red" in row for row in _rows(r)), r.stdout  # captions show their text
        elif args[0] == "remove":
            assert re.search(r"removed 15 item\(s\) under catalog/images/tiles", r.stdout)
        elif args[0] == "info":
            for label in ("rows", "model", "ann[image]", "source", "disk", "last run"):
                assert re.search(rf"^ {re.escape(label)}", r.stdout, re.M), label
        elif args[0] == "build-index":
            assert re.search(r"^image: rebuilt: flat, \d+ vectors", r.stdout, re.M), r.stdout
            assert re.search(r"^text: rebuilt: flat, \d+ vectors", r.stdout, re.M), r.stdout
        elif args[0] == "check":
            assert "0 changed since indexing" in r.stdout
    assert not readme_cli.default_index_left  # the failed default-model runs left nothing


# --------------------------------------------------------------------------- Querying


def test_querying_block(readme_cli):
    key = "Querying#1"
    lines = run_lines(key)
    ran = run_commands([substitute(c, SUBSTITUTIONS[key]) for c in lines], readme_cli.root)
    assert len(ran) == len(lines) >= 9
    for r in ran:
        args = r.argv[1:]
        if "--cutoff" in args:
            assert r.code == EXIT_NO_RESULTS, (r.line, r.stderr)
            assert r.stderr.startswith("no results (no good match"), r.stderr
            continue
        assert r.code == 0, (r.line, r.stderr[-2000:])
        rows = _rows(r)
        if args[1].startswith("SKU-"):
            assert all(args[1] in row for row in rows[:2]), rows  # that SKU's items first
        elif "lexical" in args:  # a word of a product title only
            assert rows and all("sku=" in row for row in rows)
        elif "--offset" in args:
            ranks = re.findall(r"^│ *(\d+) *│", r.stdout, re.M)
            assert ranks == [str(i) for i in range(11, 21)], ranks  # page 2
        elif "--group-by" in args:
            skus = [re.search(r"sku=(SKU-\d+)", row) for row in rows]
            found = [m.group(1) for m in skus if m]
            assert len(found) == len(set(found)) > 1, rows  # one item per SKU
        elif "--literal" in args:  # one text term, no product of that name: the nearest
            assert len(rows) == 10, r.stdout
        else:  # "red circle" queries: red circles among the captions shown
            assert len(rows) == 10 and any("red circle" in row for row in rows), r.stdout


def test_querying_python_block(readme_cli, monkeypatch):
    import mmsearch

    monkeypatch.chdir(readme_cli.root)
    code = block("Querying#2").text
    namespace = {"idx": mmsearch.open("./idx")}  # what the README built just above
    exec(compile(code, "README.md#Querying#2", "exec"), namespace)
    hits = namespace["hits"]
    stages = re.search(r"hits\.timings .*per stage: (.*)", code).group(1).split(", ")
    assert set(hits.timings) == set(stages), (hits.timings, stages)
    assert hits.reason is None or isinstance(hits.reason, str)
    table = hits.to_arrow()
    assert table.num_rows == len(hits.to_list()) == len(hits.to_pandas())
    skus = [h.metadata.get("sku") for h in hits]
    assert len(skus) == len(set(skus))  # .group_by("sku")
    for hit in hits:  # .where(price__lt=20, colour=["red", "blue"])
        assert hit.metadata["price"] < 20 and hit.metadata["colour"] in ("red", "blue")
