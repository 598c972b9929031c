"""``import lancedb`` without paying for the REST namespace client it does not use here.

``lancedb`` imports ``lance_namespace``, which imports submodules of the generated
REST client ``lance_namespace_urllib3_client`` (its ``models``). Python runs that
package's ``__init__`` first, and it imports every REST API class: about 70% of
``import lancedb`` (1.0 of 1.4 s on a quiet 2-core machine), for a client that only a
remote namespace catalog uses. :func:`import_lancedb` registers the client package
with its ``__init__`` deferred: submodules import as usual, and the first use of any
name the ``__init__`` defines runs it then. Nothing changes for code that uses the
client; a process that never does skips the cost.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import types
from typing import Any

#: Packages whose ``__init__`` runs on first use instead of at import.
DEFERRED_PACKAGES = ("lance_namespace_urllib3_client",)
_lock = threading.RLock()


class _DeferredInit(types.ModuleType):
    """A package whose ``__init__`` has not run yet; the first missing name runs it."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)  # import-machinery probes (__file__, __all__, ...)
        with _lock:
            if type(self) is _DeferredInit:
                self.__class__ = types.ModuleType  # type: ignore[assignment]  # back to a plain module
                spec = self.__spec__
                assert spec is not None and spec.loader is not None
                spec.loader.exec_module(self)
        return getattr(self, name)


def defer_package_init(name: str) -> None:
    """Registers package ``name`` with its ``__init__`` deferred (no-op if already imported)."""
    with _lock:
        if name in sys.modules:
            return
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not spec.submodule_search_locations:
            return
        module = importlib.util.module_from_spec(spec)
        module.__class__ = _DeferredInit
        sys.modules[name] = module


def import_lancedb() -> Any:
    """The ``lancedb`` module, imported with :data:`DEFERRED_PACKAGES` deferred."""
    if "lancedb" not in sys.modules:
        for name in DEFERRED_PACKAGES:
            defer_package_init(name)
    import lancedb

    return lancedb
