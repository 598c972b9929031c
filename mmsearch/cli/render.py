"""How the command line shows results and run summaries to people (rich, no heavy imports).

Paths are shown relative to the working directory when they lie under it, and are
never folded mid-path, so that they can be copied from the terminal as they are.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

#: Metadata keys shown first in the results table, when present.
BRIEF_KEYS = ("sku", "category", "colour", "shape", "position", "price")
#: Metadata keys that repeat what the path column already shows.
HIDDEN_KEYS = frozenset({"file", "filename"})


def display_path(path: str) -> str:
    """``path`` relative to the working directory when under it, else unchanged."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith(os.pardir) else rel


def _shown(hit: Any) -> str:
    if hit.kind == "text" and hit.text:
        return str(hit.text)
    path = hit.path if hasattr(hit, "path") else None
    return display_path(path) if path else str(hit.uri)


def _brief(metadata: Mapping[str, Any]) -> str:
    meta = {k: v for k, v in metadata.items() if k not in HIDDEN_KEYS}
    scored = [k for k in meta if isinstance(meta.get(f"{k}_prob"), (int, float))]
    plain = [k for k in meta if k not in scored and not (k.endswith("_prob") and k[:-5] in scored)]
    chosen = [k for k in BRIEF_KEYS if k in meta] or plain[:4]
    labels = [k for k in scored if k not in chosen]
    brief = [f"{k}={meta[k]}" for k in chosen if not k.endswith("_prob")]
    return ", ".join(
        brief + [f"{k}={meta[k]} ({meta[k + '_prob']:.2f})" for k in labels]
    )  # zero-shot labels


def score_caption(results: Sequence[Any]) -> str:
    """What ran and what the scores are: ``mode hybrid · score relative``.

    Parts the results do not say (a plain list of hits) are left out.
    """
    mode = getattr(results, "mode", None)
    kind = getattr(results, "score_kind", None)
    if kind is None:
        kind = "+".join(dict.fromkeys(getattr(h, "score_kind", None) or "" for h in results))
    parts = ([f"mode {mode}"] if mode else []) + ([f"score {kind}"] if kind else [])
    return " · ".join(parts)


def result_table(results: Sequence[Any]) -> Table:
    """The hits as a table, titled with the mode and the score kind; the metadata column
    appears only when some hit has metadata."""
    briefs = [_brief(hit.metadata) for hit in results]
    caption = score_caption(results)
    table = Table(show_lines=False, title=caption or None, title_justify="left")
    kind = getattr(results, "score_kind", None) or (
        getattr(results[0], "score_kind", None) if len(results) else None
    )
    table.add_column("#", justify="right")
    table.add_column(f"score ({kind})" if kind else "score", justify="right")
    table.add_column("kind")
    # Paths never wrap (they stay copyable); the metadata column folds to make room.
    table.add_column("path / text", no_wrap=not any(h.kind == "text" for h in results))
    if any(briefs):
        table.add_column("metadata", overflow="fold")
    for hit, brief in zip(results, briefs, strict=True):
        row = [str(hit.rank), f"{hit.score:.4f}", hit.kind, escape(_shown(hit))]
        if any(briefs):
            row.append(escape(brief))
        table.add_row(*row)
    return table


def paths_only_line(hit: Any) -> str:
    """One hit as ``-f`` prints it: the image's path (as given at indexing) or the text."""
    if hit.kind == "text":
        return str(hit.text)
    return (hit.path if hasattr(hit, "path") else None) or str(hit.uri)


def no_results_reason(
    results: Any, *, kinds: Sequence[str], kind: str, where: Sequence[str] | None
) -> str:
    """Why a search found nothing: the engine's ``reason`` when it gives one, else a guess."""
    reason = getattr(results, "reason", None)
    if reason:
        return str(reason)
    if kind in ("image", "text") and kind not in kinds:
        return f"the index holds no {kind} items; it holds: {', '.join(kinds) or 'nothing'}"
    if where:
        return "no item matches the filters " + " and ".join(repr(w) for w in where)
    return "nothing matched the query"


def print_summary(report: Any, out: Console, err: Console) -> None:
    """The summary of an indexing run: counts, rate, ANN indexes, metadata join, failures."""
    table = Table(title="index summary", show_header=False, box=None)
    for label, name in (
        ("added", "added"),
        ("updated", "updated"),
        ("deleted", "deleted"),
        ("skipped (unchanged)", "unchanged"),
        ("failed", "failed"),
    ):
        table.add_row(label, str(getattr(report, name)))
    load = f"; model load {report.load_s:.1f}s" if getattr(report, "load_s", 0) else ""
    table.add_row(
        "embedded",
        f"{report.embedded} ({report.items_per_s:.1f} items/s over {report.elapsed_s:.1f}s{load})",
    )
    join = getattr(report, "metadata_join", None)
    if join:
        table.add_row(
            "metadata rows",
            f"{join['matched']} matched, {join['unmatched']} unmatched; "
            f"{join['images_without_row']} image(s) without a row",
        )
    for kind, info in report.ann.items():
        table.add_row(
            escape(f"ann[{kind}]"), f"{info.get('type')} n={info.get('n')} ({info.get('mode', '')})"
        )
    out.print(table)
    print_failures(report, err)


def print_failures(report: Any, err: Console, limit: int = 10) -> None:
    """The skipped items (first ``limit``), the report file and aborted deletion sweeps."""
    if report.failures:
        err.print(
            f"[yellow]{report.failed} item(s) skipped[/]; details: {escape(str(report.report_path))}"
        )
        for failure in report.failures[:limit]:
            where = display_path(failure.path) + (
                f" row {failure.row_number}" if failure.row_number else ""
            )
            err.print(
                f"  [yellow]skip[/] {escape(where)}: {escape(failure.reason)} ({failure.exc_class})"
            )
        if report.failed > limit:
            err.print(f"  ... and {report.failed - limit} more")
    for root in report.sweep_aborted:
        err.print(
            f"[yellow]warning:[/] {escape(root)} could not be fully read; deleted files were NOT removed from the index"
        )


def print_previews(results: Sequence[Any], out: Console, err: Console) -> None:
    """Each hit on its own line, image hits followed by an inline preview when the terminal
    shows images; elsewhere the plain results table and one note."""
    from mmsearch.cli.termimage import detect_protocol, encode_inline, thumbnail_png

    protocol = detect_protocol(isatty=out.is_terminal)
    caption = score_caption(results)
    if protocol is not None and caption:
        out.print(escape(caption))
    if protocol is None:
        out.print(result_table(results))
        err.print(
            "[yellow]note:[/] this terminal does not show images; previews need kitty, iTerm2 or WezTerm"
        )
        return
    for hit in results:
        out.print(
            f"[bold]#{hit.rank}[/] {hit.score:.4f} {hit.kind} {escape(_shown(hit))}", soft_wrap=True
        )
        if hit.kind == "image" and getattr(hit, "path", None):
            try:
                png = thumbnail_png(hit.path)
            except Exception as exc:  # a file gone or unreadable since indexing: say so, go on
                err.print(f"  [yellow]no preview:[/] {escape(str(exc))}")
                continue
            out.file.write(encode_inline(png, protocol))
            out.file.flush()


def info_table(info: Mapping[str, Any]) -> Table:
    """``mmsearch info``: the engine's description, then sources, disk use and the last run."""
    from mmsearch.maintenance.usage import human_bytes

    table = Table(show_header=False, box=None)
    for key, value in info.items():
        if key not in ("ann", "sources", "disk_bytes", "last_run"):
            table.add_row(key, escape(str(value)))
    for kind, ann in info["ann"].items():
        for key, value in ann.items():
            table.add_row(escape(f"ann[{kind}].{key}"), escape(str(value)))
    for source in info.get("sources") or []:
        table.add_row(
            "source",
            escape(f"{display_path(str(source['source']))} ({source['rows']} {source['kind']})"),
        )
    sizes = info.get("disk_bytes") or {}
    if sizes:
        parts = ", ".join(f"{name} {human_bytes(n)}" for name, n in sizes.items() if n)
        table.add_row("disk", f"{parts} (total {human_bytes(sum(sizes.values()))})")
    run = info.get("last_run")
    if run:
        counts = f"{run['added']} added, {run['updated']} updated, {run['deleted']} deleted, {run['failed']} failed"
        table.add_row("last run", escape(f"{run['finished_at']}: {counts}"))
        if run["failed"]:
            table.add_row("last run failures", escape(str(run["failures_file"])))
    return table
