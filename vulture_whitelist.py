"""Names vulture (dead-code check, run by scripts/test.sh) may not see used: reviewed by hand.

Each entry is read by a library, a protocol or a serialiser rather than by our own code.
FastAPI routes and pydantic validators are skipped by decorator ([tool.vulture] in
pyproject.toml). Before adding a name here, check it is really used: dead code is removed.
This file is parsed by vulture, never imported.
"""

# Module protocol (PEP 562): lazy attributes of packages, resolved by the import system.
__getattr__
__dir__

# Attributes that configure third-party objects by assignment.
_.efConstruction  # FAISS IndexHNSW.hnsw
_.useFloat16LookupTables  # FAISS GpuClonerOptions
_.referenced_resources  # keeps FAISS GPU resources alive with the index
_.max_points_per_centroid  # FAISS ClusteringParameters
_.min_points_per_centroid  # FAISS ClusteringParameters
_.index_params  # FAISS SearchParametersPreTransform
_.referenced_ivf_params  # keeps FAISS SearchParametersIVF alive
_.graph_optimization_level  # onnxruntime.SessionOptions
_.intra_op_num_threads  # onnxruntime.SessionOptions
_.inter_op_num_threads  # onnxruntime.SessionOptions
_.log_severity_level  # onnxruntime.SessionOptions
_.optimized_model_filepath  # onnxruntime.SessionOptions
_.normalizer  # tokenizers.Tokenizer
_.pre_tokenizer  # tokenizers.Tokenizer
_.decoder  # tokenizers.Tokenizer
_.post_processor  # tokenizers.Tokenizer
_.transient  # rich.progress.Progress (the bar disappears when done)
_.should_exit  # uvicorn.Server (tests stop their server with it)
_.daemon_threads  # socketserver.ThreadingMixIn (test HTTP servers)
model_config  # pydantic models (extra="forbid")

# Methods that a base class or a framework calls.
_.forward  # torch.nn.Module.__call__
_.seekable  # io.RawIOBase (Pillow reads through mmsearch.imageio's deadline reader)
_.readinto  # io.RawIOBase
_._launch  # multiprocessing Popen (indexer.workers: decode workers started with a clean env)
_._Popen  # multiprocessing Process
_.sentinel  # multiprocessing Popen
_.finalizer  # multiprocessing Popen
Process  # multiprocessing context attribute
GuardedHttpToolsProtocol  # serve.connections: named to uvicorn by an import string
GuardedH11Protocol  # serve.connections: named to uvicorn by an import string
put_items  # serve.item_routes: a FastAPI route, registered by its decorator
delete_item  # serve.item_routes: a FastAPI route, registered by its decorator
_.send_400_response  # uvicorn's HttpToolsProtocol
_._usage_display_name  # click/typer help formatting (mmsearch.cli.help)
_.__class__  # click/typer help formatting
_.do_GET  # http.server.BaseHTTPRequestHandler (test HTTP servers)
_.log_message  # http.server.BaseHTTPRequestHandler
protocol_version  # http.server.BaseHTTPRequestHandler
pytestmark  # pytest module marks
pytest_plugins  # pytest: plugin modules a conftest loads (the moto S3 server fixtures)

# Record fields that are serialised or shown (asdict, JSON reports), not read by name.
embed_s  # indexer.report.IndexReport: seconds spent embedding
unmatched  # indexer.sidecar.SidecarJoin
images_without_row  # indexer.sidecar.SidecarJoin
reached_target  # ann.tuning.TuneResult: whether the tuned pair met the target recall
description  # evaluation.variants.Variant: what a search variant does, for people
embedded_on_rerun  # tests/kill_harness.TrialResult
lang  # tests/readme_doc.Block: a README fence's info string

# Read by LanceDB's native full-text core (storage.fulltext's query objects stand in for
# lancedb's own, duck-typed).
boost
fuzziness
max_expansions
operator
prefix_length
document_granularity

# Protocol methods with no caller yet.
file_stats  # search.source.SnapshotSource: ids' indexed mtime and size, for the re-rank stage

# Callback and fixture parameters that a signature requires.
per_epoch  # cli.finetune's on_start(total_steps, steps_per_epoch) callback
show_version  # typer's --version option: its callback does the work
output_names  # models.openvino_session: ONNX Runtime's Session.run(output_names, feed) signature
empty_hf_cache  # pytest fixture used for its effect
two_threads  # pytest fixture used for its effect (a two-thread OpenMP team)
