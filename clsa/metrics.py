"""`topk_accuracy`: the one top-k metric (pretraining's instance retrieval, linear evaluation, kNN). Torch only."""

from __future__ import annotations

from collections.abc import Sequence

import torch


@torch.no_grad()
def topk_accuracy(scores: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5), counts: bool = False,
                  on_device: bool = False) -> list[float] | list[int] | list[torch.Tensor]:
    """Per k in `ks`, how many rows of `scores` (N x C) have `target` among their k highest; k is capped at C.

    Returns percentages (the float32 mean of the hits, times 100: the numbers pretraining logs), or with
    counts=True the exact number of such rows, for summing over batches and processes. on_device=True: the
    percentages as 0-d tensors on the scores' device (no host synchronisation).
    """
    maxk = min(max(ks), scores.shape[1])
    hit = scores.topk(maxk, dim=1).indices.eq(target[:, None])
    hits = [hit[:, :min(k, maxk)].any(1) for k in ks]
    if counts:
        return [int(h.sum()) for h in hits]
    percents = [h.float().mean() * 100.0 for h in hits]
    return percents if on_device else [p.item() for p in percents]
