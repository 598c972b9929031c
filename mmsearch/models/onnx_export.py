"""Export a CLIP model's towers to ONNX, once per model spec and weights.

Each export lives in its own directory under ``<user cache>/onnx/``, named by the model
spec, the sha256 of the weights file and the quantisation, holding:

- ``text.onnx``: int64 tokens ``(N, L)`` -> unit float32 ``(N, dim)``, where L is any
  length up to ``context_length`` for causal text towers (``text_any_length`` in the
  meta; the encoder cuts each batch's padding) and ``context_length`` otherwise;
- ``image.onnx``: uint8 ``(N, S, S, 3)`` pixels -> unit float32 ``(N, dim)``; the
  scaling and mean/std normalisation are inside the graph, as in the torch encoder;
- ``tokenizer.json``: open_clip's BPE vocabulary as a Hugging Face ``tokenizers``
  model, so that text queries tokenise without importing torch or open_clip;
- ``meta.json``: dimension, image size, context length, special tokens, sources.

``exports.json`` maps ``spec key + quantisation + version`` to the export directory and the
weights file's size and mtime: a later process finds its export by reading that file
and one ``stat``, without importing torch (see :mod:`mmsearch.models.onnx_encoder`).
This module imports torch; it runs only when an export is missing, and in
``scripts/export_tiny_onnx.py``, which writes the export shipped in the package
(:func:`write_shipped_export`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmsearch.errors import ModelLoadError
from mmsearch.models.cache import file_fingerprint, read_json, write_json_atomic
from mmsearch.models.exports import EXPORT_VERSION, exports_registry, onnx_root, registry_key
from mmsearch.models.spec import ModelSpec
from mmsearch.models.text_length import agrees_when_cut, causal_text_forward

if TYPE_CHECKING:
    from mmsearch.models.encoder import ClipEncoder

OPSET = 17
#: torch.export's ONNX translator starts at opset 18.
DYNAMO_OPSET = 18
QUANTIZE_CHOICES = (None, "int8")
#: The pre-tokenisation pattern of CLIP's BPE tokenizer (open_clip ``SimpleTokenizer``).
CLIP_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def export_onnx(spec: ModelSpec, *, quantize: str | None = None) -> Path:
    """The export directory of ``spec`` (exported now when missing); see the module doc."""
    if quantize not in QUANTIZE_CHOICES:
        raise ModelLoadError(f"unknown quantisation {quantize!r}; choose int8 or leave it out")
    from mmsearch.models import loader

    loader.register_model_configs()
    loader.check_architecture(spec.name)
    pretrained = loader.resolve_pretrained(spec)
    weights = loader.checkpoint_path(spec, pretrained)
    if weights is None:
        raise ModelLoadError(
            f"ONNX export needs a local weights file for {spec.key}; use --backend torch"
        )
    digest = file_fingerprint(weights)
    ident = json.dumps([spec.to_json(), digest, quantize, EXPORT_VERSION, OPSET])
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in spec.key)[:60]
    target = onnx_root() / f"{name}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"
    if not (target / "meta.json").is_file():
        if quantize == "int8":
            from mmsearch.models.quantize import quantize_export

            quantize_export(export_onnx(spec), target, spec=spec)
        else:
            _export_into(target, spec, weights, digest)
    _register(spec, quantize, weights, target)
    return target


def _register(spec: ModelSpec, quantize: str | None, weights: str, target: Path) -> None:
    st = os.stat(weights)
    path = exports_registry()
    registry = read_json(path)
    registry[registry_key(spec, quantize)] = {
        "dir": target.name,
        "weights": os.path.realpath(weights),
        "stamp": f"{st.st_size}:{st.st_mtime_ns}",
        "version": EXPORT_VERSION,
    }
    write_json_atomic(path, registry)


def _write_export(folder: Path, spec: ModelSpec, weights: str, digest: str) -> dict[str, Any]:
    """Writes both graphs and the tokenizer of ``spec`` into ``folder``; returns the meta."""
    from mmsearch.models.loader import load_torch_encoder

    encoder = load_torch_encoder(spec, device="cpu", dtype="fp32")
    text_any_length = _export_text(encoder, folder / "text.onnx")
    _export_image(encoder, folder / "image.onnx")
    tokenizer: Any = encoder.tokenizer  # open_clip's tokenizer: context length, special ids
    save_clip_tokenizer(tokenizer, folder / "tokenizer.json")
    return {
        "spec": json.loads(spec.to_json()),
        "weights_sha256": digest,
        "weights": os.path.realpath(weights),
        "quantize": None,
        "dim": encoder.dim,
        "image_size": encoder.image_size,
        "mean": list(encoder.mean),
        "std": list(encoder.std),
        "context_length": int(tokenizer.context_length),
        "text_any_length": text_any_length,
        "sot_token_id": int(tokenizer.sot_token_id),
        "eot_token_id": int(tokenizer.eot_token_id),
        "export_version": EXPORT_VERSION,
    }


def write_shipped_export(spec: ModelSpec, weights: str | os.PathLike[str], target: Path) -> Path:
    """Writes the export shipped in the package for ``spec`` (weights shipped too) into
    ``target``, replacing what is there.

    As :func:`export_onnx`, plus: weights that are exact fp16 values (all of a model
    trained and saved in fp16) are stored as fp16 and cast back to fp32 inside the graph
    (:func:`store_exact_fp16`: half the bytes, the same outputs), and ``meta.json``
    names the weights file by name and size instead of a path of this machine.
    """
    weights = str(weights)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        meta = _write_export(tmp, spec, weights, file_fingerprint(weights))
        for graph in ("text.onnx", "image.onnx"):
            store_exact_fp16(tmp / graph)
        meta["weights"] = os.path.basename(weights)
        meta["weights_size"] = os.stat(weights).st_size
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def store_exact_fp16(path: Path, min_elements: int = 1024) -> int:
    """Stores each float32 initializer of the graph at ``path`` that fp16 holds exactly
    (and has at least ``min_elements``) as fp16, followed by a ``Cast`` back to float32.

    The graph computes exactly as before: ONNX Runtime folds the casts into float32
    weights when it creates a session (and saves them so, :mod:`mmsearch.models.ort_session`).
    A weight fp16 does not hold exactly stays float32. Returns the number stored as fp16.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    kept, casts = [], []
    for init in graph.initializer:
        arr = numpy_helper.to_array(init) if init.data_type == TensorProto.FLOAT else None
        if arr is None or arr.size < min_elements:
            kept.append(init)
            continue
        half = arr.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), arr):
            kept.append(init)
            continue
        stored = numpy_helper.from_array(half, f"{init.name}__fp16")
        kept.append(stored)
        casts.append(helper.make_node("Cast", [stored.name], [init.name], to=TensorProto.FLOAT))
    graph.ClearField("initializer")
    graph.initializer.extend(kept)
    nodes = list(graph.node)
    graph.ClearField("node")
    graph.node.extend(casts + nodes)  # casts first: the graph stays topologically sorted
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return len(casts)


def _export_into(target: Path, spec: ModelSpec, weights: str, digest: str) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        meta = _write_export(tmp, spec, weights, digest)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        try:
            os.replace(tmp, target)
        except OSError:  # another process exported the same model first: keep theirs
            if not (target / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _export_text(encoder: ClipEncoder, path: Path) -> bool:
    """Writes the text tower's graph; True when it takes any sequence length (see
    :func:`~mmsearch.models.text_length.causal_text_forward`), False when it takes
    ``context_length`` tokens only."""
    import torch
    import torch.nn.functional as F

    encoder._ensure("text")
    model = encoder.model
    forward = causal_text_forward(model)
    tokenizer: Any = encoder.tokenizer
    context_length = int(tokenizer.context_length)

    class TextTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # A registered submodule: its weights export as initializers (which
            # quantize_dynamic quantises), not as Constant nodes.
            self.model = model
            self.context_length = context_length

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            encode = forward if forward is not None else self.model.encode_text
            return F.normalize(encode(tokens), dim=-1)

    example = encoder.tokenizer(["a photo", "a red circle on the left"])
    if forward is not None and not agrees_when_cut(forward, model, example):
        forward = None  # an open_clip whose encode_text differs from the copy: full context
    if forward is not None:  # trace a length below the context: the slices stay symbolic
        example = example[:, : max(8, example.shape[1] // 2)]
    _export(TextTower(), example, path, "tokens", dynamic_length=forward is not None)
    return forward is not None


def _export_image(encoder: ClipEncoder, path: Path) -> None:
    import torch
    import torch.nn.functional as F

    encoder._ensure("image")
    model = encoder.model
    mean = torch.tensor(encoder.mean).view(1, 3, 1, 1)
    std = torch.tensor(encoder.std).view(1, 3, 1, 1)

    class ImageTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model  # weights as initializers, as in TextTower

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            x = pixels.permute(0, 3, 1, 2).float() / 255.0
            return F.normalize(self.model.encode_image((x - mean) / std), dim=-1)

    size = encoder.image_size
    example = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    _export(ImageTower(), example, path, "pixels")


def _export(
    module: Any, example: Any, path: Path, input_name: str, *, dynamic_length: bool = False
) -> None:
    import torch

    fastpath = torch.backends.mha.get_fastpath_enabled()
    # nn.MultiheadAttention's fused inference kernel has no ONNX export: trace the plain path.
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        _trace(module, example, path, input_name, dynamic_length)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _trace(module: Any, example: Any, path: Path, input_name: str, dynamic_length: bool) -> None:
    """Exports ``module`` with a dynamic batch; with ``dynamic_length`` also a dynamic
    sequence length (axis 1), which needs torch.export: the TorchScript tracer records
    ``nn.MultiheadAttention``'s key length as a constant of the graph."""
    import warnings

    import torch

    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamic_length:
            _export_any_length(module, example, path, input_name)
            return
        torch.onnx.export(
            module.eval(),
            (example,),
            str(path),
            input_names=[input_name],
            output_names=["embedding"],
            dynamic_axes={input_name: {0: "n"}, "embedding": {0: "n"}},
            opset_version=OPSET,
            dynamo=False,
        )


def _export_any_length(module: Any, example: Any, path: Path, input_name: str) -> None:
    import torch

    batch = torch.export.Dim("n", min=1, max=1 << 20)
    length = torch.export.Dim("length", min=2, max=int(module.context_length))
    torch.onnx.export(
        module.eval(),
        (example,),
        str(path),
        input_names=[input_name],
        output_names=["unit_embedding"],  # "embedding" names a node of the program already
        dynamic_shapes={input_name: {0: batch, 1: length}},
        opset_version=DYNAMO_OPSET,
        dynamo=True,
        external_data=False,
        verbose=False,  # its step-by-step report goes to stdout: the library never prints
    )


def save_clip_tokenizer(tokenizer: Any, path: Path) -> None:
    """Writes open_clip's ``SimpleTokenizer`` BPE as a ``tokenizers`` JSON file.

    Same vocabulary, merges, lower-casing, whitespace folding, split pattern and
    byte-level alphabet as open_clip; :func:`mmsearch.models.onnx_encoder.clean_text`
    applies the ftfy/HTML clean-up open_clip does before BPE.
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    if not hasattr(tokenizer, "bpe_ranks") or not hasattr(tokenizer, "encoder"):
        raise ModelLoadError(
            f"the ONNX backend supports open_clip's CLIP tokenizer only, not {type(tokenizer).__name__}"
        )
    merges = [pair for pair, _ in sorted(tokenizer.bpe_ranks.items(), key=lambda kv: kv[1])]
    bpe = models.BPE(
        vocab=dict(tokenizer.encoder),
        merges=merges,
        end_of_word_suffix="</w>",
        continuing_subword_prefix="",
        fuse_unk=False,
    )
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.save(str(path))
