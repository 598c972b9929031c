"""The search routes: ``GET``/``POST /api/search`` and ``POST /api/search/image``.

Searches are CPU work: each runs on a worker thread once one of the worker's
``search_concurrency`` slots is free, in arrival order. A re-rank request first waits
for the re-rank model (:class:`mmsearch.serve.reranker.RerankerHolder`) without a
slot, so loading a model never holds up plain searches.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import Response

from mmsearch.errors import BadQueryError
from mmsearch.search.encode import check_image_path
from mmsearch.search.filters import MAX_CONDITIONS
from mmsearch.search.limits import DEFAULT_KIND, MAX_K
from mmsearch.serve.failures import error_responses
from mmsearch.serve.holder import IndexHolder
from mmsearch.serve.jsonbody import json_response
from mmsearch.serve.limits import cap_text
from mmsearch.serve.observe import record_results
from mmsearch.serve.reranker import RerankerHolder
from mmsearch.serve.schemas import FilterText, SearchParams, SearchRequest, build_query

if TYPE_CHECKING:
    from mmsearch.serve.config import ServerConfig

MAX_FILENAME_CHARS = 255
_NO_QUERY = "no query: give q=TEXT (the query language) or url=IMAGE_URL"


def search_answer_schema() -> dict[str, Any]:
    """The 200 answer of the search routes, as the schema documents it."""
    hit = {
        "type": "object",
        "required": ["rank", "id", "uri", "kind", "score", "metadata", "media"],
        "properties": {
            "rank": {"type": "integer", "minimum": 1},
            "id": {"type": "integer"},
            "uri": {"type": "string"},
            "kind": {"type": "string", "enum": ["image", "text"]},
            "text": {"type": ["string", "null"]},
            "score": {"type": ["number", "null"]},
            "score_kind": {
                "type": "string",
                "description": "What `score` is: cosine, bm25, relative, rrf, weighted, itm or blend.",
            },
            "cosine": {
                "type": ["number", "null"],
                "description": "The hit's cosine similarity to the query vector (null: lexical only).",
            },
            "metadata": {"type": "object"},
            "media": {"type": ["string", "null"], "description": "`/media/{id}` for images"},
        },
    }
    return {
        "type": "object",
        "required": ["results"],
        "properties": {
            "query": {"type": ["string", "null"]},
            "mode": {"type": ["string", "null"], "enum": ["vector", "lexical", "hybrid", None]},
            "score_kind": {
                "type": ["string", "null"],
                "description": "What the hits' scores are (`+`-joined when they differ).",
            },
            "results": {"type": "array", "items": hit},
            "reason": {
                "type": ["string", "null"],
                "description": "Why there are no results, when there are none.",
            },
            "timings": {"type": "object", "additionalProperties": {"type": "number"}},
            "dropped": {
                "type": "array",
                "description": "Re-ranking only: candidates dropped (file vanished or changed).",
                "items": {"type": "object"},
            },
        },
    }


def require_json(request: Request) -> None:
    """415 unless the body is declared JSON (``application/json`` or ``*/*+json``): a
    browser form cannot send that cross-site without a preflight, and a client that
    forgot the header learns it in one line."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and not (
        content_type.startswith("application/") and content_type.endswith("+json")
    ):
        raise HTTPException(415, "send the body as JSON (Content-Type: application/json)")


def _ok(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": search_answer_schema()}},
    }


def add_search_routes(
    app: FastAPI, config: ServerConfig, holder: IndexHolder, rerankers: RerankerHolder
) -> None:
    """Adds the search routes of this module's docstring to ``app``."""
    import anyio

    gate: list[anyio.CapacityLimiter] = []  # the worker's limiter, made inside its event loop

    def _results(hits: Any) -> list[dict[str, Any]]:
        record_results(hits)
        current = holder.current  # the index that answered (opened by holder.get())
        catalog = None if config.expose_paths or current is None else holder.catalog(current)
        out = []
        for hit in hits:
            item = hit.to_dict()
            item["media"] = f"/media/{hit.id}" if hit.kind == "image" else None
            if catalog is not None:
                item["uri"] = catalog.relative_uri(item["uri"])
            out.append(item)
        return out

    roots = [Path(os.path.realpath(r)) for r in config.image_roots]

    def _run(query: Any) -> tuple[Any, list[dict[str, Any]]]:
        """Runs ``query``; with re-ranking, also the candidates dropped (vanished/changed files).

        Every image-path term is checked against the image roots first, whatever the
        mode: a lexical query does not encode its images, but re-ranking opens them.
        """
        for term in query.terms:
            if term.kind == "image" and isinstance(term.value, (str, os.PathLike)):
                check_image_path(term.value, roots)
        index = holder.get()
        if query.rerank is not None:
            rerankers.attach(index)
        results = index.run(query)
        return results, [{"id": d.id, "reason": d.reason} for d in results.dropped]

    def _with_rerank(query: Any, options: tuple[int, float | None, float | None] | None) -> Any:
        from mmsearch.search.types import RerankSpec

        if options is None:
            return query
        depth, min_match, blend = options
        return replace(query, rerank=RerankSpec(depth=depth, min_match=min_match, blend=blend))

    def _answer(query: Any, shown: str | None) -> dict[str, Any]:
        from mmsearch.search.types import STAGES

        results, dropped = _run(query)
        out = {
            "query": shown,
            "mode": results.mode,
            "score_kind": results.score_kind,
            "results": _results(results),
            "reason": cap_text(results.reason) if results.reason else results.reason,
            "timings": {stage: round(results.timings.get(stage, 0.0), 6) for stage in STAGES},
        }
        if query.rerank is not None:
            out["dropped"] = dropped
        return out

    async def _gated(rerank: bool, fn: Any, *args: Any) -> Any:
        """Runs ``fn(*args)`` on a worker thread once a search slot is free (FIFO).

        With ``rerank`` the re-rank model is made ready first, on a thread of its own
        and without a slot (a failed load is remembered: this raises at once then).
        """
        if rerank and not rerankers.loaded:
            await anyio.to_thread.run_sync(rerankers.load)
        if not gate:
            gate.append(anyio.CapacityLimiter(max(1, config.search_concurrency)))
        return await anyio.to_thread.run_sync(fn, *args, limiter=gate[0])

    def _get_search(p: SearchParams) -> dict[str, Any]:
        from mmsearch.search.language import QueryTerm

        terms = []
        if p.url:
            if not config.allow_urls:
                raise BadQueryError(
                    "image URLs are disabled on this server (start it with --allow-urls)"
                )
            terms.append(QueryTerm(1.0, "url", p.url))
        query = build_query(
            q=None if p.url else p.q, literal=p.literal, terms=terms, where=p.where, kind=p.kind,
            mode=p.mode, fusion=p.fusion, alpha=p.alpha, k=p.k, offset=p.offset,
            group_by=p.group_by, dedup=p.dedup, min_score=p.min_score, cutoff=p.cutoff,
            exact=p.exact,
        )  # fmt: skip
        options = (p.rerank_depth, p.min_match, p.rerank_blend) if p.rerank else None
        return _answer(_with_rerank(query, options), p.q if not p.url else p.url)

    search_errors = error_responses(400, 403, 404, 422)

    @app.get(
        "/api/search",
        responses={200: _ok("The results, best first."), **search_errors},
        response_class=Response,
    )
    async def search(params: Annotated[SearchParams, Query()]) -> Response:
        """Text, query-language or image-URL search. Without `q` and `url` the answer
        is an empty result with a `reason`."""
        if not params.url and params.q is None:
            return json_response({"query": None, "mode": None, "results": [], "reason": _NO_QUERY})
        return json_response(await _gated(params.rerank, _get_search, params))

    @app.post(
        "/api/search",
        responses={
            200: _ok("The results, best first."),
            **error_responses(400, 403, 404, 415, 422),
        },
        response_class=Response,
        dependencies=[Depends(require_json)],
    )
    async def search_json(body: SearchRequest) -> Response:
        """The same search as GET, as a JSON body with structured terms (no parsing)."""
        return json_response(
            await _gated(bool(body.rerank), lambda: _answer(body.to_query(), body.q))
        )

    def _search_upload(
        data: bytes,
        k: int,
        kind: str,
        where: list[str],
        rerank: tuple[int, float | None, float | None] | None,
    ) -> dict[str, Any]:
        from mmsearch.imageio import load_image
        from mmsearch.search.language import QueryTerm

        image = load_image(data, max_pixels=config.max_pixels)
        query = build_query(
            q=None, terms=[QueryTerm(1.0, "image", image)], where=where, kind=kind, k=k
        )
        results, dropped = _run(_with_rerank(query, rerank))
        out: dict[str, Any] = {
            "mode": results.mode,
            "score_kind": results.score_kind,
            "results": _results(results),
            "reason": results.reason,
        }
        if rerank is not None:
            out["dropped"] = dropped
        return out

    @app.post(
        "/api/search/image",
        responses={200: _ok("The results, most similar first."), **error_responses(400, 415, 422)},
        response_class=Response,
    )
    async def search_image(
        file: Annotated[
            UploadFile,
            File(description="The query image (not empty).", json_schema_extra={"minLength": 1}),
        ],
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 20,
        kind: Annotated[str, Query(pattern="^(any|image|text)$")] = DEFAULT_KIND,
        where: Annotated[list[FilterText] | None, Query(max_length=MAX_CONDITIONS)] = None,
        rerank: bool = False,
        rerank_depth: Annotated[int, Query(ge=1, le=MAX_K)] = 50,
        min_match: Annotated[float | None, Query(ge=0.0, le=1.0, allow_inf_nan=False)] = None,
        rerank_blend: Annotated[float | None, Query(ge=0.0, le=1.0, allow_inf_nan=False)] = None,
    ) -> Response:
        """Search by an uploaded image (multipart field `file`)."""
        data = await file.read(config.max_upload_bytes + 1)
        if len(data) > config.max_upload_bytes:
            raise HTTPException(413, f"upload larger than {config.max_upload_bytes} bytes")
        if not data:
            raise HTTPException(422, "the uploaded file is empty")
        # Decoding and encoding are CPU work: keep them off the event loop.
        options = (rerank_depth, min_match, rerank_blend) if rerank else None
        out = await _gated(rerank, _search_upload, data, k, kind, where or [], options)
        name = (file.filename or "")[:MAX_FILENAME_CHARS]
        return json_response({**out, "query": cap_text(name)})
