"""The CLSA training step written plainly, fp32 and NCHW, the 2021 way (clsa-reference.md §2-3), for speed ratios.

Per step: momentum update parameter by parameter; keys from encoder_k (one process: shuffle-BN is the identity);
one encoder_q forward per picked view; for each weak view its own logits [q k^T, q Q] / T and a cross-entropy; for
each (weak, strong) pair the target softmax(c(q_a) * T / T2) of the T-scaled logits and the log of the strong
view's softmax, as in 2021; the terms summed; SGD; the keys enqueued. Same objective as clsa.losses.clsa_loss (which
computes it with one matmul, log_softmax and no W x S products).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class BaselineCLSA(nn.Module):
    """encoder_q, encoder_k, queue and queue_ptr, initialised from a clsa.builder.CLSA (same weights)."""

    def __init__(self, like: nn.Module, T: float = 0.2, T2: float = 0.2, alpha: float = 1.0) -> None:
        super().__init__()
        import copy
        self.encoder_q = copy.deepcopy(like.encoder_q).to(memory_format=torch.contiguous_format)
        self.encoder_k = copy.deepcopy(like.encoder_k).to(memory_format=torch.contiguous_format)
        self.register_buffer("queue", like.queue.detach().clone())
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.m, self.K, self.T, self.T2, self.alpha = like.m, like.K, T, T2, alpha

    @torch.no_grad()
    def _momentum_update(self) -> None:
        for p_q, p_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters(), strict=True):
            p_k.data = p_k.data * self.m + p_q.data * (1.0 - self.m)

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        n, ptr = keys.shape[0], int(self.queue_ptr)
        self.queue[:, ptr:ptr + n] = keys.T
        self.queue_ptr[0] = (ptr + n) % self.K

    def loss(self, views: list[torch.Tensor], num_weak: int) -> tuple[torch.Tensor, torch.Tensor]:
        key, weak, strong = views[0], views[1:1 + num_weak], views[1 + num_weak:]
        self._momentum_update()
        with torch.no_grad():
            k = F.normalize(self.encoder_k(key), dim=1)
        q_weak = [F.normalize(self.encoder_q(v), dim=1) for v in weak]
        q_strong = [F.normalize(self.encoder_q(v), dim=1) for v in strong]
        queue = self.queue.clone().detach()
        labels = torch.arange(key.shape[0], device=key.device)
        loss = torch.zeros((), device=key.device)
        weak_logits = []
        for q in q_weak:
            logits = torch.cat([torch.einsum("nc,mc->nm", q, k), torch.einsum("nc,ck->nk", q, queue)], dim=1) / self.T
            weak_logits.append(logits)
            loss = loss + nn.CrossEntropyLoss()(logits, labels)
        for logits in weak_logits:
            p_weak = F.softmax(logits.detach() * self.T / self.T2, dim=1)
            for s in q_strong:
                s_logits = torch.cat([torch.einsum("nc,mc->nm", s, k), torch.einsum("nc,ck->nk", s, queue)], dim=1)
                p_strong = F.softmax(s_logits / self.T2, dim=1)
                loss = loss - self.alpha * torch.mean(torch.sum(p_weak * torch.log(p_strong), dim=1))
        return loss, k

    def step(self, views: list[torch.Tensor], num_weak: int, optimizer: torch.optim.Optimizer) -> float:
        loss, k = self.loss(views, num_weak)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        self._enqueue(k)
        return float(loss.item())
