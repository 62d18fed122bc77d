"""The CLSA model: query encoder, momentum key encoder, queue of negatives, shuffle-BN.

The model returns normalised embeddings; `clsa.losses.clsa_loss` turns them into the objective, and the training
loop enqueues the keys after the loss is built (`dequeue_and_enqueue`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from clsa import trace
from clsa.distributed import broadcast_tensor, concat_all_gather, get_rank, get_world_size
from ops.errors import UsageError


def backbone(arch: str, num_classes: int = 1000) -> nn.Module:
    """torchvision `arch` with randomly initialised weights (nothing is downloaded): the one model factory, for
    pretraining (`build_encoder`) and every evaluation."""
    try:
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    except ValueError:
        raise UsageError(f"--arch {arch!r} is not a torchvision model") from None


def build_encoder(arch: str, dim: int, mlp: bool) -> nn.Module:
    """`backbone(arch, dim)`; with mlp the head is fc = Linear(c, c) -> ReLU -> Linear(c, dim)."""
    encoder = backbone(arch, dim)
    if mlp:
        c = encoder.fc.weight.shape[1]
        encoder.fc = nn.Sequential(nn.Linear(c, c), nn.ReLU(), encoder.fc)
    return encoder


@dataclass
class Embeddings:
    """Outputs of one forward. `keys`/`keys2` are global (N_g x d, global-rank order)."""
    weak: list[torch.Tensor]
    strong: list[torch.Tensor]
    keys: torch.Tensor
    key_query: torch.Tensor | None = None  # sym=1: encoder_q(key view)
    keys2: torch.Tensor | None = None  # sym=1: encoder_k(weak view 0), shuffled with its own permutation


class CLSA(nn.Module):
    """MoCo-style encoders with a d x K queue (K = `K`), momentum m and temperature-free embedding outputs."""

    def __init__(self, arch: str = "resnet50", dim: int = 128, K: int = 65536, m: float = 0.999,
                 mlp: bool = True, sym: bool = False, channels_last: bool = False) -> None:
        super().__init__()
        self.K, self.m, self.sym = K, m, sym
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
        if trace.enabled():  # tests: the gathered inputs (one number per row), this process's own, the permutation
            trace.record(get_rank(), "keys", gathered=trace.fingerprint(x_all), own=trace.fingerprint(x), perm=perm)
        return k_perm[torch.argsort(perm)]

    def encode_query(self, x: torch.Tensor) -> torch.Tensor:
        return self._f("q", x)

    def forward(self, key: torch.Tensor, weak: list[torch.Tensor], strong: list[torch.Tensor]) -> Embeddings:
        """One separate encoder_q forward per view (BN statistics per view and resolution)."""
        self.momentum_update()
        # Keys first: the same values either way, but on CPU it reuses memory the query graph would otherwise
        # page-fault in again (benchmarks/bench_alloc.py).
        keys = self.encode_keys(key)
        keys2 = self.encode_keys(weak[0]) if self.sym else None
        out = Embeddings(weak=[self.encode_query(v) for v in weak], strong=[self.encode_query(v) for v in strong],
                         keys=keys, keys2=keys2)
        if self.sym:
            out.key_query = self.encode_query(key)
        return out

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
