"""Text towers that may run on any sequence length: the export's any-length forward.

A text query of four tokens needs four positions of a causal text tower, not the 77
of CLIP's context; :func:`causal_text_forward` is the forward pass that
:mod:`mmsearch.models.onnx_export` exports with a dynamic length, and
:func:`agrees_when_cut` the check that it computes what ``encode_text`` does.
Imports torch (only the exporter uses it).
"""

from __future__ import annotations

from typing import Any


def causal_text_forward(model: Any) -> Any:
    """``model.encode_text`` for token rows of any length L <= context, or None where
    the text tower does not allow it.

    open_clip's ``CLIP`` text tower attends causally and pools at the end-of-text token
    (``argmax``/``eos``) or the first: the pooled feature depends on the tokens up to
    that position only, so the padding after the last end-of-text token of a batch can
    be cut off, and a two-word query runs 4 positions instead of 77. The same code as
    ``encode_text`` with the positional embedding and causal mask sliced to L. Towers
    with bidirectional attention (``no_causal_mask``, SigLIP-style), ``last`` pooling
    or a custom text model get None: their graphs take the full context.
    """
    import torch

    names = ("token_embedding", "positional_embedding", "transformer", "ln_final")
    mask = getattr(model, "attn_mask", None)
    pool = getattr(model, "text_pool_type", None)
    if not all(hasattr(model, n) for n in names) or mask is None or pool not in _PREFIX_POOLS:
        return None
    causal = torch.full(mask.shape, float("-inf")).triu(1)
    if not torch.equal(torch.isinf(mask), torch.isinf(causal)):
        return None
    from open_clip.transformer import text_global_pool

    def encode_text(tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]  # symbolic in torch.export (see _trace)
        cast_dtype = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens).to(cast_dtype)
        x = x + model.positional_embedding[:length].to(cast_dtype)
        x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
        x = model.ln_final(x)
        x = text_global_pool(x, tokens, pool, eos_token_id=getattr(model, "text_eos_id", None))
        projection = model.text_projection
        if projection is not None:
            x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
        pooled: torch.Tensor = x
        return pooled

    return encode_text


def agrees_when_cut(forward: Any, model: Any, tokens: Any) -> bool:
    """True when ``forward`` gives ``model.encode_text``'s unit features for ``tokens``
    both whole and cut after the last end-of-text column."""
    import torch
    import torch.nn.functional as F

    used = int(torch.nonzero(tokens.any(dim=0)).max()) + 1
    with torch.no_grad():
        reference = F.normalize(model.encode_text(tokens), dim=-1)
        return all(
            torch.allclose(F.normalize(forward(t), dim=-1), reference, atol=1e-5)
            for t in (tokens, tokens[:, :used])
        )


#: Text pooling that reads a position at or before the last end-of-text token.
_PREFIX_POOLS = ("argmax", "eos", "first")
