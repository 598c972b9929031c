"""ONNX Runtime sessions that start fast: each graph is optimised once, and the result kept.

Creating a session from an exported graph parses the whole protobuf (weights included)
and runs ONNX Runtime's graph optimisers, which for the 254 MB ViT-B-32 text graph
was most of a one-shot query's start-up. So the first session of a graph saves its
optimised form beside it, with every weight in one external data file; later sessions
load that form with the optimisers off, and ONNX Runtime memory-maps the weights file
instead of copying it out of a parsed protobuf (measured on ViT-B-32's text graph:
session creation 2.0-3.5 s -> 0.7 s, peak RSS 398 -> 213 MiB; benchmarks/RESULTS.md).

The saved form lives beside the graph, or under ``root`` when the graph's folder is
not the cache's to write (the export shipped inside the package).

The saved graph is optimised at the ``EXTENDED`` level: hardware-independent fusions
only, so a cache directory shared by machines with other CPUs stays valid (the ``ALL``
level adds layout changes tuned to the CPU it ran on). It lives in its own directory,
named after the source graph's size and mtime and the ONNX Runtime version, written
under a temporary name and renamed into place; one that cannot be loaded is deleted
and made again, and failing to write it (read-only cache) costs only the speed-up.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mmsearch.models.exports import publish_derived

#: Initializers at least this large go to the external weights file (memory-mapped).
EXTERNAL_MIN_BYTES = 1024

_prepacking = True


def set_prepacking(enabled: bool) -> None:
    """Process-wide: whether new sessions pre-pack their weights (ONNX Runtime's default).

    Pre-packing re-lays out every matrix at session creation so that each run is faster;
    a process that runs a handful of inferences and exits (a one-shot CLI query) starts
    sooner without it (measured on ViT-B-32's text graph: session 0.66 s -> 0.14 s,
    first run 0.37 s -> 0.57 s; benchmarks/RESULTS.md). Indexing and serving keep it on.
    """
    global _prepacking
    _prepacking = bool(enabled)


def optimised_dir(graph: Path, ort_version: str, root: Path | None = None) -> Path:
    """The directory of ``graph``'s optimised form (in ``root``, default: beside it): a
    replaced or copied-over graph (other size or mtime) or another ONNX Runtime version
    never meets a stale one."""
    st = graph.stat()
    name = f"{graph.stem}.opt-{st.st_size}-{st.st_mtime_ns}-ort{ort_version}"
    return (root or graph.parent) / name


def session_options(threads: int, level: Any) -> Any:
    """CPU session options: ``threads`` intra-op threads, one inter-op thread, quiet logs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE":
        # Idle pool threads sleep instead of spinning for the next job: a server
        # answering concurrent requests gets its cores back.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not _prepacking:
        options.add_session_config_entry("session.disable_prepacking", "1")
    return options


def create_session(
    graph: str | os.PathLike[str], threads: int, root: str | os.PathLike[str] | None = None
) -> Any:
    """An ``InferenceSession`` of ``graph`` on the CPU, from its saved optimised form (in
    ``root``, default: beside the graph) when there is one (saved now when there is not;
    see the module doc)."""
    import onnxruntime as ort

    graph = Path(graph)
    levels = ort.GraphOptimizationLevel
    providers = ["CPUExecutionProvider"]
    saved = optimised_dir(graph, ort.__version__, Path(root) if root is not None else None)
    model = saved / graph.name
    if model.is_file():
        try:
            return ort.InferenceSession(
                str(model), session_options(threads, levels.ORT_DISABLE_ALL), providers=providers
            )
        except Exception:  # noqa: BLE001 - damaged (e.g. a truncated weights file): redo it
            shutil.rmtree(saved, ignore_errors=True)

    def in_memory() -> Any:  # optimised every time (only slower)
        options = session_options(threads, levels.ORT_ENABLE_ALL)
        return ort.InferenceSession(str(graph), options, providers=providers)

    options = session_options(threads, levels.ORT_ENABLE_EXTENDED)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{saved.name}.", dir=saved.parent))
    except OSError:  # a read-only cache
        return in_memory()
    options.optimized_model_filepath = str(tmp / graph.name)
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_file_name", f"{graph.stem}.weights"
    )
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes", str(EXTERNAL_MIN_BYTES)
    )
    try:
        session = ort.InferenceSession(str(graph), options, providers=providers)
    except Exception:  # noqa: BLE001 - a full disk, say (a bad graph raises again in memory)
        shutil.rmtree(tmp, ignore_errors=True)
        return in_memory()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_derived(tmp, saved, [f"{graph.stem}.opt-*"])  # sweeps older graphs' and runtimes'
    return session
