"""Prepare an rclip 3.x data directory that runs offline, with random ViT-B-32-256 weights.

    python benchmarks/rclip_offline.py /tmp/rclip-data
    RCLIP_DATADIR=/tmp/rclip-data /venv/bin/rclip -f "query"

rclip downloads ``ViT-B-32-256-datacomp_s34b_b86k/{visual,textual}.onnx`` and the BPE
vocabulary from the Hugging Face hub only when they are missing from
``$RCLIP_DATADIR`` (``rclip/model_download.py``: ``ensure_downloaded`` checks
``os.path.isfile`` first). This writes those files: the same architecture with
random weights, exported with the input and output names rclip's sessions use
(``input`` -> first output; rclip normalises the features itself), and open_clip's
own vocabulary file. Same FLOPs as the real model; no quality meaning.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

MODEL_SUBDIR = "ViT-B-32-256-datacomp_s34b_b86k"
VOCAB = "tokenizer/bpe_simple_vocab_16e6.txt.gz"


def prepare(datadir: Path) -> Path:
    target = datadir / MODEL_SUBDIR
    if (
        (target / "visual.onnx").is_file()
        and (target / "textual.onnx").is_file()
        and (datadir / VOCAB).is_file()
    ):
        return datadir
    import open_clip  # only now: a benchmark's parent stays small (its children inherit RSS)
    import torch

    target.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32-256", pretrained=None).eval().requires_grad_(False)

    class Visual(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return model.encode_image(x)

    class Textual(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return model.encode_text(x)

    torch.backends.mha.set_fastpath_enabled(False)  # the fused kernel has no ONNX export
    for name, module, example in (
        ("visual.onnx", Visual(), torch.zeros(2, 3, 256, 256)),
        ("textual.onnx", Textual(), torch.zeros(2, 77, dtype=torch.long)),
    ):
        with torch.no_grad():
            torch.onnx.export(
                module,
                (example,),
                str(target / name),
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "n"}, "output": {0: "n"}},
                opset_version=17,
                dynamo=False,
            )
    vocab = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    (datadir / VOCAB).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(vocab, datadir / VOCAB)
    return datadir


def find_rclip(given: str | None = None) -> str | None:
    """The rclip executable: ``given``, else ``$RCLIP``, else ``rclip`` on PATH; None if none.
    (rclip belongs in a venv of its own: ``python -m venv V && V/bin/pip install rclip``.)"""
    import os

    for candidate in (given, os.environ.get("RCLIP"), shutil.which("rclip")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def fresh_datadir(models: Path, work: Path) -> Path:
    """An empty rclip data directory (own database) linking to the prepared model files."""
    import tempfile

    data = Path(tempfile.mkdtemp(prefix="rclip-data-", dir=work))
    (data / MODEL_SUBDIR).symlink_to(models / MODEL_SUBDIR, target_is_directory=True)
    (data / "tokenizer").symlink_to(models / "tokenizer", target_is_directory=True)
    return data


if __name__ == "__main__":
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("datadir", type=Path)
    print(prepare(ap.parse_args().datadir))
