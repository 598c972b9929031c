"""Records over HTTP: ``GET /api/items/{id}``, and with writes on, ``PUT /api/items`` and
``DELETE /api/items/{id}``.

    PUT    /api/items        a JSON list of records (see :mod:`mmsearch.serve.item_schemas`):
                             inserted or updated by id; answers the upsert report
    DELETE /api/items/{id}   every row of the record; answers whether the index held it
    GET    /api/items/{id}   the record's rows in the served snapshot (404 when it has none)

Writes go through the library (:meth:`mmsearch.engine.SearchIndex.upsert` and
:meth:`~mmsearch.engine.SearchIndex.delete`: one writer session each, the index's lock
or object-store lease, rows committed, then published beside the ANN index), so the
server is one more writer of the index, with the library's crash safety and one
writer at a time: a write
waits up to ``write_wait_s`` for another writer (another worker, an indexing run),
then answers 503 with ``Retry-After``. A write runs on its own thread, one at a time
per worker, and never holds one of the worker's search slots while it fetches and
embeds. When it has published, the worker switches to the new snapshot before it
answers, so its answer (``X-Mmsearch-Snapshot``) and its next search hold the
write; the other workers switch on their next request (they check ``snapshot.json``
before each one).

Writes need the bearer token on every address (a session cookie is not enough: it
travels with a browser, a bearer header does not), a JSON body (415 otherwise), and
no foreign ``Origin`` (403, :mod:`mmsearch.serve.security`). Image URLs are fetched
under the library's one policy (:mod:`mmsearch.urlfetch`): public addresses only,
unless the server allows private ones for writes (``--allow-private-urls``), capped
at ``--max-upload-mb`` and the URL timeout. Paths and ``s3://`` objects are not
accepted from a client.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Body, Depends, FastAPI, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import Response

from mmsearch.indexer.recordtypes import record_prefix
from mmsearch.serve.failures import error_responses
from mmsearch.serve.holder import IndexHolder
from mmsearch.serve.item_schemas import (
    DELETE_ANSWER,
    ID_PATTERN,
    MAX_ID_CHARS,
    RECORD_ANSWER,
    Records,
    upsert_answer,
    upsert_answer_schema,
)
from mmsearch.serve.jsonbody import json_response, require_json
from mmsearch.storage.metadata_keys import normalize_metadata

if TYPE_CHECKING:
    from mmsearch.engine import SearchIndex

ITEM_PATH = "/api/items/{id}"
_GET_ITEM = "get_item"
_DELETE_ITEM = "delete_item"

ItemIdParam = Annotated[
    str,
    PathParam(
        pattern=ID_PATTERN, max_length=MAX_ID_CHARS, description="The record's id, as written."
    ),
]


def record_rows(index: SearchIndex, record_id: str) -> list[dict[str, Any]]:
    """The rows of record ``record_id`` in ``index``'s snapshot, by row id ([] when it has
    none): ``id`` (the row's), ``uri``, ``kind``, ``text`` and ``metadata``."""
    table = index.current.rows().with_uri_prefix(record_prefix(record_id))
    rows: list[dict[str, Any]] = table.select(["id", "uri", "kind", "text", "metadata"]).to_pylist()
    for row in rows:
        row["metadata"] = normalize_metadata(json.loads(row["metadata"])) if row["metadata"] else {}
    return rows


def require_bearer(request: Request) -> None:
    """401 unless the request carried the token as ``Authorization: Bearer`` (the token
    middleware has checked it by then); a sign-in cookie alone does not authorise writes."""
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        raise HTTPException(
            401,
            "writes need Authorization: Bearer <token> (a signed-in session is not enough)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _json(description: str, schema: dict[str, Any], links: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        "links": links,
    }


def _link(operation: str, source: str, description: str) -> dict[str, Any]:
    return {"operationId": operation, "parameters": {"id": source}, "description": description}


def add_item_routes(app: FastAPI, config: Any, holder: IndexHolder) -> None:
    """Adds ``GET /api/items/{id}``, and with ``config.writes`` the write routes, to ``app``."""
    import anyio

    @app.get(
        ITEM_PATH,
        operation_id=_GET_ITEM,
        responses={
            200: _json(
                "The record's rows in the served snapshot.",
                RECORD_ANSWER,
                {"DeleteItem": _link(_DELETE_ITEM, "$request.path.id", "Delete this record.")}
                if config.writes
                else {},
            ),
            **error_responses(404, 422),
        },
        response_class=Response,
    )
    def get_item(id: ItemIdParam) -> Response:  # noqa: A002 - the path's own name
        """A record's rows (its text and images) as the server searches them now."""
        rows = record_rows(holder.get(), id)
        if not rows:
            raise HTTPException(404, f"the index holds no record {id!r}")
        return json_response({"id": id, "items": rows})

    if not config.writes:
        return

    from mmsearch.urlfetch import FetchPolicy

    policy = FetchPolicy(
        max_bytes=config.max_upload_bytes,
        timeout_s=config.url_timeout_s,
        allow_private=config.allow_private_write_urls,
    )
    gate: list[anyio.CapacityLimiter] = []  # one write at a time per worker (made in its loop)

    async def _writing(fn: Any, *args: Any) -> Any:
        """Runs ``fn(*args)`` on a thread of the write gate (never a search slot)."""
        if not gate:
            gate.append(anyio.CapacityLimiter(1))
        return await anyio.to_thread.run_sync(fn, *args, limiter=gate[0])

    # The served index writes without swapping its own snapshot (swap=False): requests in
    # flight keep theirs; the holder opens the published one beside it (after_write).
    def _upsert(records: list[dict[str, Any]]) -> dict[str, Any]:
        report = holder.get().upsert(
            records, local_paths=False, fetch_policy=policy,
            lock_wait_s=config.write_wait_s, swap=False,
        )  # fmt: skip
        holder.after_write()  # this worker serves the write from now on
        return upsert_answer([r["id"] for r in records], report)

    def _delete(record_id: str) -> dict[str, Any]:
        found = holder.get().delete([record_id], lock_wait_s=config.write_wait_s, swap=False)
        holder.after_write()
        return {"id": record_id, "deleted": bool(found)}

    write_errors = error_responses(403, 415, 422)

    @app.put(
        "/api/items",
        operation_id="put_items",
        responses={
            200: _json(
                "Written and published: the upsert report.",
                upsert_answer_schema(),
                {
                    "GetItem": _link(
                        _GET_ITEM, "$response.body#/ids/0", "The first record written."
                    ),
                    "DeleteItem": _link(
                        _DELETE_ITEM, "$response.body#/ids/0", "Delete the first record written."
                    ),
                },
            ),
            **write_errors,
        },
        response_class=Response,
        dependencies=[Depends(require_bearer), Depends(require_json)],
    )
    async def put_items(records: Annotated[Records, Body()]) -> Response:
        """Inserts or updates records by id (the whole record replaces what the index held
        for it; a repeated request changes nothing). Answers once the records are searchable."""
        answer = await _writing(_upsert, [r.to_record() for r in records])
        return json_response(answer)

    @app.delete(
        ITEM_PATH,
        operation_id=_DELETE_ITEM,
        responses={
            200: _json(
                "Deleted (or already absent): every row of the record is gone.",
                DELETE_ANSWER,
                {"GetItem": _link(_GET_ITEM, "$request.path.id", "The record, now gone (404).")},
            ),
            **error_responses(403, 422),
        },
        response_class=Response,
        dependencies=[Depends(require_bearer)],
    )
    async def delete_item(id: ItemIdParam) -> Response:  # noqa: A002
        """Deletes every row of a record. Deleting an absent record is not an error."""
        return json_response(await _writing(_delete, id))
