"""The self-contained HTML report of an evaluation run.

One file, no external requests: a figures table (every variant side by side), the
recall@K curve of each variant (matplotlib, embedded as PNG) and the worst-served
queries with thumbnails of what they should have found and what they got (embedded
JPEGs; a missing or unreadable image shows a placeholder with its name).
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

from mmsearch.evaluation.runner import EvalReport, Shown, WorstCase

THUMB_PX = 112

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; }
table.figures { border-collapse: collapse; }
table.figures th, table.figures td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
table.figures th:first-child, table.figures td:first-child { text-align: left; }
section.case { border-top: 1px solid #ddd; padding: 10px 0; }
.row { display: flex; gap: 8px; flex-wrap: wrap; align-items: flex-start; margin: 4px 0; }
.row > b { width: 90px; flex: none; }
figure { margin: 0; width: 120px; font-size: 11px; word-break: break-all; }
figure img { width: 112px; height: 112px; object-fit: cover; border: 3px solid #bbb; }
figure.hit img { border-color: #2a2; } figure.miss img { border-color: #c33; }
figure.textitem { border: 3px solid #bbb; padding: 4px; min-height: 60px; word-break: normal; }
figure.textitem.hit { border-color: #2a2; } figure.textitem.miss { border-color: #c33; }
.missing { width: 112px; height: 112px; background: #eee; display: flex; align-items: center; justify-content: center; }
.note { color: #666; }
"""


def _thumbnail(path: str | None) -> str | None:
    """A data: URI of a JPEG thumbnail, or None when the image cannot be read."""
    if not path:
        return None
    from mmsearch.errors import ImageDecodeError
    from mmsearch.imageio import load_image

    try:
        img = load_image(path)
    except (ImageDecodeError, OSError):
        return None
    img.thumbnail((THUMB_PX * 2, THUMB_PX * 2))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(item: Shown, retrieved: bool) -> str:
    state = ("hit" if item.relevant else "miss") if retrieved else ""
    if item.kind != "image":
        return f'<figure class="textitem {state}">{html.escape(item.text or item.uri)}</figure>'
    uri = _thumbnail(item.path)
    name = html.escape(os.path.basename(item.path or item.uri))
    img = (
        f'<img class="thumb" src="{uri}" alt="{name}" title="{name}">'
        if uri
        else f'<div class="missing">{name}</div>'
    )
    return f'<figure class="{state}">{img}<figcaption>{name}</figcaption></figure>'


def _case(case: WorstCase) -> str:
    query = html.escape(case.label)
    query_img = ""
    if case.query_image:
        uri = _thumbnail(case.query_image)
        if uri:
            query_img = f'<figure><img class="thumb query" src="{uri}" alt="query"></figure>'
    expected = (
        "".join(_figure(s, False) for s in case.expected)
        or '<span class="note">none in the index</span>'
    )
    got = (
        "".join(_figure(s, True) for s in case.retrieved) or '<span class="note">no results</span>'
    )
    direction = f"{html.escape(case.direction)}: " if case.direction else ""
    score = "not in the results" if case.score == float("inf") else f"{case.score:.3g}"
    return (
        f'<section class="case"><div>{direction}<b>{query}</b> '
        f'<span class="note">({html.escape(case.score_name)} {score})</span></div>'
        f'<div class="row">{query_img}</div>'
        f'<div class="row"><b>expected</b>{expected}</div>'
        f'<div class="row"><b>retrieved</b>{got}</div></section>'
    )


def recall_plot_png(report: EvalReport) -> bytes:
    """The recall@K curves of every variant (and direction) as a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.8), dpi=100)
    ax = fig.add_subplot()
    for label, curve in report.curves.items():
        ks = list(range(1, len(curve) + 1))
        style = "--" if label.startswith("exact") else "-"  # identical curves stay visible
        ax.plot(
            ks, curve, style, marker="o" if len(curve) <= 20 else None, markersize=3, label=label
        )
    ax.set_xlabel("K")
    ax.set_ylabel("recall@K")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{report.model}: recall@K")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def render_html(report: EvalReport, title: str = "mmsearch eval") -> str:
    """The report as one HTML string."""
    metrics = list(next(iter(report.figures.values())))
    head = "".join(f"<th>{html.escape(m)}</th>" for m in metrics)
    body = "".join(
        f"<tr><td>{html.escape(name)}</td>"
        + "".join(f"<td>{values[m]:.4f}</td>" for m in metrics)
        + "</tr>"
        for name, values in report.figures.items()
    )
    plot = base64.b64encode(recall_plot_png(report)).decode("ascii")
    cases = (
        "".join(_case(c) for c in report.worst)
        or '<p class="note">every query found its match first.</p>'
    )
    skipped = ""
    if report.skipped:
        items = "".join(f"<li>{html.escape(s)}</li>" for s in report.skipped[:50])
        skipped = f"<h2>Skipped ({len(report.skipped)})</h2><ul>{items}</ul>"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>model <b>{html.escape(report.model)}</b> · mode {html.escape(report.mode)} · "
        f"{report.n_queries} queries · {report.n_items} items · {report.seconds:.1f} s</p>"
        f'<table class="figures"><thead><tr><th>variant</th>{head}</tr></thead><tbody>{body}</tbody></table>'
        f'<h2>Recall@K</h2><img id="recall-plot" alt="recall@K plot" src="data:image/png;base64,{plot}">'
        f"<h2>Worst queries</h2>{cases}{skipped}</body></html>"
    )


def write_html_report(
    report: EvalReport, path: str | os.PathLike[str], title: str = "mmsearch eval"
) -> Path:
    """Writes the report to ``path`` (atomically) and returns it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(render_html(report, title), encoding="utf-8")
    tmp.replace(target)
    return target
