#!/usr/bin/env python3
"""Training-step throughput and peak memory: the 2021-style fp32 baseline vs the project's step with speed flags.

Modes (all built in one process and timed step by step in turn, so background load hits them alike):
  baseline            benchmarks/baseline_step.py: fp32, NCHW, per-pair loss loop with log(softmax)
  default             clsa.builder.CLSA (forward = the loss) + backward, SGD step, enqueue, no flags
  amp                 --amp (bf16 autocast; the loss in fp32)
  channels_last       --channels_last
  amp+channels_last   both
  compile             --compile (fp32: the encoders' training forward through torch.compile; only with --compile)
  amp+channels_last+compile   --amp --channels_last --compile (only with --compile)
Each mode builds the same model from the same seed and runs the same batch of real views (photos through the
project's view pipeline), so the first step's loss is comparable across modes (bf16 vs fp32 tolerance). A step =
forward of every view, loss, backward, SGD, momentum update, enqueue. Reported: median step time after warm-up,
images/s, loss of the first step, and peak memory measured in a separate process per mode (CPU: ru_maxrss and its
growth over two steps from the RSS after set-up; CUDA: max_memory_allocated); --no_memory skips them.

    python3 benchmarks/bench_step.py --json                              # resnet18, single-crop, batch 16
    python3 benchmarks/bench_step.py --arch resnet50 --setting single96 --batch 32 --json
    python3 benchmarks/bench_step.py --device cuda --arch resnet50 --setting multi --batch 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

try:
    from benchmarks import common
except ImportError:  # run as a script
    import common  # type: ignore[no-redef]

from benchmarks.settings import add_setting_args, setting_from_args  # noqa: E402

MODES = ("baseline", "default", "amp", "channels_last", "amp+channels_last")
COMPILE_MODES = ("compile", "amp+channels_last+compile")
THIS = os.path.abspath(__file__)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_setting_args(p)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--moco_k", type=int, default=65536)
    p.add_argument("--moco_dim", type=int, default=128)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: per-core rates, robust on a shared machine; 0: all cores)")
    p.add_argument("--modes", nargs="+", choices=MODES + COMPILE_MODES, default=None)
    p.add_argument("--compile", action="store_true", help=f"also time {' and '.join(COMPILE_MODES)}")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per mode (the first one gives the loss)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per mode, taken in turn across modes")
    p.add_argument("--no_memory", action="store_true", help="skip the per-mode memory processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=1800, help="seconds allowed per mode process")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_views", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.modes is None:
        args.modes = list(MODES) + (list(COMPILE_MODES) if args.compile else [])
    return args


def make_views(setting, batch: int, seed: int):
    """One batch of real views: the photos through the project's MultiViewTransform, stacked per view."""
    import random

    import numpy as np
    import torch

    from benchmarks.photos import decode, photo_bytes
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    data = photo_bytes()
    t = setting.transform()
    samples = [t(decode(data[i % len(data)])) for i in range(batch)]
    return [torch.stack([s[v] for s in samples]) for v in range(len(samples[0]))], t.plan.num_weak


def _sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_mb(field: str) -> float | None:
    """VmRSS / VmHWM of this process from /proc (Linux), in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _maxrss_mb() -> float:
    """Peak RSS of this process: VmHWM (fresh at exec) where /proc has it, else ru_maxrss (which on Linux also
    counts the parent's RSS at fork)."""
    import resource
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Runner:
    """One mode: its model (built from `seed`), optimizer and step function."""

    def __init__(self, mode: str, args: argparse.Namespace, views: list, num_weak: int) -> None:
        import torch

        from benchmarks.baseline_step import BaselineCLSA
        from clsa.builder import CLSA
        self.mode, self.device, self.views, self.num_weak = mode, torch.device(args.device), views, num_weak
        self.amp, cl = "amp" in mode, "channels_last" in mode
        torch.manual_seed(args.seed)
        model = CLSA(args.arch, args.moco_dim, args.moco_k, 0.999, mlp=True, sym=False, channels_last=cl)
        if mode == "baseline":
            model = BaselineCLSA(model)
        self.model = model.to(self.device).train()
        if "compile" in mode:  # every compiled mode's graphs share dynamo's recompile limit in this process
            self.model.compile_encoders(view_sizes=len(views) * len(COMPILE_MODES))
        self.opt = torch.optim.SGD([p for p in self.model.parameters() if p.requires_grad], 0.03, momentum=0.9,
                                   weight_decay=1e-4)
        self.losses: list[float] = []
        self.times: list[float] = []

    def step(self, timed: bool) -> float:
        _sync(self.device)
        t0 = time.perf_counter()
        if self.mode == "baseline":
            loss = self.model.step(self.views, self.num_weak, self.opt)
        else:
            from clsa.engine import autocast
            w = self.num_weak
            with autocast(self.device, self.amp):
                out, _, keys = self.model(self.views[0], self.views[1:1 + w], self.views[1 + w:])
            self.opt.zero_grad(set_to_none=True)
            out.backward()
            self.opt.step()
            self.model.dequeue_and_enqueue(keys)
            loss = float(out.item())
        _sync(self.device)
        if timed:
            self.times.append(time.perf_counter() - t0)
        self.losses.append(loss)
        return loss


def _load_views(args: argparse.Namespace):
    import torch
    views, num_weak = torch.load(args._views)
    return [v.to(args.device) for v in views], num_weak


def memory_worker(args: argparse.Namespace) -> dict:
    """In a fresh process: peak memory of one mode over two steps."""
    import torch
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    views, num_weak = _load_views(args)
    runner = Runner(args._worker, args, views, num_weak)
    if runner.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(runner.device)
    peak_setup = _maxrss_mb()
    rss_setup = _status_mb("VmRSS") or peak_setup
    reset = _reset_peak_rss()
    runner.step(False)
    runner.step(False)
    peak = _maxrss_mb()
    out = {"mode": args._worker, "peak_rss_mb": max(peak, peak_setup), "rss_growth_mb": peak - rss_setup,
           "peak_reset": reset}
    if runner.device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(runner.device) / 2**20
    return out


def time_modes(args: argparse.Namespace, views: list, num_weak: int) -> dict[str, dict]:
    """Warm every mode up, then take its timed steps in turn with the others'. mode -> {times, losses}."""
    import torch
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    views = [v.to(args.device) for v in views]
    runners = {m: Runner(m, args, views, num_weak) for m in args.modes}
    for r in runners.values():
        for _ in range(args.warmup):
            r.step(False)
    for _ in range(args.steps):
        for r in runners.values():
            r.step(True)
    return {m: {"times": r.times, "losses": r.losses} for m, r in runners.items()}


def run_memory(args: argparse.Namespace, argv: list[str], mode: str, views_file: str) -> dict:
    cmd = [sys.executable, THIS, *argv, "--_worker", mode, "--_views", views_file]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"mode {mode} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarize(args: argparse.Namespace, setting, timings: dict[str, dict], memory: dict[str, dict]) -> dict:
    import torch
    res = {"benchmark": "step", "arch": args.arch, "batch": args.batch, "setting": setting.name,
           "view_sizes": setting.view_sizes(), "moco_k": args.moco_k, "device": args.device,
           "machine": common.machine(), "steps": args.steps, "warmup": args.warmup,
           "threads": torch.get_num_threads(), "modes": {}}
    if args.device == "cuda":
        res["gpu"] = torch.cuda.get_device_name(0)
    for mode, r in timings.items():
        med = common.median(r["times"])
        res["modes"][mode] = {"img_per_s": args.batch / med, "median_step_s": med, "step_s": r["times"],
                              "first_loss": r["losses"][0], "losses": r["losses"], **memory.get(mode, {})}
        res["modes"][mode].pop("mode", None)
    base = res["modes"].get("baseline")
    for m in res["modes"].values():
        if base:
            m["x_baseline"] = m["img_per_s"] / base["img_per_s"]
            m["loss_rel_diff"] = abs(m["first_loss"] - base["first_loss"]) / abs(base["first_loss"])
    if base:
        for key, mode in (("default_vs_baseline", "default"), ("amp_cl_vs_baseline", "amp+channels_last")):
            if mode in res["modes"]:
                res[key] = res["modes"][mode]["x_baseline"]
    return res


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args._worker:
        common.print_json(memory_worker(args))
        return {}
    import torch
    setting = setting_from_args(args)
    views, num_weak = make_views(setting, args.batch, args.seed)
    memory: dict[str, dict] = {}
    if not args.no_memory:  # first, while this process is small (a child's ru_maxrss starts at the parent's RSS)
        with tempfile.TemporaryDirectory() as tmp:
            views_file = os.path.join(tmp, "views.pt")
            torch.save((views, num_weak), views_file)
            memory = {m: run_memory(args, argv, m, views_file) for m in args.modes}
    timings = time_modes(args, views, num_weak)
    return report(args, setting, timings, memory)


def report(args: argparse.Namespace, setting, timings: dict[str, dict], memory: dict[str, dict]) -> dict:
    res = summarize(args, setting, timings, memory)
    mem_key = "peak_cuda_mb" if args.device == "cuda" else "peak_rss_mb"
    print(f"training step: {args.arch}, batch {args.batch}, setting {setting.name} (views {setting.view_sizes()} px), "
          f"K {args.moco_k}, {args.device} ({res.get('gpu') or res['machine']['cpu']}), {res['threads']} threads; "
          f"median of {args.steps} steps (modes in turn) after {args.warmup} warm-up")
    rows = []
    for mode, m in res["modes"].items():
        rows.append([mode, m["img_per_s"], m["median_step_s"], m.get("x_baseline", float("nan")),
                     f"{m['first_loss']:.5f}", f"{m.get('loss_rel_diff', 0.0):.1e}",
                     f"{m[mem_key]:.0f}" if mem_key in m else "-",
                     f"{m['rss_growth_mb']:.0f}" if "rss_growth_mb" in m else "-"])
    common.print_table(["mode", "img/s", "s/step", "x baseline", "loss(step 1)", "rel diff", "peak MB",
                        "RSS growth MB"], rows)
    for key, label in (("default_vs_baseline", "default flags vs baseline"),
                       ("amp_cl_vs_baseline", "--amp --channels_last vs baseline")):
        if key in res:
            print(f"{label}: {res[key]:.2f}x")
    if args.json:
        common.print_json(res)
    return res


if __name__ == "__main__":
    main()
