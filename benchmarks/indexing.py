"""Indexing throughput: clean collection vs the same collection with 5% bad files.

    python benchmarks/indexing.py --n 2000 --bad-frac 0.05 --rounds 2

Both collections hold the same good images (same seed); the second also holds
truncated JPEGs, zero-byte files and text files named .jpg. Runs alternate (clean,
bad, clean, bad, ...) into fresh index directories so machine noise hits both; the
figure of merit is the ratio of good items per second. Every bad file must be listed
in the run's failures report.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmsearch.indexer.pipeline import IndexOptions, run_index  # noqa: E402

from mmsearch.datasets.synthetic import generate_catalog  # noqa: E402
from mmsearch.models import load_encoder  # noqa: E402
from mmsearch.models.spec import ModelSpec  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--bad-frac", type=float, default=0.05)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--model", default="mmsearch-tiny")
    ap.add_argument("--pretrained", default=None)
    args = ap.parse_args()

    spec = ModelSpec.parse(args.model, args.pretrained)
    encoder = load_encoder(spec)
    work = Path(tempfile.mkdtemp(prefix="mmsearch-bench-"))
    n_bad = round(args.n * args.bad_frac)
    clean = generate_catalog(work / "clean", n=args.n, seed=11)
    bad = generate_catalog(work / "bad", n=args.n, seed=11, corrupt=n_bad)
    opts = IndexOptions(batch_size=args.batch_size, workers=args.workers)

    rates: dict[str, list[float]] = {"clean": [], "bad": []}
    listed_ok = True
    for round_no in range(args.rounds):
        for name, cat in (("clean", clean), ("bad", bad)):
            index_dir = work / f"idx-{name}-{round_no}"
            t0 = time.perf_counter()
            report = run_index([cat.root], index_dir, spec, options=opts, encoder=encoder)
            elapsed = time.perf_counter() - t0
            rates[name].append(report.added / elapsed)
            if name == "bad":
                failed = {Path(f.path).resolve() for f in report.failures}
                listed_ok &= failed == {Path(p).resolve() for p in cat.corrupt_files}
            shutil.rmtree(index_dir)
            print(
                f"round {round_no} {name:5s}: {report.added} items, {report.failed} failed, "
                f"{elapsed:.1f}s, {report.added / elapsed:.1f} items/s",
                flush=True,
            )
    clean_rate = statistics.median(rates["clean"])
    bad_rate = statistics.median(rates["bad"])
    result = {
        "n_good": args.n,
        "n_bad": n_bad,
        "model": spec.key,
        "device": encoder.device,
        "clean_items_per_s": round(clean_rate, 1),
        "bad_items_per_s": round(bad_rate, 1),
        "ratio_bad_over_clean": round(bad_rate / clean_rate, 3),
        "every_bad_file_reported": listed_ok,
    }
    print(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
