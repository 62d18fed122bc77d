"""clsa.distributed.wrap_ddp on a real 4-process gloo group: a process that joins mid-run (a resume) reduces its
first gradients exactly as a process that ran from the start, only with `reproducible` (the fixed buckets)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
import torchvision
from conftest import free_port

from clsa.distributed import wrap_ddp

WORLD, STEPS, RESUME_AT = 4, 3, 2


def _params_after(model: torch.nn.Module, rank: int, first: int, last: int) -> torch.nn.Module:
    """Plain SGD steps first..last-1 on this rank's batches (the same per rank and step in every run)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(first, last):
        g = torch.Generator().manual_seed(100 * step + rank)
        x, y = torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 10, (4,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def _worker(rank: int, port: int, out) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    for reproducible in (True, False):
        same = _same_after_resume(rank, reproducible)
        if rank == 0:
            out[reproducible] = same
    dist.destroy_process_group()


def _same_after_resume(rank: int, reproducible: bool) -> bool:

    def fresh(state: dict | None = None) -> torch.nn.Module:  # a new process's model, from `state` if given
        torch.manual_seed(0)
        net = torchvision.models.resnet18(num_classes=10)
        if state is not None:
            net.load_state_dict(state)
        return wrap_ddp(net, torch.device("cpu"), reproducible)

    whole = _params_after(fresh(), rank, 0, STEPS)
    before = _params_after(fresh(), rank, 0, RESUME_AT)  # preempted after RESUME_AT steps
    resumed = _params_after(fresh(before.module.state_dict()), rank, RESUME_AT, STEPS)
    return all(torch.equal(a, b) for a, b in zip(whole.module.parameters(), resumed.module.parameters(),
                                                  strict=True))


def test_fixed_buckets_make_a_resumed_process_reduce_like_an_uninterrupted_one():
    """With `reproducible` the resumed weights equal the uninterrupted ones bit for bit; without it they differ
    (DDP's rebuilt buckets, the reason wrap_ddp exists, and what shows that the first check can fail)."""
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(free_port(), out), nprocs=WORLD, join=True)
        assert out[True] is True
        assert out[False] is False
