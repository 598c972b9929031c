"""Writes mmsearch-tiny's ONNX export shipped in the package, from its shipped weights.

    python scripts/export_tiny_onnx.py            # mmsearch/models/weights/mmsearch-tiny-onnx
    python scripts/export_tiny_onnx.py --out DIR  # elsewhere (tests/test_shipped_onnx.py)

Run it whenever ``mmsearch/models/weights/mmsearch-tiny.safetensors`` or the exporter
changes (``tests/test_shipped_onnx.py`` fails until the shipped export matches them).
Needs the full installation (torch, open_clip, onnx); the shipped export then lets the
demo and every mmsearch-tiny index run on ONNX Runtime alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmsearch.models.exports import SHIPPED_TINY_EXPORT, weights_file
from mmsearch.models.onnx_export import write_shipped_export
from mmsearch.models.spec import TINY_MODEL_NAME, ModelSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SHIPPED_TINY_EXPORT, help="export folder")
    args = parser.parse_args()
    spec = ModelSpec(TINY_MODEL_NAME, "")
    weights = weights_file(spec)
    assert weights is not None
    target = write_shipped_export(spec, weights, args.out)
    sizes = {p.name: p.stat().st_size for p in sorted(target.iterdir())}
    print(
        f"wrote {target}: "
        + ", ".join(f"{name} {size / 1e6:.2f} MB" for name, size in sizes.items())
    )


if __name__ == "__main__":
    main()
