"""Start training workers: in-process, mp.spawn (one per GPU or --cpu_procs on CPU), or one torchrun worker.

Shared by `main_clsa.py` and `lincls.py`. Reads these attributes of `args`: world_size, rank, dist_url,
dist_backend, gpu, multiprocessing_distributed, cpu_procs, device, choose, nodes_num.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ops.environment import cpu_threads_per_process, raise_file_limit, use_cuda
from ops.errors import UsageError, exit_usage
from ops.runlog import format_duration


@dataclass
class DistContext:
    """Where this worker sits: global rank, world size, rank and process count on its node, device."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    node_rank: int = 0
    device: torch.device = torch.device("cpu")
    # What to do after a lost peer, said at that moment (the worker sets it once it knows its checkpoint).
    rerun_hint: Callable[[], str] = field(default=lambda: "rerun the same command")  # entry points refine it

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


Worker = Callable[[DistContext, argparse.Namespace], None]

EXIT_PEER_LOST = 69  # EX_UNAVAILABLE: another process or node stopped answering; rerun with --resume auto

# How gloo (and the c10d store) say that the other end of a connection is gone or silent past --dist_timeout.
_LOST_PEER = re.compile(r"gloo/transport|connection (reset|closed|refused) by peer|timed out waiting|pair closure|"
                        r"socket timeout|broken pipe", re.IGNORECASE)


def lost_peer(err: BaseException) -> str | None:
    """gloo's message, shortened to its first sentence without the source location, when `err` says that a peer
    process is gone (connection reset or closed, or no answer within --dist_timeout); None for any other error."""
    lost = isinstance(err, (dist.DistNetworkError, dist.DistStoreError)) or (
        isinstance(err, RuntimeError) and _LOST_PEER.search(str(err)))
    if not lost:
        return None
    text = re.sub(r"\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*", "", str(err).strip().splitlines()[0])
    return re.split(r"(?<=[a-z])\. ", text)[0].rstrip(".")


def _torchrun_env() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE"))


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list: 'gpu[03-05,07],cpu1' -> 'gpu03'."""
    head = nodelist.split(",")[0] if "[" not in nodelist.split(",")[0] else nodelist[: nodelist.index("]") + 1]
    if "[" not in head:
        return head
    prefix, ranges = head.split("[", 1)
    return prefix + ranges.rstrip("]").split(",")[0].split("-")[0]


def slurm_to_torch_env(environ: dict | None = None) -> bool:
    """Under srun without torchrun, fill RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE/MASTER_ADDR/MASTER_PORT from
    SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID/SLURM_NTASKS_PER_NODE/SLURM_NODELIST. Returns whether it did."""
    env = os.environ if environ is None else environ
    if "RANK" in env or "SLURM_PROCID" not in env or "SLURM_NTASKS" not in env:
        return False
    env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], env["SLURM_NTASKS"]
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    per_node = env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE", "1").split("(")[0].split(",")[0]
    env["LOCAL_WORLD_SIZE"] = per_node
    env["GROUP_RANK"] = str(int(env["RANK"]) // max(int(per_node), 1))
    env.setdefault("MASTER_ADDR", first_slurm_host(env.get("SLURM_NODELIST", "127.0.0.1")))
    env.setdefault("MASTER_PORT", "29500")
    return True


def _init_group(ctx: DistContext, args: argparse.Namespace, cuda: bool) -> None:
    backend = args.dist_backend if cuda else "gloo"
    if ctx.world_size > 1:
        timeout = datetime.timedelta(minutes=getattr(args, "dist_timeout", 30))
        dist.init_process_group(backend=backend, init_method=args.dist_url, world_size=ctx.world_size,
                                rank=ctx.rank, timeout=timeout)


def _run(ctx: DistContext, args: argparse.Namespace, worker: Worker, prog: str, cuda: bool) -> None:
    if cuda:
        torch.cuda.set_device(ctx.device)
    else:
        torch.set_num_threads(cpu_threads_per_process(ctx.local_world_size))
    try:
        _init_group(ctx, args, cuda)
        worker(ctx, args)
    except UsageError as err:
        if ctx.is_main:
            print(f"{prog}: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except RuntimeError as err:
        detail = lost_peer(err) if ctx.distributed else None
        if detail is None:
            raise
        if ctx.local_rank == 0:  # one line per node
            print(f"{prog}: error: lost contact with a peer process ({detail}; seen by rank {ctx.rank} on node "
                  f"{ctx.node_rank}); {ctx.rerun_hint()}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_PEER_LOST) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _spawned(local_rank: int, worker: Worker, args: argparse.Namespace, prog: str, nproc: int, node_rank: int,
             world: int, cuda: bool) -> None:
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    ctx = DistContext(node_rank * nproc + local_rank, world, local_rank, nproc, node_rank, device)
    _run(ctx, args, worker, prog, cuda)


def plan(args: argparse.Namespace) -> tuple[int, int, int, bool]:
    """(processes per node, node rank, world size, use CUDA) for the flags and the visible hardware."""
    if args.dist_url == "env://":
        slurm_to_torch_env()
    elif "TORCHELASTIC_RUN_ID" in os.environ:
        raise UsageError("running under torchrun: pass the env:// init method (--dist_url env:// in main_clsa.py, "
                         "--dist-url env:// in lincls.py)")
    if getattr(args, "choose", None) and getattr(args, "nodes_num", 1) == 1:
        os.environ["CUDA_VISIBLE_DEVICES"] = args.choose
    cuda = use_cuda(args.device)
    if _torchrun_env() and args.dist_url == "env://":
        world = int(os.environ["WORLD_SIZE"])
        nproc = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        return nproc, int(os.environ.get("GROUP_RANK", 0)), world, cuda
    nodes, node_rank = max(args.world_size, 1), max(args.rank, 0)
    if node_rank >= nodes:
        raise UsageError(f"--rank {args.rank} must be smaller than --world_size {args.world_size}")
    if not args.multiprocessing_distributed:
        return 1, node_rank, nodes, cuda
    nproc = torch.cuda.device_count() if cuda else args.cpu_procs
    return nproc, node_rank, nodes * nproc, cuda


def launch(worker: Worker, args: argparse.Namespace, prog: str,
           check: Callable[[int, int], None] | None = None) -> None:
    """Run `worker(ctx, args)` in every training process of this node; exit 2 on a UsageError, also one raised by
    `check(processes_per_node, world_size)` before anything starts. Global rank 0 (or the launching process) then
    prints `<prog>: finished in H:MM:SS`."""
    start = time.time()
    node_rank = _launch(worker, args, prog, check)
    if os.environ.get("RANK", "0") == "0" and node_rank == 0:
        print(f"{prog}: finished in {format_duration(time.time() - start)}", flush=True)


def _launch(worker: Worker, args: argparse.Namespace, prog: str, check: Callable[[int, int], None] | None) -> int:
    """Run the node's workers; returns the node rank."""
    raise_file_limit()
    try:
        nproc, node_rank, world, cuda = plan(args)
        if check is not None:
            check(nproc, world)
    except UsageError as err:
        exit_usage(prog, err)
    if _torchrun_env() and args.dist_url == "env://":
        local = int(os.environ.get("LOCAL_RANK", 0))
        device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
        ctx = DistContext(int(os.environ["RANK"]), world, local, nproc, node_rank, device)
        _run(ctx, args, worker, prog, cuda)
        return node_rank
    if nproc == 1 and world == 1 or not args.multiprocessing_distributed:
        gpu = args.gpu if args.gpu is not None else 0
        device = torch.device(f"cuda:{gpu}") if cuda else torch.device("cpu")
        _run(DistContext(node_rank, world, 0, 1, node_rank, device), args, worker, prog, cuda)
        return node_rank
    context = mp.start_processes(_spawned, args=(worker, args, prog, nproc, node_rank, world, cuda), nprocs=nproc,
                                 join=False, start_method="spawn")
    _forward_stop_signals([p.pid for p in context.processes])
    try:
        # After one worker fails, give the others 10 s to stop by themselves (a lost peer reaches them all).
        while not context.join(grace_period=10):
            pass
    except mp.ProcessExitedException as err:
        raise SystemExit(err.exit_code if err.exit_code and err.exit_code > 0 else 1) from None
    return node_rank


def _forward_stop_signals(pids: list[int]) -> None:
    """Pass SIGTERM/SIGUSR1/SIGINT from the launching process to each worker (which checkpoints and exits)."""
    def forward(signum, frame):
        for pid in pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
    for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(s, forward)
