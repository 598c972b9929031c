"""A causal text tower's ONNX graph takes any sequence length: the encoder cuts each
batch after its last end-of-text token, and nothing a query returns changes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from mmsearch.models import ModelSpec
from mmsearch.models.backends import load_encoder
from mmsearch.models.exports import SHIPPED_TINY_EXPORT
from mmsearch.models.onnx_encoder import OnnxEncoder, used_length
from mmsearch.models.text_length import agrees_when_cut, causal_text_forward

TINY = ModelSpec("mmsearch-tiny")
TEXTS = [
    "a red circle on the left",
    "blue square",
    "Hello, World!! it's 2024 — naïve café 😀",
    "!!!",  # "!" is token id 0, the padding id: the cut must not stop at it
    "word " * 80,  # the whole context
    "",
]


class _Spy:
    """The real session, recording the width of every token batch it is fed."""

    def __init__(self, session: Any) -> None:
        self.session, self.widths = session, []

    def run(self, names: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.widths.append(feed["tokens"].shape[1])
        result: list[np.ndarray] = self.session.run(names, feed)
        return result


def _spied(encoder: OnnxEncoder) -> _Spy:
    spy = _Spy(encoder._session("text"))
    encoder._sessions["text"] = spy
    return spy


def test_used_length_ends_at_the_last_end_token() -> None:
    sot, eot = 49406, 49407
    assert used_length(np.array([[sot, 0, 0, eot, 0, 0]])) == 4  # "!!" inside the text
    assert used_length(np.array([[sot, 5, eot, 0], [sot, eot, 0, 0]])) == 3
    assert used_length(np.array([[sot, *range(1, 6), eot]])) == 7


def test_the_shipped_graph_gives_the_same_features_cut_or_whole() -> None:
    encoder = load_encoder(TINY, backend="onnx")
    assert isinstance(encoder, OnnxEncoder) and encoder.text_any_length
    tokens = encoder.tokenize(TEXTS)
    session = encoder._session("text")
    whole = session.run(None, {"tokens": tokens})[0]
    for row in range(len(TEXTS)):
        one = tokens[row : row + 1]
        cut = np.ascontiguousarray(one[:, : used_length(one)])
        fills_context = TEXTS[row].startswith("word")
        assert (cut.shape[1] == tokens.shape[1]) == fills_context
        np.testing.assert_allclose(session.run(None, {"tokens": cut})[0][0], whole[row], atol=2e-6)


def test_the_encoder_feeds_each_batch_cut_after_its_longest_text() -> None:
    encoder = OnnxEncoder(SHIPPED_TINY_EXPORT, TINY, threads=1)
    spy = _spied(encoder)
    texts = ["blue square", "a red circle on the left", "word " * 80, "red"]
    out = encoder.encode_texts(texts, batch_size=2)
    # sot + 6 words + eot; then the full context (a truncated text) with "red" beside it
    assert spy.widths == [8, encoder.context_length]
    single = np.stack([encoder.encode_texts([t])[0] for t in texts])
    np.testing.assert_allclose(out, single, atol=2e-6)  # the batch's padding changes nothing


def test_an_export_of_fixed_length_is_fed_the_whole_context(tmp_path: Path) -> None:
    """Exports without ``text_any_length`` (bidirectional towers) get the full context."""
    folder = tmp_path / "export"
    shutil.copytree(SHIPPED_TINY_EXPORT, folder)
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    meta["text_any_length"] = False
    (folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    encoder = OnnxEncoder(folder, TINY, threads=1)
    spy = _spied(encoder)
    encoder.encode_texts(["blue square"])
    assert spy.widths == [encoder.context_length]


def _clip(**text: Any) -> CLIP:
    torch.manual_seed(0)
    vision = CLIPVisionCfg(layers=1, width=32, patch_size=8, image_size=16, head_width=16)
    text_cfg = CLIPTextCfg(context_length=12, vocab_size=64, width=32, heads=2, layers=2, **text)
    return CLIP(16, vision, text_cfg).eval()


def _tokens() -> torch.Tensor:
    tokens = torch.zeros((3, 12), dtype=torch.long)
    tokens[0, :4] = torch.tensor([62, 5, 0, 63])  # id 0 inside a text
    tokens[1, :3] = torch.tensor([62, 7, 63])
    tokens[2, :6] = torch.tensor([62, 1, 2, 3, 4, 63])
    return tokens


def test_causal_towers_pooling_at_the_end_token_may_be_cut() -> None:
    model = _clip()
    forward = causal_text_forward(model)
    assert forward is not None
    tokens = _tokens()
    assert agrees_when_cut(forward, model, tokens)
    with torch.no_grad():
        whole = model.encode_text(tokens)
        np.testing.assert_allclose(forward(tokens[:, :6]), whole, atol=1e-5)


@pytest.mark.parametrize("text", [{"no_causal_mask": True}, {"pool_type": "last"}])
def test_bidirectional_or_last_pooled_towers_keep_the_whole_context(text: dict[str, Any]) -> None:
    assert causal_text_forward(_clip(**text)) is None


def test_a_forward_that_disagrees_with_encode_text_is_refused() -> None:
    model = _clip()
    assert not agrees_when_cut(lambda t: model.encode_text(t) + 1.0, model, _tokens())
