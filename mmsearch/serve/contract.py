"""``/openapi.json`` as this server answers: the generated schema, tailored to its settings.

FastAPI generates the schema from the routes and models; this adds what depends on
how the server was started, so that a schema-valid request is never refused for a
reason the schema could have stated:

- without ``--allow-urls``, image-URL terms (``terms[].url``, ``GET ?url=``) are not
  in the schema (the server refuses them);
- with a token, a bearer security scheme required by every operation but ``/healthz``.

>>> install_openapi(app, allow_urls=False, token_required=True)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI

_PUBLIC_OPERATIONS = frozenset({"/healthz"})


def tailor_openapi(
    schema: dict[str, Any], *, allow_urls: bool, token_required: bool
) -> dict[str, Any]:
    """A copy of ``schema`` for a server with these settings."""
    out = copy.deepcopy(schema)
    components = out.setdefault("components", {})
    if not allow_urls:
        term = components.get("schemas", {}).get("TermIn", {})
        term.get("properties", {}).pop("url", None)
        term["oneOf"] = [b for b in term.get("oneOf", []) if b != {"required": ["url"]}]
        search = out.get("paths", {}).get("/api/search", {}).get("get", {})
        search["parameters"] = [p for p in search.get("parameters", []) if p.get("name") != "url"]
    if token_required:
        components.setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "The server's token (MMSEARCH_TOKEN).",
        }
        for path, operations in out.get("paths", {}).items():
            if path in _PUBLIC_OPERATIONS:
                continue
            for operation in operations.values():
                operation["security"] = [{"bearer": []}]
    return out


def install_openapi(app: FastAPI, *, allow_urls: bool, token_required: bool) -> None:
    """Makes ``app.openapi()`` (and so ``/openapi.json``) serve the tailored schema."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = tailor_openapi(
                generate(), allow_urls=allow_urls, token_required=token_required
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


#: Routes kept out of the schema on purpose: pages and forms for people, and the docs.
UNDOCUMENTED_ROUTES = frozenset({"/", "/login", "/logout", "/docs"})


def undeclared_answers(app: FastAPI) -> list[str]:
    """What the schema of ``app`` fails to declare, one line per problem ([] when none).

    Every route is either in :data:`UNDOCUMENTED_ROUTES` or in the schema with a 2xx
    answer that has content, each of :data:`~mmsearch.serve.failures.COMMON_ERRORS`
    with the error model, and a 422 with the error model when it takes input.
    """
    from fastapi.routing import APIRoute

    from mmsearch.serve.failures import COMMON_ERRORS

    spec = app.openapi()
    error_ref = "#/components/schemas/ErrorBody"
    problems = []
    for route in app.routes:
        if not isinstance(route, APIRoute):
            continue
        if not route.include_in_schema:
            if route.path not in UNDOCUMENTED_ROUTES:
                problems.append(f"{route.path}: left out of the schema")
            continue
        for method in sorted((route.methods or set()) - {"HEAD"}):
            label = f"{method} {route.path}"
            answers = spec["paths"].get(route.path, {}).get(method.lower(), {}).get("responses", {})
            ok = [code for code in answers if code.startswith("2")]
            if not ok or not all(answers[code].get("content") for code in ok if code != "204"):
                problems.append(f"{label}: no 2xx answer with its content")
            takes_input = bool(
                route.dependant.query_params or route.dependant.path_params or route.body_field
            )
            for status in (*COMMON_ERRORS, *((422,) if takes_input else ())):
                content = answers.get(str(status), {}).get("content", {})
                if error_ref not in str(content):
                    problems.append(f"{label}: {status} not declared with the error model")
            if "HTTPValidationError" in str(answers):
                problems.append(f"{label}: FastAPI's default 422 model, not the error model")
    return problems
