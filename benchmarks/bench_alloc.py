#!/usr/bin/env python3
"""Why a CPU step can be slower than its arithmetic: page faults. Per step: wall, user and system seconds and minor
page faults of the baseline and the project's step (`default`, which encodes the keys before the queries, the
order the baseline uses: that order alone removed most of the faults), in this process as it is and, with
--tuned, in a child process whose glibc malloc keeps freed memory (MALLOC_MMAP_MAX_=0, MALLOC_TRIM_THRESHOLD_
large) instead of returning it to the kernel and faulting it in again on the next step.

    python3 benchmarks/bench_alloc.py --arch resnet50 --batch 16 --tuned --json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

try:
    from benchmarks import common
except ImportError:  # run as a script
    import common  # type: ignore[no-redef]

from benchmarks.settings import add_setting_args, setting_from_args  # noqa: E402

TUNED_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 36)}


def measure(args: argparse.Namespace) -> dict:
    import torch

    from benchmarks.bench_step import Runner, make_views
    torch.set_num_threads(args.threads)
    views, num_weak = make_views(setting_from_args(args), args.batch, 0)
    ns = argparse.Namespace(arch=args.arch, moco_dim=128, moco_k=args.moco_k, device="cpu", seed=0)
    runners = {m: Runner(m, ns, views, num_weak) for m in ("baseline", "default")}
    for r in runners.values():
        r.step(False)
    rows: dict[str, list[tuple[float, ...]]] = {m: [] for m in runners}
    for _ in range(args.steps):
        for m, r in runners.items():
            u0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            r.step(False)
            u1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            rows[m].append((t1 - t0, u1.ru_utime - u0.ru_utime, u1.ru_stime - u0.ru_stime,
                            float(u1.ru_minflt - u0.ru_minflt)))
    return {m: {k: common.median([x[i] for x in v]) for i, k in enumerate(("wall_s", "user_s", "sys_s", "minflt"))}
            | {"first_loss": runners[m].losses[0]} for m, v in rows.items()}


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_setting_args(p)
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--moco_k", type=int, default=65536)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tuned", action="store_true", help="also measure with glibc malloc tuned (child process)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        common.print_json(measure(args))
        return {}
    res = {"benchmark": "alloc", "arch": args.arch, "batch": args.batch, "setting": args.setting,
           "machine": common.machine(), "as_is": measure(args)}
    if args.tuned:
        child = [a for a in argv if a != "--tuned"] + ["--_child"]
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), *child], capture_output=True, text=True,
                              env=dict(os.environ, **TUNED_ENV), check=True)
        res["malloc_tuned"] = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = [[variant, m, v["wall_s"], v["user_s"], v["sys_s"], int(v["minflt"]), f"{v['first_loss']:.5f}"]
            for variant in ("as_is", "malloc_tuned") if variant in res for m, v in res[variant].items()]
    print(f"per-step medians over {args.steps} steps: {args.arch}, batch {args.batch}, setting {args.setting}, "
          f"{args.threads} thread(s), {res['machine']['cpu']}")
    common.print_table(["malloc", "mode", "wall s", "user s", "sys s", "minor faults", "loss(step 1)"], rows)
    if args.json:
        common.print_json(res)
    return res


if __name__ == "__main__":
    main()
