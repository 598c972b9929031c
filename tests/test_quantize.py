"""int8 quantisation really quantises: weights held as initializers become integer
matrix products, and a graph whose weights are Constant nodes (which quantize_dynamic
leaves untouched) is refused instead of passing as "int8"."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mmsearch.errors import ModelLoadError
from mmsearch.models.quantize import quantize_graphs, quantized_matmuls


def _graph(path: Path, *, weights_as_constant: bool) -> None:
    w = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), "w"
    )
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    inits = [w]
    if weights_as_constant:
        nodes.insert(0, helper.make_node("Constant", [], ["w"], value=w))
        inits = []
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))


def _export_dir(tmp_path: Path, *, weights_as_constant: bool) -> Path:
    for tower in ("text", "image"):
        _graph(tmp_path / f"{tower}.onnx", weights_as_constant=weights_as_constant)
    (tmp_path / "meta.json").write_text(json.dumps({"quantize": None}))
    return tmp_path


def test_initializer_weights_become_int8(tmp_path: Path) -> None:
    export = _export_dir(tmp_path, weights_as_constant=False)
    before = (export / "text.onnx").stat().st_size
    quantize_graphs(export)
    assert (
        quantized_matmuls(export / "text.onnx") > 0 and quantized_matmuls(export / "image.onnx") > 0
    )
    assert (export / "text.onnx").stat().st_size < before / 2
    assert json.loads((export / "meta.json").read_text())["quantize"] == "int8"


def test_constant_weights_are_refused_not_passed_as_int8(tmp_path: Path) -> None:
    export = _export_dir(tmp_path, weights_as_constant=True)
    with pytest.raises(ModelLoadError, match="changed no weight"):
        quantize_graphs(export)
