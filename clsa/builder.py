"""The CLSA model: query encoder f_q, momentum key encoder f_k, queue of K negatives, shuffle-BN, the objective.

    loss, stats, keys = model(key, weak, strong)   # one iteration's objective (clsa/losses.py), both --sym passes
    loss.backward(); optimizer.step()
    model.dequeue_and_enqueue(keys)                # after the update: the loss read the queue without a copy

The positives: keys are gathered in global-rank order, so local row i's positive is key row global_rank x N + i.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from clsa.distributed import broadcast_tensor, concat_all_gather, get_rank, get_world_size
from clsa.losses import Objective


class UnknownArch(ValueError):
    """`arch` names no torchvision model."""

    def __init__(self, arch: str) -> None:
        super().__init__(f"{arch!r} is not a torchvision model")
        self.arch = arch


def backbone(arch: str, num_classes: int = 1000) -> nn.Module:
    """torchvision `arch` with randomly initialised weights (nothing is downloaded): the one model factory, for
    pretraining (`build_encoder`) and every evaluation."""
    try:
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    except ValueError:
        raise UnknownArch(arch) from None


def build_encoder(arch: str, dim: int, mlp: bool) -> nn.Module:
    """`backbone(arch, dim)`; with mlp the head is fc = Linear(c, c) -> ReLU -> Linear(c, dim)."""
    encoder = backbone(arch, dim)
    if mlp:
        c = encoder.fc.weight.shape[1]
        encoder.fc = nn.Sequential(nn.Linear(c, c), nn.ReLU(), encoder.fc)
    return encoder


class CLSA(nn.Module):
    """MoCo-style encoders with a d x K queue (K = `K`) and momentum m; `objective` holds T, T2, alpha (and
    whether strong views are trained by DDM or InfoNCE); `sym` adds the second pass of the symmetric variant."""

    def __init__(self, arch: str = "resnet50", dim: int = 128, K: int = 65536, m: float = 0.999,
                 mlp: bool = True, sym: bool = False, channels_last: bool = False,
                 objective: Objective | None = None) -> None:
        super().__init__()
        self.K, self.m, self.sym, self.objective = K, m, sym, objective or Objective()
        self.encoder_q = build_encoder(arch, dim, mlp)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad = False
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self.register_buffer("queue", F.normalize(torch.randn(dim, K), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self._forward_fns: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}  # compile_encoders()

    def compile_encoders(self, view_sizes: int = 4) -> None:
        """`--compile`: torch.compile the training forward of f_q and f_k (static shapes: one graph per view size
        and grad mode, so up to 2 x `view_sizes` graphs of one function; dynamo's recompile limit is raised to
        that, or it would run the rest eagerly). Only the calls from this module are compiled: the encoders stay
        eager modules (evaluation, the kNN monitor) and the state_dict keeps its keys."""
        import torch._dynamo
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * view_sizes)
        self._forward_fns = {"q": torch.compile(self.encoder_q.forward, dynamic=False),
                             "k": torch.compile(self.encoder_k.forward, dynamic=False)}

    def _f(self, which: str, x: torch.Tensor) -> torch.Tensor:
        """f_q (`which` "q") or f_k ("k") of `x`, compiled after compile_encoders(), then L2-normalised in fp32."""
        x = x.contiguous(memory_format=self.memory_format)
        fn = self._forward_fns.get(which) or (self.encoder_q if which == "q" else self.encoder_k)
        return F.normalize(fn(x).float(), dim=1)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """theta_k <- m * theta_k + (1 - m) * theta_q, parameters only (BN buffers are not averaged)."""
        params_k = [p.data for p in self.encoder_k.parameters()]
        params_q = [p.data for p in self.encoder_q.parameters()]
        torch._foreach_mul_(params_k, self.m)
        torch._foreach_add_(params_k, params_q, alpha=1.0 - self.m)

    @torch.no_grad()
    def encode_keys(self, x: torch.Tensor) -> torch.Tensor:
        """Shuffle-BN key encoding. Returns the keys of the whole global batch in global-rank order.

        The global batch is permuted with one permutation (drawn on rank 0), each process encodes its slice, and
        the gathered keys are put back in order with the inverse permutation.
        """
        world = get_world_size()
        if world == 1:
            return self._f("k", x)
        x_all = concat_all_gather(x)
        perm = torch.randperm(x_all.shape[0], device=x.device)
        broadcast_tensor(perm, src=0)
        n = x.shape[0]
        mine = perm[get_rank() * n:(get_rank() + 1) * n]
        k = self._f("k", x_all[mine])
        k_perm = concat_all_gather(k)
        return k_perm[torch.argsort(perm)]

    def encode_query(self, x: torch.Tensor) -> torch.Tensor:
        return self._f("q", x)

    def forward(self, key: torch.Tensor, weak: list[torch.Tensor], strong: list[torch.Tensor]
                ) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """One iteration: (loss, stats, the keys to enqueue after the update). Each view is N images of this
        process; one encoder_q forward per view (BN statistics per view and resolution)."""
        self.momentum_update()
        # Keys first: the same values either way, but on CPU it reuses memory the query graph would otherwise
        # page-fault in again (benchmarks/bench_alloc.py).
        keys = self.encode_keys(key)
        keys2 = self.encode_keys(weak[0]) if self.sym else None
        q = [self.encode_query(v) for v in weak]
        s = [self.encode_query(v) for v in strong]
        key_query = self.encode_query(key) if self.sym else None
        # The positive of local row i is row global_rank x N + i of the keys (gathered in global-rank order).
        offset = get_rank() * key.shape[0]
        queue = self.queue.detach()  # no copy: dequeue_and_enqueue overwrites it only after backward
        loss, stats = self.objective(q, s, keys, queue, offset)
        if not self.sym:
            return loss, stats, keys
        # --sym 1, pass 2: the other weak queries and f_q(key view) against k2 = f_k(weak view 0); k2 is enqueued.
        loss2, stats2 = self.objective(q[1:] + [key_query], s, keys2, queue, offset)
        for name in ("infonce", "ddm", "n_infonce", "n_ddm"):
            stats[name] += stats2[name]
        return loss + loss2, stats, keys2

    @torch.no_grad()
    def dequeue_and_enqueue(self, keys: torch.Tensor, only_if: torch.Tensor | None = None) -> None:
        """Write the N_g global keys into columns [ptr, ptr + N_g) (mod K) and advance the pointer, all on the
        device (no host synchronisation). `only_if` (a bool tensor): leave queue and pointer as they are when false."""
        n = keys.shape[0]
        idx = (torch.arange(n, device=keys.device) + self.queue_ptr) % self.K
        new = keys.t().to(self.queue.dtype)
        if only_if is not None:
            new = torch.where(only_if, new, self.queue[:, idx])
        self.queue.index_copy_(1, idx, new)
        self.queue_ptr.add_(n if only_if is None else only_if.long() * n).remainder_(self.K)
