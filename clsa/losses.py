"""CLSA losses as pure functions: no models, no processes.

Notation (the paper's): q_a are the L2-normalised weak queries, s_b the strong ones, k the keys of the
global batch (N_g x d, rows in global-rank order), Q the queue (d x K). Candidates c(x) = [x k^T, x Q].

    InfoNCE_a = CE(c(q_a) / T, offset + i)
    p_a       = softmax(c(q_a) / T2)                    (stop-gradient target)
    DDM_ab    = -mean_i sum_j p_a[i, j] log_softmax(c(s_b) / T2)[i, j]
    L         = sum_a InfoNCE_a + alpha * sum_a sum_b DDM_ab

Terms are summed over views and pairs. Everything is computed in float32 with log_softmax.

`clsa_loss` is the objective above; `strong_infonce_loss` is the ablation that uses each strong view as one more
InfoNCE query instead: L = sum_a InfoNCE(q_a) + alpha sum_b InfoNCE(s_b). `Objective` holds T, T2, alpha and the
choice between the two. Both run outside any autocast region of the caller (float32 whatever the encoders used).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clsa.metrics import topk_accuracy  # torch only


def candidate_logits(x: torch.Tensor, keys: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
    """c(x) = [x k^T, x Q] for x of shape (..., N, d): similarities to all N_g + K candidates."""
    return torch.cat([x @ keys.t(), x @ queue], dim=-1)


def _weak_terms(weak: Sequence[torch.Tensor], strong: Sequence[torch.Tensor], keys: torch.Tensor,
                queue: torch.Tensor, label_offset: int, T: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor | float]]:
    """Shared part of both objectives: every view's candidates c(x) in one matmul ((W + S) x N x (N_g + K)), the
    positives' indices, sum_a InfoNCE_a and the stats of the weak views."""
    if not weak:
        raise ValueError("the loss needs at least one weak view")
    keys, queue = keys.float(), queue.float()
    views = torch.stack([v.float() for v in (*weak, *strong)])  # (W + S) x N x d
    logits = candidate_logits(views, keys, queue)  # (W + S) x N x (N_g + K)
    n_weak, n = len(weak), weak[0].shape[0]
    labels = torch.arange(n, device=logits.device) + label_offset
    weak_logits = logits[:n_weak]
    info = F.cross_entropy((weak_logits / T).flatten(0, 1), labels.repeat(n_weak), reduction="sum") / n
    acc1, acc5 = topk_accuracy(weak_logits[0].detach(), labels, on_device=True)
    stats = {"infonce": info.detach(), "ddm": torch.zeros((), device=info.device), "acc1": acc1, "acc5": acc5,
             "n_infonce": float(n_weak), "n_ddm": 0.0}
    return logits, labels, info, stats


def clsa_loss(weak: Sequence[torch.Tensor], strong: Sequence[torch.Tensor], keys: torch.Tensor, queue: torch.Tensor,
              label_offset: int, T: float, T2: float, alpha: float
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
    """CLSA objective for one set of keys: sum_a InfoNCE_a + alpha sum_a sum_b DDM_ab. Returns (loss, stats).

    Args:
        weak: W tensors (N x d), L2-normalised embeddings of the picked weak views.
        strong: S tensors (N x d), L2-normalised embeddings of the picked strong views (may be empty).
        keys: N_g x d keys of the global batch, rows in global-rank order.
        queue: d x K negatives (detached).
        label_offset: global rank x N; the positive of local row i is key row label_offset + i.
        T, T2: InfoNCE and DDM temperatures. alpha: DDM weight.

    stats: 'infonce' and 'ddm' (the two sums), 'acc1'/'acc5' (instance retrieval of the first weak view), as
    detached 0-d tensors on the device (read them when printing: no host synchronisation per step), and
    'n_infonce'/'n_ddm' (number of summed terms, floats).

    One matmul computes every view's candidates, and sum_a sum_b DDM_ab is evaluated as
    -mean_i sum_j (sum_a p_a)[i, j] (sum_b log p_b)[i, j], which is the same sum without W x S products.
    """
    logits, _, info, stats = _weak_terms(weak, strong, keys, queue, label_offset, T)
    n_weak = len(weak)
    stats["n_ddm"] = float(n_weak * len(strong))
    if not strong or alpha == 0:
        return info, stats
    p_sum = F.softmax(logits[:n_weak].detach() / T2, dim=-1).sum(0)
    logp_sum = F.log_softmax(logits[n_weak:] / T2, dim=-1).sum(0)
    ddm_sum = -(p_sum * logp_sum).sum(-1).mean()
    stats["ddm"] = ddm_sum.detach()
    return info + alpha * ddm_sum, stats


def strong_infonce_loss(weak: Sequence[torch.Tensor], strong: Sequence[torch.Tensor], keys: torch.Tensor,
                        queue: torch.Tensor, label_offset: int, T: float, alpha: float
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
    """The naive use of strong views (`--strong_loss infonce`, the ablation CLSA argues against): every strong view
    is one more InfoNCE query against the same keys and queue, positive = its own image's key, weighted by alpha:

        L = sum_a InfoNCE_a(q_a) + alpha * sum_b InfoNCE_b(s_b),   all at temperature T; no DDM term.

    Arguments and stats as `clsa_loss` (no T2); stats['ddm'] holds sum_b InfoNCE_b(s_b) and 'n_ddm' is S.
    """
    logits, labels, info, stats = _weak_terms(weak, strong, keys, queue, label_offset, T)
    n_weak, n_strong, n = len(weak), len(strong), weak[0].shape[0]
    stats["n_ddm"] = float(n_strong)
    if not strong or alpha == 0:
        return info, stats
    strong_sum = F.cross_entropy((logits[n_weak:] / T).flatten(0, 1), labels.repeat(n_strong),
                                 reduction="sum") / n
    stats["ddm"] = strong_sum.detach()
    return info + alpha * strong_sum, stats


@dataclass(frozen=True)
class Objective:
    """T, T2, alpha and what the strong views are trained with: "ddm" (CLSA, `clsa_loss`) or "infonce" (the
    ablation, `strong_infonce_loss`). Called as objective(weak, strong, keys, queue, label_offset) -> (loss, stats)."""
    T: float = 0.2
    T2: float = 0.2
    alpha: float = 1.0
    strong_loss: str = "ddm"

    def __post_init__(self) -> None:
        if self.strong_loss not in ("ddm", "infonce"):
            raise ValueError(f"strong_loss must be 'ddm' or 'infonce', got {self.strong_loss!r}")

    @property
    def strong_label(self) -> str:
        """How progress lines name stats['ddm']: DDM, or StrongNCE for the ablation."""
        return "StrongNCE" if self.strong_loss == "infonce" else "DDM"

    def __call__(self, weak: Sequence[torch.Tensor], strong: Sequence[torch.Tensor], keys: torch.Tensor,
                 queue: torch.Tensor, label_offset: int) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        with torch.autocast(keys.device.type, enabled=False):
            if self.strong_loss == "infonce":
                return strong_infonce_loss(weak, strong, keys, queue, label_offset, self.T, self.alpha)
            return clsa_loss(weak, strong, keys, queue, label_offset, self.T, self.T2, self.alpha)
