"""Build an open_clip model without random initialisation, one tower at a time.

``open_clip.create_model`` builds both towers, initialises every weight randomly and
then overwrites them from the checkpoint: for ViT-B-32 on a small CPU that is over a
second of work thrown away, and a text query never needs the image tower at all.

Here the architecture is built on the ``meta`` device (no memory, no init), and the
checkpoint's tensors are assigned straight into the module
(``load_state_dict(assign=True)``), tower by tower. A ``.safetensors`` checkpoint is
read lazily, so loading the text tower reads only the text tower's bytes.
Architectures this does not cover (timm or Hugging Face towers, ``hf-hub:`` models)
return ``None`` and the caller falls back to ``open_clip.create_model``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import torch

from mmsearch.errors import ModelLoadError

#: State-dict key prefixes of the image tower of an open_clip ``CLIP``; everything
#: else (token embedding, transformer, ln_final, text_projection, logit scale) is text.
IMAGE_PREFIXES = ("visual.",)


def _tower_of(key: str) -> str:
    return "image" if key.startswith(IMAGE_PREFIXES) else "text"


class TowerLoader:
    """Loads the towers of one meta-built CLIP model on demand.

    >>> loader = TowerLoader.create("mmsearch-tiny", "/path/w.safetensors", "cpu")  # doctest: +SKIP
    >>> loader.ensure("text")  # only the text tower's tensors are read  # doctest: +SKIP
    """

    def __init__(self, model: torch.nn.Module, checkpoint: str, device: str) -> None:
        self.model = model
        self.checkpoint = checkpoint
        self.device = device
        self.loaded: set[str] = set()
        self._lock = threading.Lock()
        self._pending: dict[str, torch.Tensor] | None = None  # a pickle checkpoint, read whole
        self._validate()

    def _validate(self) -> None:
        """Fails now, not at the first encode, when the checkpoint does not fit the model.

        A safetensors header lists names and shapes, so this reads no tensor data.
        """
        expected = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        if self.checkpoint.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(self.checkpoint, framework="pt", device="cpu") as fh:
                found = {_strip(k): tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
        else:
            from open_clip.factory import load_state_dict

            self._pending = dict(load_state_dict(self.checkpoint, device="cpu", weights_only=True))
            found = {k: tuple(v.shape) for k, v in self._pending.items()}
        found.pop("text.transformer.embeddings.position_ids", None)
        missing = sorted(set(expected) - set(found))
        wrong = sorted(
            k for k in set(expected) & set(found) if expected[k] != found[k] and k != "logit_scale"
        )
        if missing or wrong:
            raise ModelLoadError(
                f"checkpoint {self.checkpoint} does not match the architecture "
                f"(missing {missing[:3]}, wrong shape {wrong[:3]}); pass the right --model"
            )

    @classmethod
    def create(cls, name: str, checkpoint: str, device: str) -> TowerLoader | None:
        """A loader for ``name`` (a plain open_clip ``CLIP`` config), or None when unsupported."""
        import open_clip

        cfg = open_clip.get_model_config(name)
        if (
            cfg is None
            or cfg.get("custom_text")
            or "timm_model_name" in cfg.get("vision_cfg", {})
            or "hf_model_name" in cfg.get("text_cfg", {})
            or "multimodal_cfg" in cfg
            or not checkpoint.endswith((".safetensors", ".bin", ".pt", ".pth"))
        ):
            return None
        with torch.device("meta"):
            model = open_clip.create_model(
                name, pretrained=None, load_weights=False, precision="fp32", device="meta"
            )
        if type(model).__name__ != "CLIP":
            return None
        model.requires_grad_(False)
        return cls(model.eval(), checkpoint, device)

    def ensure(self, *towers: str) -> None:
        """Makes sure the named towers hold real weights (idempotent, thread-safe)."""
        with self._lock:
            wanted = [t for t in towers if t not in self.loaded]
            if not wanted:
                return
            state = self._read(wanted)
            self._assign(state, wanted)
            self.loaded.update(wanted)

    def _read(self, towers: Iterable[str]) -> dict[str, torch.Tensor]:
        wanted = set(towers)
        if self.checkpoint.endswith(".safetensors"):
            from safetensors import safe_open

            out: dict[str, torch.Tensor] = {}
            with safe_open(self.checkpoint, framework="pt", device="cpu") as fh:
                for key in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
                    if _tower_of(_strip(key)) in wanted:
                        out[_strip(key)] = fh.get_tensor(key)
            return out
        pending = self._pending or {}
        out = {k: v for k, v in pending.items() if _tower_of(k) in wanted}
        for key in out:
            del pending[key]  # handed to the model: do not keep a second reference
        return out

    def _assign(self, state: dict[str, torch.Tensor], towers: list[str]) -> None:
        model: Any = self.model
        state.pop("text.transformer.embeddings.position_ids", None)
        if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
            state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
        expected = {k for k in model.state_dict() if _tower_of(k) in towers}
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - expected)
        if missing or unexpected:
            raise ModelLoadError(
                f"checkpoint {self.checkpoint} does not match the architecture "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]}); pass the right --model"
            )
        for key, value in state.items():
            if value.is_floating_point():
                state[key] = value.float()
        model.load_state_dict(state, strict=False, assign=True)
        if "text" in towers:
            # A non-persistent buffer: not in the checkpoint, so build it here
            # (the same causal mask open_clip builds: -inf above the diagonal).
            n = int(model.attn_mask.shape[0])
            model.attn_mask = torch.full((n, n), float("-inf")).triu_(1)
        if self.device != "cpu":
            for name, tensor in list(_named_tensors(model)):
                if _tower_of(name) in towers and not tensor.is_meta:
                    _move(model, name, self.device)
        if self.device.startswith("cuda") and "image" in towers:
            model.visual.to(memory_format=torch.channels_last)  # conv kernels prefer NHWC on GPUs
        leftover = [n for n, t in _named_tensors(model) if t.is_meta and _tower_of(n) in towers]
        if leftover:
            raise ModelLoadError(f"tensors left unloaded: {leftover[:3]}; pass the right --model")


def _strip(key: str) -> str:
    return key[7:] if key.startswith("module.") else key


def _named_tensors(model: torch.nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    yield from model.named_parameters()
    yield from model.named_buffers()


def _move(model: torch.nn.Module, dotted: str, device: str) -> None:
    """Moves one parameter or buffer (by its dotted name) to ``device`` in place."""
    *path, leaf = dotted.split(".")
    owner: Any = model
    for part in path:
        owner = getattr(owner, part)
    tensor = getattr(owner, leaf)
    if isinstance(tensor, torch.nn.Parameter):
        setattr(owner, leaf, torch.nn.Parameter(tensor.to(device), requires_grad=False))
    else:
        owner._buffers[leaf] = tensor.to(device)
