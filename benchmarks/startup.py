"""One-shot start-up: wall time and peak RSS of `mmsearch --help`, `info` and `query`,
side by side with `rclip -n` when rclip is installed.

    HF_HUB_OFFLINE=1 python benchmarks/startup.py --rounds 3 [--baseline /other/python] [--rclip PATH]

Builds (once, cached in --work) a ViT-B-32 index (random weights placed by
offline_weights.py) over --n (300) generated 800×600 JPEGs, and the demo index (the
400-item sample catalog: images, captions and metadata, with mmsearch-tiny, as
``mmsearch demo`` builds it), then runs each command in a fresh process, interleaved
round by round so machine noise hits every variant alike. Reports the median wall
time and peak RSS (from wait4) per variant, and the ratios against ``rclip -n`` on
the same photos (rclip found on PATH, ``$RCLIP`` or ``--rclip``; ``--no-rclip`` skips
it), else against the first query. Both indexes carry a full-text index, so a plain
query runs hybrid. ``--baseline`` runs the same queries with another interpreter
(e.g. an older checkout's venv).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_measured(
    cmd: list[str], env: dict[str, str], cwd: Path | None = None, stdout: Any = None
) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MiB, exit status) of one child process (stdout: discarded,
    or to the file given)."""
    import tempfile

    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: a chatty child never blocks
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdout=stdout if stdout is not None else subprocess.DEVNULL,
            stderr=errors,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        err = errors.read().decode(errors="replace")
    if proc.returncode != 0:
        print(
            f"  ! {' '.join(cmd[:6])} exited {proc.returncode}: {err.strip()[-300:]}",
            file=sys.stderr,
        )
    return wall, usage.ru_maxrss / 1024.0, proc.returncode


def compile_package(python: str, cwd: Path | None = None) -> str:
    """Byte-compiles the mmsearch package ``python`` imports (run from ``cwd``); its path.

    A wheel install is byte-compiled by pip, as rclip's is; an editable checkout run with
    ``PYTHONDONTWRITEBYTECODE=1`` (set on some machines and CI images) compiles every
    module it imports from source on every run, which is not what a user's install pays.
    ``compileall`` writes the bytecode whatever that variable says.
    """
    where = subprocess.run(
        [python, "-c", "import mmsearch, os; print(os.path.dirname(mmsearch.__file__))"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return compile_tree(where, python)


def compile_tree(folder: str | Path, python: str = sys.executable) -> str:
    """Byte-compiles the modules below ``folder`` with ``python``; the folder."""
    subprocess.run(
        [python, "-m", "compileall", "-q", str(folder)], stdout=subprocess.DEVNULL, check=True
    )
    return str(folder)


def make_photos(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> Path:
    """n smooth photo-like JPEGs (gradients and shapes) of ``size``; reused when present."""
    import numpy as np
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.jpg"))) >= n:
        return folder
    rng = np.random.default_rng(seed)
    w, h = size
    for i in range(n):
        grad = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * rng.uniform(0.3, 1.0, 3)
        img = Image.fromarray(np.broadcast_to(grad, (h, w, 3)).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(5):
            x, y = int(rng.integers(0, w - w // 4)), int(rng.integers(0, h - h // 4))
            draw.rectangle(
                (x, y, x + w // 4, y + h // 4), fill=tuple(int(c) for c in rng.integers(0, 256, 3))
            )
        img.save(folder / f"photo-{i:05d}.jpg", quality=88)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--work", type=Path, default=Path("/tmp/mmsearch-startup-bench"))
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--query", default="floral shirt")
    ap.add_argument(
        "--baseline", default=None, help="another python whose mmsearch to compare against"
    )
    ap.add_argument(
        "--rclip", default=None, help="rclip executable (default: found when installed)"
    )
    ap.add_argument("--no-rclip", action="store_true", help="do not run rclip")
    ap.add_argument(
        "--rclip-models", type=Path, default=Path("/tmp/rclip-models"), help="see rclip_offline.py"
    )
    args = ap.parse_args()

    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    py = sys.executable
    photos = make_photos(args.work / "photos", args.n, (800, 600))
    vit_index = args.work / "index-vit"
    if not (vit_index / "snapshot.json").exists():
        print(f"indexing {args.n} photos with ViT-B-32 (random weights) ...", file=sys.stderr)
        subprocess.run(
            [
                py,
                "-m",
                "mmsearch.cli",
                "index",
                str(photos),
                "-i",
                str(vit_index),
                "--backend",
                "onnx",
            ],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    mm = [py, "-m", "mmsearch.cli"]
    demo_index = args.work / "index-demo"
    if not (demo_index / "snapshot.json").exists():
        print("indexing the demo catalog (mmsearch-tiny, 400 items) ...", file=sys.stderr)
        catalog = args.work / "catalog"
        subprocess.run(
            [*mm, "sample-data", str(catalog)], env=env, check=True, stdout=subprocess.DEVNULL
        )
        jsonl = str(catalog / "catalog.jsonl")
        subprocess.run(
            [*mm, "index", str(catalog), jsonl, "--metadata", jsonl, "-i", str(demo_index)]
            + ["--model", "mmsearch-tiny", "--backend", "onnx", "--text-column", "caption"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    q = [args.query, "-i", str(vit_index), "-k", "10"]
    variants: dict[str, tuple[list[str], Path | None]] = {
        "query onnx (ViT-B-32)": ([*mm, "query", *q, "--backend", "onnx"], None),
        # vector search only, as rclip does (the default is hybrid when the index has
        # a full-text index, which needs LanceDB)
        "query onnx vector (ViT-B-32)": (
            [*mm, "query", *q, "--backend", "onnx", "--mode", "vector"],
            None,
        ),
        "query onnx (demo, tiny)": (
            [*mm, "query", args.query, "-i", str(demo_index), "-k", "10", "--backend", "onnx"],
            None,
        ),
        "query onnx vector (demo)": (
            [*mm, "query", args.query, "-i", str(demo_index), "-k", "10", "--backend", "onnx"]
            + ["--mode", "vector"],
            None,
        ),
        "query torch (ViT-B-32)": ([*mm, "query", *q, "--backend", "torch"], None),
        "info": ([*mm, "info", "-i", str(vit_index)], None),
        "--help": ([*mm, "--help"], None),
        # floors of --help: the interpreter alone, and the CLI framework's own imports
        "floor: python -c pass": ([py, "-c", "pass"], None),
        "floor: import typer, rich": (
            [py, "-c", "import typer, typer.rich_utils, rich.console"],
            None,
        ),
    }
    if args.baseline:
        # run from outside this checkout, so that `-m` finds the baseline's own mmsearch
        variants["baseline query (torch)"] = (
            [args.baseline, "-m", "mmsearch.cli", "query", *q],
            args.work,
        )
    from benchmarks.rclip_offline import find_rclip, fresh_datadir, prepare

    rclip = None if args.no_rclip else find_rclip(args.rclip)
    if rclip:
        prepare(args.rclip_models)
        env["RCLIP_DATADIR"] = str(fresh_datadir(args.rclip_models, args.work))
        # rclip indexes the working directory once here; -n then skips re-indexing
        subprocess.run(
            [rclip, "-f", "x"], cwd=photos, env=env, stdout=subprocess.DEVNULL, check=True
        )
        variants["rclip -n"] = ([rclip, "-n", "-f", args.query], photos)
    compiled = [compile_package(py)]
    if args.baseline:
        compiled.append(compile_package(args.baseline, cwd=args.work))
    print(f"byte-compiled (as a wheel install is): {', '.join(compiled)}")
    for cmd, cwd in variants.values():  # warm the page cache and the ONNX export once
        run_measured(cmd, env, cwd)
    print(f"load average at the start: {os.getloadavg()}")
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, (cmd, cwd) in variants.items():
            wall, rss, _ = run_measured(cmd, env, cwd)
            results[name].append((wall, rss))
    against = "rclip -n" if "rclip -n" in results else "query onnx (ViT-B-32)"
    first = statistics.median(w for w, _ in results[against])
    print(
        f"{'variant':30s} {'wall s (median)':>16s} {'peak RSS MiB':>13s} {'wall / ' + against:>22s}"
    )
    for name, rows in results.items():
        wall = statistics.median(w for w, _ in rows)
        rss = statistics.median(r for _, r in rows)
        print(f"{name:30s} {wall:16.2f} {rss:13.0f} {wall / first:22.2f}")
    print_goals(results)

    print(f"load average at the end: {os.getloadavg()}")


def print_goals(results: dict[str, list[tuple[float, float]]]) -> None:
    """The issue's one-shot goals against this run's medians (default mode: hybrid)."""

    def median(name: str, pos: int) -> float:
        return statistics.median(row[pos] for row in results[name])

    verdicts = [
        ("default-mode query, demo index <= 1.0 s", median("query onnx (demo, tiny)", 0), 1.0, "s"),
        (
            "default-mode query, demo index <= 400 MB",
            median("query onnx (demo, tiny)", 1),
            400,
            "MiB",
        ),
        ("--help <= 0.3 s", median("--help", 0), 0.3, "s"),
    ]
    if "rclip -n" in results:
        ratio = median("query onnx (ViT-B-32)", 0) / median("rclip -n", 0)
        verdicts.insert(0, ("default-mode query <= 0.7x rclip -n", ratio, 0.7, "x"))
    for goal, value, limit, unit in verdicts:
        print(f"goal: {goal:42s} {value:8.2f} {unit:3s}  {'met' if value <= limit else 'MISSED'}")


if __name__ == "__main__":
    main()
