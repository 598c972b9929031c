"""How the command line shows results and run summaries to people (rich, no heavy imports).

Paths are shown relative to the working directory when they lie under it, and are
never folded mid-path, so that they can be copied from the terminal as they are.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

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


#: Narrowest metadata column worth its own column; below it metadata goes under the path.
MIN_METADATA_WIDTH = 28


def result_table(results: Sequence[Any], width: int | None = None) -> Table:
    """The hits as a table, titled with the mode and the score kind; metadata appears
    only when some hit has metadata.

    Rank, score and kind are never cut, and paths never wrap (they stay copyable). When
    ``width`` (the terminal's) leaves the metadata less than :data:`MIN_METADATA_WIDTH`
    columns beside the longest path, each hit's metadata goes on the lines under its
    path, wrapped between entries, instead of a column a few characters wide.
    """
    briefs = [_brief(hit.metadata) for hit in results]
    shown = [_shown(hit) for hit in results]
    has_text = any(h.kind == "text" for h in results)
    caption = score_caption(results)
    table = Table(show_lines=False, title=caption or None, title_justify="left")
    kind = getattr(results, "score_kind", None) or (
        getattr(results[0], "score_kind", None) if len(results) else None
    )
    score_head = f"score ({kind})" if kind else "score"
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column(score_head, justify="right", no_wrap=True, min_width=6)
    table.add_column("kind", no_wrap=True, min_width=5)
    # rank, score, kind and the borders take about 28 columns
    longest = 0 if has_text else max((len(s) for s in shown), default=0)
    stacked = any(briefs) and width is not None and width - 28 - longest - 3 < MIN_METADATA_WIDTH
    table.add_column(
        "path / text" + (" / metadata" if stacked else ""), no_wrap=not (has_text or stacked)
    )
    if any(briefs) and not stacked:
        table.add_column("metadata", overflow="fold")
    for hit, brief, what in zip(results, briefs, shown, strict=True):
        main: Any = escape(what)
        if stacked:
            main = _stack(what, brief, hit.kind == "text")
        row: list[Any] = [str(hit.rank), f"{hit.score:.4f}", hit.kind, main]
        if any(briefs) and not stacked:
            row.append(escape(brief))
        table.add_row(*row)
    return table


def _stack(what: str, brief: str, is_text: bool) -> Any:
    """A path (never wrapped) or a text, and under it the metadata in dim type."""
    lines: list[Any] = [Text(what, no_wrap=not is_text, overflow="ignore")]
    if brief:
        lines.append(Text(brief, style="dim", overflow="fold"))
    return Group(*lines)


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
    runtime = getattr(report, "runtime", None)
    on = f" on {runtime}" if runtime and report.embedded else ""
    table.add_row(
        "embedded",
        f"{report.embedded}{on} ({report.items_per_s:.1f} items/s over {report.elapsed_s:.1f}s{load})",
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


def ann_summary(info: Mapping[str, Any]) -> str:
    """One line for one kind's ANN index: what was done, its type, size and quality.

    >>> ann_summary({"type": "flat", "n": 400, "d": 64, "mode": "rebuilt", "recall_at_10": 1.0})
    'rebuilt: flat, 400 vectors of 64 dimensions, recall@10 1.000'
    """
    mode = str(info.get("mode") or "built")
    parts = [f"{info.get('type')}, {info.get('n')} vectors of {info.get('d')} dimensions"]
    params = info.get("params") or {}
    if info.get("type") != "flat" and params:
        parts.append(
            f"{params.get('nlist')} lists, PQ m={params.get('m')}, nprobe {info.get('nprobe')}, "
            f"refine x{info.get('refine')}"
        )
    if info.get("recall_at_10") is not None:
        parts.append(f"recall@10 {float(info['recall_at_10']):.3f}")
    seconds = info.get("build_seconds")
    if mode != "unchanged" and seconds:
        parts.append(f"{float(seconds):.1f}s")
    return f"{mode}: " + ", ".join(parts)


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
