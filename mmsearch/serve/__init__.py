"""Production serving: file confinement, authentication, metrics, logs and process control.

The HTTP application itself is built by :func:`mmsearch.serve.app.create_app`; the
modules here are the parts it is assembled from:

- :mod:`mmsearch.serve.files`: indexed files served only while they are still what
  was indexed (confined open, size + mtime check), relative result paths, and the
  ``mmsearch check`` report.
- :mod:`mmsearch.serve.security`: Host allowlist, bearer-token / cookie auth, the
  gallery's sign-in page, and the bind policy (no token, no public address).
- :mod:`mmsearch.serve.observe`: Prometheus metrics and structured access logs.
- :mod:`mmsearch.serve.limits`: request body cap and capped validation errors.
- :mod:`mmsearch.serve.jsonbody`: search answers serialised once (orjson when installed).
- :mod:`mmsearch.serve.drain`: readiness, and the graceful drain on SIGTERM.
- :mod:`mmsearch.serve.lifecycle`: binding first, running one or several worker
  processes on one listening socket, and their math-thread policy.
"""
