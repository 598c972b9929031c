"""Losses of ``mmsearch-tiny-itm`` training beside the ITM head's cross-entropy.

Image-text contrastive (ITC) on the unimodal towers, the per-object check on the
vision tower's patches, and the two ranking losses (per image over its negative
captions, per caption over its negative images).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from mmsearch.datasets.synthetic import COLOURS


def object_loss(
    head: torch.nn.Module, image_embeds: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """The per-object check: a linear probe on pooled patch states names each region's object.

    Patch states (CLS dropped) are averaged over the left half of the patch grid, the
    right half and the whole grid; ``head`` predicts colour and shape of each region's
    object (:func:`object_targets`). It trains the vision tower to encode *what* is in
    each half, which the cross-attention then reads; the probe is not saved.
    """
    patches = image_embeds[:, 1:, :]
    grid = int(round(patches.shape[1] ** 0.5))
    cells = patches.reshape(patches.shape[0], grid, grid, -1)
    half = grid // 2
    pooled = torch.stack(
        [cells[:, :, :half].mean((1, 2)), cells[:, :, half:].mean((1, 2)), cells.mean((1, 2))],
        dim=1,
    )  # (images, 3, hidden)
    logits = head(pooled)
    n_colours = len(COLOURS)
    colour = F.cross_entropy(
        logits[..., :n_colours].flatten(0, 1), targets[..., 0].flatten(), ignore_index=-100
    )
    shape = F.cross_entropy(
        logits[..., n_colours:].flatten(0, 1), targets[..., 1].flatten(), ignore_index=-100
    )
    return colour + shape


def itc_loss(
    model: Any, enc: dict[str, torch.Tensor], labels: torch.Tensor, image_embeds: torch.Tensor
) -> torch.Tensor:
    """BLIP's image-text contrastive loss on the unimodal encoders, with the hard negatives.

    It gives the vision tower a strong early signal (which colours and shapes are in
    the image) before the cross-attention has learned anything. Image → text ranks
    each image's caption against *every* text of the batch, the hard negatives
    included, so the unimodal features must already encode which object is where;
    text → image ranks each caption against the batch's images.
    """
    text = model.text_encoder(
        input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
    ).last_hidden_state
    img = F.normalize(model.vision_proj(image_embeds[:, 0, :]), dim=-1)
    txt = F.normalize(model.text_proj(text[:, 0, :]), dim=-1)
    logits = 20.0 * img @ txt.T  # (images, all texts)
    ids = enc["input_ids"]
    pos_ids = ids[labels == 1]  # one caption per image, in image order
    same = (pos_ids[:, None, :] == ids[None, :, :]).all(-1).float()  # repeated captions match
    i2t = -(same / same.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    pos_logits = logits[:, labels == 1].T  # (captions, images)
    same_pos = same[:, labels == 1]
    t2i = -(same_pos / same_pos.sum(1, keepdim=True) * pos_logits.log_softmax(1)).sum(1).mean()
    return (i2t + t2i) / 2


def rank_loss(logits: torch.Tensor, owner: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per image, cross-entropy of its caption against its negatives on the match margin.

    The margin ``logit[match] - logit[no match]`` orders candidates exactly as the
    match probability does, so this trains the ranking a re-ranker is used for.
    """
    margin = logits[:, 1] - logits[:, 0]
    n = int(owner.max()) + 1
    start = torch.zeros(n + 1, dtype=torch.long)
    start[1:] = torch.bincount(owner, minlength=n).cumsum(0)
    slot = torch.arange(len(owner)) - start[owner]
    table = torch.full((n, int(slot.max()) + 1), float("-inf"), dtype=margin.dtype)
    table[owner, slot] = margin
    has_neg = (labels == 0).long().bincount(owner, minlength=n) > 0
    pos = margin[labels == 1]
    return (table.logsumexp(1) - pos)[has_neg].mean()


def text_rank_loss(logits: torch.Tensor, group: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per caption, cross-entropy of its own image against the other images it was paired with.

    Rows sharing ``group`` carry the same caption on different images; for each match
    row, the softmax of the match margin runs over that row and the group's no-match
    rows. This is the comparison text→image re-ranking makes (one caption, many
    candidate images); captions paired with no other image add nothing. Zero when no
    caption has a negative image.
    """
    margin = logits[:, 1] - logits[:, 0]
    losses = []
    for g in torch.unique(group[labels == 1]).tolist():
        rows = group == g
        negs = margin[rows & (labels == 0)]
        if len(negs) == 0:
            continue
        for pos in margin[rows & (labels == 1)]:
            losses.append(torch.logsumexp(torch.cat([pos[None], negs]), 0) - pos)
    if not losses:
        return margin.sum() * 0.0
    return torch.stack(losses).mean()
