"""Image-text match probabilities from a BLIP ITM head, batched, query side encoded once.

``BlipForImageTextRetrieval`` reads an image and a text *jointly*: the text encoder
cross-attends to the image's patch embeddings and the ITM head classifies the pair
as match / no match. That is what tells ``a red circle to the left of a blue
square`` from ``a blue circle to the left of a red square``, which a dual encoder
(CLIP) embeds almost alike.

>>> scorer = ItmScorer.load("mmsearch-tiny-itm", device="cpu")   # doctest: +SKIP
>>> scorer.score_images("a red circle to the left of a blue square", images)  # doctest: +SKIP
array([0.98, 0.03, ...], dtype=float32)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from mmsearch.rerank.loader import load_itm_model, rerank_defaults


def _resolve_device(device: str | None) -> str:
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class ItmScorer:
    """A loaded ITM model plus its processor.

    On CUDA the model runs under bf16 autocast (fp16 where bf16 is unsupported);
    on CPU in fp32. ``batch_size`` bounds how many pairs go through the text
    encoder at once. ``default_blend`` is the weight of the ITM probability that the
    model's folder recommends for blending with the first-stage score
    (:func:`~mmsearch.rerank.loader.rerank_defaults`), ``None`` for ITM alone.
    """

    def __init__(
        self, model: Any, processor: Any, name: str, device: str, *, batch_size: int = 32
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.processor = processor
        self.name = name
        self.device = device
        self.batch_size = batch_size
        self.default_blend: float | None = None

    @classmethod
    def load(cls, name: str, device: str | None = None, *, batch_size: int = 32) -> ItmScorer:
        """Loads ``name`` (registered name, local folder or Hugging Face id); see :mod:`.loader`."""
        dev = _resolve_device(device)
        defaults = rerank_defaults(name)
        model, processor = load_itm_model(name, dev)
        scorer = cls(model, processor, name, dev, batch_size=batch_size)
        scorer.default_blend = defaults.get("blend")
        return scorer

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        if self.device.startswith("cuda"):
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            with torch.autocast("cuda", dtype=dtype):
                yield
        else:
            yield

    def _pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        out = self.processor.image_processor(images=list(images), return_tensors="pt")
        return out["pixel_values"].to(self.device)

    def _tokens(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.processor.tokenizer(
            list(texts), padding=True, truncation=True, max_length=64, return_tensors="pt"
        )
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def _encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.vision_model(pixel_values=pixel_values).last_hidden_state

    def _match(
        self, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Match probability of row ``i`` of the texts against row ``i`` of the image embeddings."""
        image_atts = torch.ones(
            image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device
        )
        hidden = self.model.text_encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts,
        ).last_hidden_state
        return self.model.itm_head(hidden[:, 0, :]).float().softmax(-1)[:, 1]

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The vision tower's patch embeddings of ``images`` (batched), for :meth:`score_embeds`."""
        out: list[torch.Tensor] = []
        with self._autocast():
            for start in range(0, len(images), self.batch_size):
                out.append(
                    self._encode_images(self._pixels(images[start : start + self.batch_size]))
                )
        return torch.cat(out)

    @torch.inference_mode()
    def score_embeds(self, text: str, image_embeds: torch.Tensor) -> npt.NDArray[np.float32]:
        """Match probability of ``text`` against images already encoded by :meth:`encode_images`."""
        ids, mask = self._tokens([text])
        out: list[torch.Tensor] = []
        with self._autocast():
            for start in range(0, image_embeds.shape[0], self.batch_size):
                embeds = image_embeds[start : start + self.batch_size]
                n = embeds.shape[0]
                out.append(self._match(embeds, ids.expand(n, -1), mask.expand(n, -1)))
        return torch.cat(out).cpu().numpy().astype(np.float32) if out else np.zeros(0, np.float32)

    @torch.inference_mode()
    def score_pairs(
        self, image_embeds: torch.Tensor, image_index: Sequence[int], texts: Sequence[str]
    ) -> npt.NDArray[np.float32]:
        """Match probability of ``texts[j]`` against ``image_embeds[image_index[j]]``, batched.

        Any mix of (image, text) pairs in one call: evaluations score many queries'
        candidates together. Each distinct text is tokenised once.
        """
        if len(image_index) != len(texts):
            raise ValueError(f"{len(image_index)} image indices for {len(texts)} texts")
        if not texts:
            return np.zeros(0, dtype=np.float32)
        distinct = list(dict.fromkeys(texts))
        ids, mask = self._tokens(distinct)
        row = {text: i for i, text in enumerate(distinct)}
        text_rows = torch.tensor([row[t] for t in texts], device=ids.device)
        images = torch.as_tensor(list(image_index), device=image_embeds.device)
        out: list[torch.Tensor] = []
        with self._autocast():
            for start in range(0, len(texts), self.batch_size):
                part = slice(start, start + self.batch_size)
                rows = text_rows[part]
                out.append(self._match(image_embeds[images[part]], ids[rows], mask[rows]))
        return torch.cat(out).cpu().numpy().astype(np.float32)

    def score_images(self, text: str, images: Sequence[Image.Image]) -> npt.NDArray[np.float32]:
        """Match probability of ``text`` against each image (text tokenised once, images batched)."""
        if not images:
            return np.zeros(0, dtype=np.float32)
        return self.score_embeds(text, self.encode_images(images))

    @torch.inference_mode()
    def score_texts(self, image: Image.Image, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Match probability of ``image`` against each text (image encoded once)."""
        if not texts:
            return np.zeros(0, dtype=np.float32)
        out: list[torch.Tensor] = []
        with self._autocast():
            embeds = self._encode_images(self._pixels([image]))
            for start in range(0, len(texts), self.batch_size):
                ids, mask = self._tokens(texts[start : start + self.batch_size])
                out.append(self._match(embeds.expand(ids.shape[0], -1, -1), ids, mask))
        return torch.cat(out).cpu().numpy().astype(np.float32)
