"""Weights out of reach: index, query, eval, finetune and label fail with one line, before
torch or open_clip is imported, offline and with an unreachable hub alike; the shipped
table of hub repositories equals the installed open_clip's registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmsearch.datasets.synthetic import generate_catalog
from mmsearch.models.spec import ModelSpec

HUB_SPEC = ModelSpec("ViT-B-32", "laion2b_s34b_b79k")
_PROBE = """
import json, sys
from mmsearch.cli import app
try:
    app({args!r}, standalone_mode=True)
except SystemExit as exc:
    code = exc.code
sys.stdout.flush()
sys.stderr.flush()
print("\\nPROBE=" + json.dumps([code, sorted(m for m in ("torch", "open_clip") if m in sys.modules)]))
"""


@pytest.fixture(scope="module")
def hub_index(tmp_path_factory: pytest.TempPathFactory, fake_encoder_module) -> tuple[Path, Path]:
    """An index stamped with a hub model (vectors from the fake encoder) and its catalog."""
    from mmsearch.indexer.pipeline import IndexOptions, run_index

    root = tmp_path_factory.mktemp("offline")
    cat = generate_catalog(root / "catalog", n=6, seed=21)
    index_dir = root / "index"
    fake_encoder_module.spec = HUB_SPEC
    run_index(
        [cat.root],
        index_dir,
        HUB_SPEC,
        options=IndexOptions(workers=1),
        encoder=fake_encoder_module,
    )
    return cat.root, index_dir


@pytest.fixture(scope="module")
def fake_encoder_module():
    from tests.conftest import FakeEncoder

    return FakeEncoder()


def _env(tmp: Path, online: bool) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_CACHE=str(tmp / "hf"), MMSEARCH_CACHE=str(tmp / "cache"))
    env["HF_HUB_OFFLINE"] = "0" if online else "1"
    if online:  # a hub that refuses connections: the reachability probe's answer is "no"
        env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    return env


def _commands(catalog: Path, index_dir: Path, tmp: Path) -> dict[str, list[str]]:
    hub = ["--model", HUB_SPEC.name, "--pretrained", HUB_SPEC.pretrained]
    return {
        "index": ["index", str(catalog), "--index", str(tmp / "new-index"), *hub],
        "query": ["query", "red circle", "--index", str(index_dir)],
        "eval": ["eval", str(catalog / "catalog.jsonl"), *hub],
        "finetune": [
            "finetune",
            str(catalog / "catalog.jsonl"),
            *hub,
            "--out",
            str(tmp / "ft.safetensors"),
        ],
        "label": ["label", "--labels", "circle,square", "--index", str(index_dir)],
    }


@pytest.mark.parametrize("online", [False, True], ids=["offline", "hub-unreachable"])
@pytest.mark.parametrize("command", ["index", "query", "eval", "finetune", "label"])
def test_weights_out_of_reach_fail_in_one_line_before_torch(hub_index, tmp_path, command, online):
    catalog, index_dir = hub_index
    args = _commands(catalog, index_dir, tmp_path)[command]
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(args=args)],
        capture_output=True,
        text=True,
        env=_env(tmp_path, online),
        timeout=300,
    )
    out, _, probe = done.stdout.rpartition("PROBE=")
    code, heavy = json.loads(probe)
    assert code == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: cannot load weights 'ViT-B-32/laion2b_s34b_b79k'")
    assert ("cannot be reached" if online else "offline mode is on") in lines[0]
    assert lines[0].endswith("use --model mmsearch-tiny (ships with mmsearch)")  # not cut short
    assert heavy == []  # neither torch nor open_clip was imported to find that out
    assert not (tmp_path / "new-index").exists()


def test_shipped_hub_table_is_open_clips_registry():
    from mmsearch.models import hub

    shipped = json.loads(hub.HUB_TABLE.read_text(encoding="utf-8"))["hub"]
    assert shipped == hub.open_clip_hub_table()
    assert hub.hub_files(HUB_SPEC) == (
        "laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
        ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"],
    )
    assert hub.hub_files(ModelSpec("mmsearch-tiny")) is None
    assert hub.hub_files(ModelSpec("ViT-B-32", "./shop.safetensors")) is None
