"""The per-run indexing report: counts, failures and the failures JSONL file."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mmsearch.indexer.recordtypes import UpsertReport

FAILURES_DIRNAME = "reports"
#: Summary of the latest indexing run (counts, failures file, when it finished).
LAST_RUN_NAME = "last-run.json"


@dataclass(frozen=True)
class Failure:
    """One item that was skipped: where, why, and the exception class behind it."""

    path: str
    reason: str
    exc_class: str
    stage: str = "decode"  # walk | read | decode | tokenize | embed
    row_number: int | None = None


@dataclass
class IndexReport:
    """What one ``run_index`` did. ``failed`` counts items skipped for bad input."""

    added: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    embedded: int = 0
    failures: list[Failure] = field(default_factory=list)
    sweep_aborted: list[str] = field(default_factory=list)  # roots whose deletion sweep was refused
    elapsed_s: float = 0.0  # walk, decode, embed, write and ANN build; the model load is load_s
    load_s: float = 0.0
    embed_s: float = 0.0
    report_path: str | None = None
    table_version: int | None = None
    ann: dict[str, dict] = field(default_factory=dict)  # kind -> VectorIndex.info
    #: rows / matched / unmatched / images_without_row of a --metadata sidecar (None: no sidecar)
    metadata_join: dict[str, int] | None = None
    #: Seconds from the start of ``run_index`` to the end of each phase: ``checked``
    #: (inputs, weights, writer lock), ``model`` (encoder ready to load its sessions),
    #: ``table`` (table open or created), ``first_embed`` (the first batch goes to the
    #: model), ``last_embed`` (the last batch embedded), ``written`` (rows committed, sweep
    #: and labels done), ``ann`` (full-text and ANN indexes, snapshot) and ``done``. What
    #: is not embedding is the fixed cost of a run; the benchmarks break it down by these.
    phases: dict[str, float] = field(default_factory=dict)
    #: What computed the run's vectors (:func:`mmsearch.models.backends.runtime_label`:
    #: ``openvino-bf16``, ``onnxruntime``, ``torch-cuda``...; None: nothing was loaded)
    runtime: str | None = None
    started_at: float = field(default_factory=time.perf_counter, repr=False, compare=False)
    #: Per kind counts and failures by record id of the product feeds of the run (None: no feed)
    records: UpsertReport | None = None
    #: what went wrong after the new snapshot was published (never a failed run)
    warnings: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def item_failures(self) -> list[Failure]:
        """Failures of items (files, rows), without problems of the folder walk."""
        return [f for f in self.failures if f.stage != "walk"]

    @property
    def items_per_s(self) -> float:
        """Items embedded per second of indexing work (model loading excluded)."""
        return self.embedded / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def mark(self, phase: str, *, at: float | None = None) -> None:
        """Records that ``phase`` ended now, or at ``at`` (a ``time.perf_counter()``)."""
        end = time.perf_counter() if at is None else at
        self.phases[phase] = round(end - self.started_at, 4)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("started_at")
        data["failed"] = self.failed
        data["items_per_s"] = round(self.items_per_s, 2)
        return data


def check_not_all_failed(report: IndexReport) -> None:
    """Raises :class:`IndexingFailedError` when items failed and none was indexed or kept."""
    from mmsearch.errors import IndexingFailedError

    failed = report.item_failures
    if failed and report.embedded == 0 and report.unchanged == 0:
        first = failed[0]
        raise IndexingFailedError(
            f"nothing was indexed: all {len(failed)} item(s) failed (first: {first.path}: {first.reason}); "
            f"details: {report.report_path}",
            report,
        )


def write_failures(index_dir: Path, run_id: str, failures: list[Failure]) -> Path:
    """Writes ``reports/failures-<run_id>.jsonl`` (and ``failures-latest.jsonl``) in the index dir."""
    out_dir = index_dir / FAILURES_DIRNAME
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"failures-{run_id}.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for failure in failures:
            fh.write(json.dumps(asdict(failure)) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    latest = out_dir / "failures-latest.jsonl"
    tmp_latest = out_dir / "failures-latest.jsonl.tmp"
    tmp_latest.write_bytes(path.read_bytes())
    os.replace(tmp_latest, latest)
    return path


def write_run_summary(index_dir: Path, report: IndexReport) -> Path:
    """Writes ``reports/last-run.json``: the run's counts, its failures file and when it finished."""
    from datetime import datetime, timezone

    data = {
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **{
            k: getattr(report, k)
            for k in ("added", "updated", "deleted", "unchanged", "embedded", "failed")
        },
        "sweep_aborted": report.sweep_aborted,
        "failures_file": report.report_path,
    }
    out_dir = index_dir / FAILURES_DIRNAME
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (LAST_RUN_NAME + ".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, out_dir / LAST_RUN_NAME)
    return out_dir / LAST_RUN_NAME
