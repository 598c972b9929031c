"""The ``mmsearch-tiny-itm`` model: its tokenizer, processor and ``BlipConfig``, the ITM forward.

The model is transformers' ``BlipForImageTextRetrieval`` with a small ``BlipConfig``
(a few layers in both towers); its processor is the standard ``BlipProcessor``
(``BlipImageProcessor`` + a BERT WordPiece tokenizer whose vocabulary is built
from the catalog's words with the ``tokenizers`` library). A folder written by
:func:`save` loads with ``BlipForImageTextRetrieval.from_pretrained(dir)`` and
``BlipProcessor.from_pretrained(dir)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, overload

import torch

from mmsearch.training.itm_config import ItmTrainConfig
from mmsearch.training.itm_data import catalog_words

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def build_tokenizer() -> Any:
    """A BERT-style WordPiece tokenizer (transformers) whose vocabulary covers the catalog's words.

    The vocabulary is fixed, in a fixed order: the special tokens, every catalog word,
    then the characters of those words alone and as ``##`` continuations (so any
    other word of those letters still tokenizes); other characters become ``[UNK]``.
    (``WordPieceTrainer`` numbers equally frequent tokens differently from run to run,
    which made runs unrepeatable and scrambled a continued run's word embeddings.)
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    # transformers 5: an alias of BertTokenizer (tokenizers-backed) its type hints omit.
    from transformers import BertTokenizerFast  # type: ignore[attr-defined]

    words = catalog_words()
    chars = sorted({c for word in words for c in word})
    tokens = [*SPECIAL_TOKENS, *words, *chars, *(f"##{c}" for c in chars)]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        model_max_length=32,
    )


def build_processor(image_size: int) -> Any:
    """``BlipProcessor`` with the catalog tokenizer and an ``image_size`` image processor."""
    from transformers import BlipImageProcessor, BlipProcessor

    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    return BlipProcessor(image_processor=image_processor, tokenizer=build_tokenizer())


def build_config(cfg: ItmTrainConfig, tokenizer: Any) -> Any:
    """The small ``BlipConfig`` of ``mmsearch-tiny-itm``."""
    from transformers import BlipConfig

    vocab = tokenizer.get_vocab()
    vision = {
        "hidden_size": cfg.hidden,
        "intermediate_size": cfg.hidden * 2,
        "num_hidden_layers": cfg.vision_layers,
        "num_attention_heads": cfg.heads,
        "image_size": cfg.image_size,
        "patch_size": cfg.patch_size,
        "initializer_range": cfg.init_range,
    }
    text = {
        "vocab_size": len(vocab),
        "hidden_size": cfg.hidden,
        "encoder_hidden_size": cfg.hidden,
        "intermediate_size": cfg.hidden * 2,
        "num_hidden_layers": cfg.text_layers,
        "num_attention_heads": cfg.heads,
        "max_position_embeddings": 32,
        "initializer_range": cfg.init_range,
        "pad_token_id": vocab["[PAD]"],
        "bos_token_id": vocab["[CLS]"],
        "sep_token_id": vocab["[SEP]"],
        "eos_token_id": vocab["[SEP]"],
    }
    return BlipConfig(
        text_config=text,
        vision_config=vision,
        image_text_hidden_size=64,
        projection_dim=64,
        initializer_range=cfg.init_range,
    )


def sincos_positions(grid: int, dim: int) -> torch.Tensor:
    """2-D sin-cos position codes of a ``grid``×``grid`` patch grid, plus a zero row for CLS.

    Half the channels encode the column, half the row, each as sines and cosines of
    geometrically spaced frequencies (as in MAE). Returns ``(1, 1 + grid², dim)``.
    """
    if dim % 4:
        raise ValueError(f"sin-cos positions need a width divisible by 4, got {dim}")
    freqs = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    coords = torch.arange(grid, dtype=torch.float32)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def code(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.cat([code(cols), code(rows)], dim=1)
    return torch.cat([torch.zeros(1, dim), table])[None]


@overload
def itm_logits(
    model: Any,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_index: torch.Tensor,
    image_embeds: torch.Tensor | None = None,
    slot_head: None = None,
) -> torch.Tensor: ...


@overload
def itm_logits(
    model: Any,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_index: torch.Tensor,
    image_embeds: torch.Tensor | None,
    slot_head: torch.nn.Module,
) -> tuple[torch.Tensor, torch.Tensor]: ...


def itm_logits(
    model: Any,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_index: torch.Tensor,
    image_embeds: torch.Tensor | None = None,
    slot_head: torch.nn.Module | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """ITM logits of text ``j`` against image ``image_index[j]``; each image is encoded once.

    With ``slot_head``, also its logits on every token's state after the text tower's
    second-to-last layer (the per-word check; the last layer is left to gather them).
    """
    if image_embeds is None:
        image_embeds = model.vision_model(pixel_values=pixel_values).last_hidden_state
    image_embeds = image_embeds[image_index]
    image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
    out = model.text_encoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        encoder_hidden_states=image_embeds,
        encoder_attention_mask=image_atts,
        output_hidden_states=slot_head is not None,
    )
    logits = model.itm_head(out.last_hidden_state[:, 0, :])
    if slot_head is None:
        return logits
    return logits, slot_head(out.hidden_states[-2])


def save(model: Any, processor: Any, out: Path) -> None:
    """Writes ``config.json``, ``model.safetensors`` and the processor files into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
