"""The README's fenced code blocks, and running their ``mmsearch`` command lines as written.

Blocks are named ``"<section heading>#<n>"`` (the n-th block under a ``##`` heading), so
a test names the block it runs and a guard can tell when a block is run by nobody.
Commands run through the installed CLI in a subprocess: several in one process
(:func:`run_commands`, the ``mmsearch`` Typer app called once per command line, as the
console script does) or one long-running ``mmsearch serve`` (:func:`served`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BATCH_DRIVER = Path(__file__).with_name("readme_cli_batch.py")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of the README."""

    key: str  # "<section>#<n>"
    lang: str  # the fence's info string ("" when none)
    text: str  # the block's lines, dedented to the fence
    line: int  # 1-based line of the opening fence


@dataclass(frozen=True)
class Command:
    """One command line of a shell block: continuation lines joined, comment dropped."""

    source: str  # the words as a shell line (continuations joined, comment dropped)
    argv: list[str]
    raw: str  # the line as written (continuations joined)


@dataclass
class Ran:
    """What one command line did."""

    argv: list[str]
    code: int
    stdout: str
    stderr: str

    @property
    def line(self) -> str:
        return shlex.join(self.argv)

    def table_row(self, rank: int) -> str:
        """The text of one row of a results table (its wrapped lines joined)."""
        rows = re.split(r"^│ *(\d+) *│", self.stdout, flags=re.M)
        found = dict(zip(rows[1::2], rows[2::2], strict=False))
        assert str(rank) in found, (self.line, self.stdout)
        return " ".join(found[str(rank)].split())


def readme_blocks(text: str | None = None) -> list[Block]:
    """Every fenced block of the README (or of ``text``), in order."""
    lines = (README.read_text(encoding="utf-8") if text is None else text).splitlines()
    blocks: list[Block] = []
    section, count, i = "", 0, 0
    while i < len(lines):
        if lines[i].startswith("## "):
            section, count = lines[i][3:].strip(), 0
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, body, start = opening["indent"], [], i
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        assert i < len(lines), f"README line {start + 1}: unclosed code block"
        count += 1
        blocks.append(Block(f"{section}#{count}", opening["lang"], "\n".join(body), start + 1))
        i += 1
    return blocks


def block(key: str) -> Block:
    """The block named ``key``."""
    found = [b for b in readme_blocks() if b.key == key]
    assert found, f"README has no code block {key!r}"
    return found[0]


def commands(blk: Block) -> list[Command]:
    """The command lines of a shell block."""
    joined = re.sub(r"\\\n\s*", " ", blk.text)
    out = []
    for raw in joined.splitlines():
        argv = shlex.split(raw, comments=True)
        if argv:
            out.append(Command(shlex.join(argv), argv, raw.strip()))
    return out


def substitute(cmd: Command, table: Sequence[tuple[str, str, str]], **values: Any) -> list[str]:
    """``cmd``'s argv after the (old, new, reason) replacements that apply to its line.

    ``new`` may name ``{values}`` (a free port, a cluster address).
    """
    line = cmd.source
    for old, new, _reason in table:
        line = line.replace(old, new.format(**values))
    return shlex.split(line)


def cli_env(**extra: str) -> dict[str, str]:
    """The environment the commands run in: offline, no tokenizer threads, wide tables."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        COLUMNS="200",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    env.update(extra)
    return env


def run_commands(
    argvs: Sequence[Sequence[str]], cwd: Path, env: Mapping[str, str] | None = None
) -> list[Ran]:
    """Runs ``mmsearch`` command lines in order, in one fresh process (one interpreter start)."""
    assert all(argv[0] == "mmsearch" for argv in argvs), argvs
    spec = cwd / ".readme-commands.json"
    results = cwd / ".readme-results.json"
    spec.write_text(json.dumps([list(a) for a in argvs]), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(BATCH_DRIVER), str(spec), str(results)],
        cwd=cwd,
        env=dict(env or cli_env()),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    ran = [Ran(**r) for r in json.loads(results.read_text(encoding="utf-8"))]
    spec.unlink()
    results.unlink()
    return ran


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(
    url: str, headers: Mapping[str, str] | None = None, timeout: float = 30
) -> tuple[int, dict[str, str], bytes]:
    """GET ``url``: (status, headers with lower-case names, body), for error statuses too."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


@contextmanager
def served(
    argv: Sequence[str],
    port: int,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    token: str | None = None,
) -> Iterator[subprocess.Popen[str]]:
    """Starts ``mmsearch serve ...`` (the console script), waits for /readyz, stops it with SIGTERM.

    The process's exit status and stderr (the access log) are on the yielded Popen
    once the block ends.
    """
    exe = Path(sys.executable).with_name("mmsearch")
    proc = subprocess.Popen(
        [str(exe), *argv[1:]],
        cwd=cwd,
        env=dict(env or cli_env()),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                status, _, _ = http(f"http://127.0.0.1:{port}/readyz", auth, timeout=5)
                if status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None:
                raise AssertionError(f"serve exited {proc.returncode}: {proc.stderr.read()}")
            assert time.monotonic() < deadline, "serve was not ready in 300 s"
            time.sleep(0.3)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# --------------------------------------------------------------------------------------
# What the README takes from its reader, and the Command line block run as written.

#: Replacements applied to a block's command lines before they run: (old, new, why).
#: Everything else runs exactly as the README shows it.
SUBSTITUTIONS: dict[str, list[tuple[str, str, str]]] = {
    "Quick start#1": [
        ("bash scripts/demo.sh", "bash scripts/demo.sh demo-out --n 10", "a 10-item catalog"),
    ],
    "Command line#1": [
        ("--n 400", "--n 60", "a 60-item catalog keeps the test fast"),
        ("--port 8000", "--port {port}", "a free port"),
    ],
    "Querying#1": [
        ("SKU-00042", "SKU-00012", "the 60-item catalog has about 20 SKUs"),
    ],
    "Measure and adapt: eval, finetune, label#1": [
        (
            "--model ViT-B-32 --pretrained laion2b_s34b_b79k",
            "--model mmsearch-tiny",
            "no model hub",
        ),
        ("--model ViT-B-32 --pretrained", "--model mmsearch-tiny --pretrained", "no model hub"),
        ("--epochs 5", "--epochs 1", "one epoch is enough to write a checkpoint"),
    ],
    "Measure and adapt: eval, finetune, label#2": [
        (
            "--model ViT-B-32 --pretrained laion2b_s34b_b79k",
            "--model mmsearch-tiny",
            "no model hub",
        ),
        ("/data/", "./data/", "generated Karpathy-format collections, not COCO/Flickr30k"),
    ],
    "Re-ranking#1": [
        ("--n 500", "--n 40", "a 40-scene catalog keeps the test fast"),
    ],
    "Deploying#1": [
        ("/srv/idx", "./idx", "the index of the Command line block"),
        ("--port 8000", "--port {port}", "a free port"),
    ],
    "From a backend#2": [
        (
            "mmsearch index feed.csv",
            "mmsearch index feed.csv --allow-private-urls",
            "the test serves the feed's images from 127.0.0.1",
        ),
    ],
    "From a backend#3": [
        (
            "--port 8000",
            "--port {port} --allow-private-urls",
            "a free port; the test serves the record's image from 127.0.0.1",
        ),
        ("127.0.0.1:8000", "127.0.0.1:{port}", "the free port"),
        ("https://cdn.example.com/3.jpg", "{image_url}", "an image server on 127.0.0.1"),
    ],
    "Scale out: Ray, object storage, large indexes#1": [
        ("/shared/photos", "./photos", "the reader's folder of the Command line block"),
        ("--ray auto", "--ray local", "a local cluster stands in for the one `ray start` runs"),
        (
            "mmsearch index",
            "mmsearch index --model mmsearch-tiny",
            "the default model needs the hub",
        ),
    ],
}


#: Each README block and the test that runs it (a block no test runs fails the guard).
COVERAGE: dict[str, str] = {
    "Quick start#1": "tests/test_readme.py::test_quick_start_demo",
    "Command line#1": "tests/test_readme.py::test_command_line_block",
    "Querying#1": "tests/test_readme.py::test_querying_block",
    "Querying#2": "tests/test_readme.py::test_querying_python_block",
    "Measure and adapt: eval, finetune, label#1": "tests/test_readme_sections.py::test_measure_block",
    "Measure and adapt: eval, finetune, label#2": (
        "tests/test_readme_sections.py::test_captioned_benchmark_block"
    ),
    "Re-ranking#1": "tests/test_readme_sections.py::test_rerank_block",
    "Deploying#1": "tests/test_readme_sections.py::test_deploying_block",
    "Deploying#2": "tests/test_readme_sections.py::test_proxy_snippets_match_the_serve_command",
    "Deploying#3": "tests/test_readme_sections.py::test_proxy_snippets_match_the_serve_command",
    "Scale out: Ray, object storage, large indexes#1": (
        "tests/test_readme_sections.py::test_scale_out_block"
    ),
    "Python#1": "tests/test_python_example.py::test_unguarded_script_indexes_every_good_image",
    "From a backend#1": "tests/test_readme_backend.py::test_backend_python_block",
    "From a backend#2": "tests/test_readme_backend.py::test_backend_feed_block",
    "From a backend#3": "tests/test_readme_backend.py::test_backend_http_block",
}

#: Blocks no test runs, and why; a test still checks what can be checked without running them.
NOT_RUN_BLOCKS: dict[str, str] = {
    "Install#1": "installs from PyPI (network); CI's fresh clone installs the same way through "
    "scripts/setup.sh, and test_install_block_matches_the_package checks the pins and extras",
}

#: Lines of run blocks that do not run, and why.
NOT_RUN_LINES: dict[tuple[str, str], str] = {
    ("Quick start#1", "bash scripts/test.sh"): "runs this whole suite (CI's entry point)",
    ("Re-ranking#1", "pip install 'mmsearch[rerank]'"): "installs from PyPI (network); the "
    "extra is checked to exist by test_install_block_matches_the_package",
    ("Scale out: Ray, object storage, large indexes#1", "ray start --head"): "replaced by the "
    "local cluster of `--ray local`: `ray start` leaves daemons, and `ray stop` would end every "
    "Ray cluster of the machine (`--ray auto` could also join a cluster of another user)",
}


def run_lines(key: str) -> list[Command]:
    """The command lines of block ``key`` that run (all but :data:`NOT_RUN_LINES`)."""
    return [c for c in commands(block(key)) if (key, c.source) not in NOT_RUN_LINES]


def make_reader_files(root: Path) -> None:
    """What the README takes from its reader: ``./photos`` (3 images), ``./ref.png``, ``./ref.jpg``."""
    from mmsearch.datasets.synthetic import generate_catalog

    info = generate_catalog(root / ".reader", n=8, seed=3)
    files = [root / ".reader" / row["file"] for row in info.rows]
    (root / "photos").mkdir()
    for src in [f for f in files if f.suffix == ".jpg"][:3]:
        shutil.copy(src, root / "photos" / src.name)
    shutil.copy(next(f for f in files if f.suffix == ".png"), root / "ref.png")
    shutil.copy(next(f for f in files if f.suffix == ".jpg"), root / "ref.jpg")


@dataclass
class CliBlockRun:
    """The Command line block, run in ``root``: what each command did, and the server's answer."""

    root: Path
    ran: list[Ran]
    search: dict[str, Any]  # the served /api/search answer
    default_index_left: bool  # whether ./.mmsearch existed after the block


def run_command_line_block(root: Path) -> CliBlockRun:
    """Runs every command of the Command line block in order; ``serve`` as its own process."""
    key = "Command line#1"
    make_reader_files(root)
    env = cli_env(HF_HUB_CACHE=str(root / "empty-hf-cache"))  # the default model is not cached
    port = free_port()
    ran: list[Ran] = []
    batch: list[list[str]] = []
    search: dict[str, Any] = {}
    for cmd in run_lines(key):
        argv = substitute(cmd, SUBSTITUTIONS[key], port=port)
        if argv[1] != "serve":
            batch.append(argv)
            continue
        ran += run_commands(batch, root, env)
        batch = []
        with served(argv, port, root, env) as proc:
            status, _, body = http(f"http://127.0.0.1:{port}/api/search?q=red+circle&k=3")
            assert status == 200, body
            search = json.loads(body)
        ran.append(Ran(argv, proc.returncode, "", proc.stderr.read() if proc.stderr else ""))
    ran += run_commands(batch, root, env)
    return CliBlockRun(root, ran, search, (root / ".mmsearch").exists())
