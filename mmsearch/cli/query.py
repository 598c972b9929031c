"""``mmsearch query``: search an index and print the hits."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.markup import escape

from mmsearch.cli.common import (
    EXIT_NO_RESULTS,
    BackendOpt,
    DeviceOpt,
    IndexDirOpt,
    QuantizeOpt,
    console,
    err_console,
    reported_errors,
    resolve_index_dir,
)
from mmsearch.search.limits import DEFAULT_KIND, MAX_K, MAX_OFFSET


def query_cmd(
    query: Annotated[
        str,
        typer.Argument(
            help='Text, an image path, or a mix: \'"2:red dress" + ./ref.jpg - "stripes"\'.'
        ),
    ],
    index: IndexDirOpt = None,
    top: Annotated[
        int, typer.Option("--top", "-k", min=1, max=MAX_K, help="Number of results.")
    ] = 10,
    offset: Annotated[
        int,
        typer.Option("--offset", min=0, max=MAX_OFFSET, help="Skip this many results (paging)."),
    ] = 0,
    kind: Annotated[
        str,
        typer.Option(
            "--kind", help="Result kind: image, text or any (any ranks each kind fairly)."
        ),
    ] = DEFAULT_KIND,
    mode: Annotated[
        str | None,
        typer.Option(
            "--mode",
            help="vector, lexical or hybrid (default: hybrid when the index has a full-text index and the query has text).",
        ),
    ] = None,
    fusion: Annotated[
        str,
        typer.Option(
            "--fusion",
            help="How hybrid merges its legs: relative (each leg by how far it beats chance), rrf (reciprocal rank) or weighted.",
        ),
    ] = "relative",
    alpha: Annotated[
        float,
        typer.Option(
            "--alpha", min=0.0, max=1.0, help="Weight of the vector leg with --fusion weighted."
        ),
    ] = 0.7,
    literal: Annotated[
        bool,
        typer.Option(
            "--literal", help="Take the whole argument as one text term (no + / - / path parsing)."
        ),
    ] = False,
    group_by: Annotated[
        str | None,
        typer.Option("--group-by", help="Best hit per value of this metadata key (e.g. sku)."),
    ] = None,
    dedup: Annotated[
        float | None,
        typer.Option(
            "--dedup",
            min=0.0,
            max=1.0,
            help="Fold hits within this cosine of a better hit (e.g. 0.97).",
        ),
    ] = None,
    min_score: Annotated[
        float | None,
        typer.Option(
            "--min-score",
            help="Drop hits whose cosine similarity (BM25 score in lexical mode) is below this.",
        ),
    ] = None,
    cutoff: Annotated[
        bool,
        typer.Option(
            "--cutoff",
            help="Hybrid: print 'no good match' when no hit beats the index's chance level and no word matched.",
        ),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print results as a JSON list.")] = False,
    paths_only: Annotated[
        bool,
        typer.Option(
            "--paths-only", "-f", help="Print only the uri (or text) of each hit, one per line."
        ),
    ] = False,
    exact: Annotated[
        bool, typer.Option("--exact", help="Exact search: bypass the ANN index.")
    ] = False,
    nprobe: Annotated[
        int | None,
        typer.Option("--nprobe", min=1, help="IVF lists probed (default: tuned at build)."),
    ] = None,
    refine: Annotated[
        int | None,
        typer.Option(
            "--refine", min=1, help="Candidates re-scored exactly, as a multiple of --top."
        ),
    ] = None,
    where: Annotated[
        list[str] | None,
        typer.Option(
            "--where",
            "-w",
            help="Metadata filter 'column op value' (op: = != < <= > >= in contains); repeatable, ANDed.",
        ),
    ] = None,
    preview: Annotated[
        bool,
        typer.Option(
            "--preview",
            "-p",
            help="Show image hits inline (kitty, iTerm2, WezTerm; MMSEARCH_PREVIEW=kitty|iterm|none overrides).",
        ),
    ] = False,
    device: DeviceOpt = None,
    backend: BackendOpt = "auto",
    quantize: QuantizeOpt = None,
    rerank: Annotated[
        bool,
        typer.Option(
            "--rerank",
            help="Re-rank the first stage's best candidates with a BLIP image-text-matching model.",
        ),
    ] = False,
    rerank_depth: Annotated[
        int, typer.Option("--rerank-depth", min=1, max=10000, help="Candidates re-ranked.")
    ] = 50,
    min_match: Annotated[
        float | None,
        typer.Option(
            "--min-match",
            min=0.0,
            max=1.0,
            help="Lowest match probability kept (with --rerank); none above it gives an empty answer.",
        ),
    ] = None,
    rerank_blend: Annotated[
        float | None,
        typer.Option(
            "--rerank-blend",
            min=0.0,
            max=1.0,
            help="Weight of the match probability against the first-stage score (default: the rerank model's own, else 1).",
        ),
    ] = None,
    rerank_model: Annotated[
        str | None,
        typer.Option(
            "--rerank-model",
            help="ITM model: mmsearch-tiny-itm, a local folder or a Hugging Face id (default: the one recorded with index --rerank-model, else Salesforce/blip-itm-base-coco).",
        ),
    ] = None,
) -> None:
    """Search an index with text, an image, or a weighted mix of both.

    Exit status 3 when nothing matched ("no results (reason)" on stderr), 2 on an error.
    """
    from mmsearch.engine import SearchIndex
    from mmsearch.search.request import make_query
    from mmsearch.search.types import RerankSpec

    with reported_errors():
        # --rerank: --rerank-model, else the index's recorded model, else the default (on first use)
        reranker = rerank_model if rerank else None
        idx = SearchIndex(
            resolve_index_dir(index),
            device=device,
            backend=backend,
            quantize=quantize,
            reranker=reranker,
        )
        spec = (
            RerankSpec(depth=rerank_depth, min_match=min_match, blend=rerank_blend)
            if rerank
            else None
        )
        q = make_query(
            query, literal=literal, where=where, rerank=spec, k=top, offset=offset, kind=kind, mode=mode, fusion=fusion,
            alpha=alpha, group_by=group_by, dedup=dedup, min_score=min_score, cutoff=cutoff, exact=exact, nprobe=nprobe,
            refine=refine,
        )  # fmt: skip
        results = idx.run(q)
        for gone in results.dropped:
            err_console.print(f"[yellow]skipped:[/] {escape(gone.uri)}: {escape(gone.reason)}")
        stale = idx.stale
        kinds = list(idx.info()["ann"]) if not results else []
    from mmsearch.cli.render import no_results_reason, paths_only_line, print_previews, result_table

    if json_out:
        sys.stdout.write(json.dumps([r.to_dict() for r in results], ensure_ascii=False) + "\n")
    elif paths_only:
        for hit in results:
            sys.stdout.write(paths_only_line(hit) + "\n")
    elif preview and results:
        print_previews(results, console, err_console)
    elif results:
        console.print(result_table(results, width=console.width))
    if stale:
        err_console.print(
            "[yellow]note:[/] the index has changes newer than its search index; run mmsearch build-index"
        )
    if not results:
        reason = no_results_reason(results, kinds=kinds, kind=kind, where=where)
        err_console.print(f"no results ({escape(reason)})")
        raise typer.Exit(EXIT_NO_RESULTS)
