"""Long SIGKILL run: ≥ 200 kill / re-run / verify trials on a 2,000-item collection.

    python benchmarks/kill.py --trials 200 --n 2000 --encoder tiny
    python benchmarks/kill.py --trials 50 --n 2000 --encoder tiny --incremental

``--incremental``: each trial starts from an IVF-PQ index of 90% of the collection, so
the killed run is an incremental ANN update (new refine segment + tombstones).

Prints one JSON line per trial and a final summary (trials run, failures found).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmsearch.datasets.synthetic import generate_catalog  # noqa: E402
from tests.kill_harness import run_trials  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--encoder", choices=["fake", "tiny"], default="tiny")
    ap.add_argument("--incremental", action="store_true", help="kill incremental ANN updates")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mmsearch-kill-"))
    cat = generate_catalog(work / "collection", n=args.n, seed=args.seed + 100)
    results = run_trials(
        cat.root,
        work / "runs",
        trials=args.trials,
        seed=args.seed,
        encoder=args.encoder,
        log=lambda line: print(line, flush=True),
        incremental=args.incremental,
    )
    failed = [r for r in results if r.problems]
    partial = sum(1 for r in results if 0 < r.rows_after_kill < args.n)
    # killed after the table commit but before the snapshot: inside the ANN update
    mid_ann = sum(1 for r in results if r.rows_after_kill == args.n and not r.published_before_kill)
    print(
        json.dumps(
            {
                "trials": len(results),
                "failures": len(failed),
                "killed_mid_table": partial,
                "killed_mid_ann_update": mid_ann,
                "encoder": args.encoder,
                "n": args.n,
                "incremental": args.incremental,
            }
        )
    )


if __name__ == "__main__":
    main()
