"""Production serving: connections, authentication, the HTTP contract, metrics, process control.

The HTTP application itself is built by :func:`mmsearch.serve.app.create_app`; the
modules here are the parts it is assembled from:

- :mod:`mmsearch.serve.connections`: uvicorn's protocols behind per-connection limits
  (header size, header and keep-alive timeouts, connections per worker).
- :mod:`mmsearch.serve.search_routes` and :mod:`mmsearch.serve.routes`: the routes;
  :mod:`mmsearch.serve.schemas`: their request models.
- :mod:`mmsearch.serve.failures`: one error model and the handlers that produce it;
  :mod:`mmsearch.serve.contract`: ``/openapi.json`` as this server answers.
- :mod:`mmsearch.serve.files`: indexed files served only while they are still what
  was indexed (confined open, size + mtime + SHA-256 check), relative result paths,
  and the ``mmsearch check`` report.
- :mod:`mmsearch.serve.security`: Host allowlist, Origin check, bind and token
  policy; :mod:`mmsearch.serve.auth`: bearer token, session cookie, sign-in and out.
- :mod:`mmsearch.serve.methods`: ``OPTIONS``/``Allow``, ``nosniff``.
- :mod:`mmsearch.serve.observe`: Prometheus metrics and structured access logs.
- :mod:`mmsearch.serve.limits`: request body cap and capped error messages.
- :mod:`mmsearch.serve.jsonbody`: search answers serialised once (orjson when installed).
- :mod:`mmsearch.serve.reranker`: the re-rank model, loaded once, outside search slots.
- :mod:`mmsearch.serve.drain`: readiness, and the graceful drain on SIGTERM.
- :mod:`mmsearch.serve.lifecycle`: binding first, running one or several worker
  processes on one listening socket, and their math-thread policy.
"""
