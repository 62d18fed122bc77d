#!/usr/bin/env python3
"""Issue 13's measurement on a CUDA machine, in one run (about 6-8 minutes on an H100/H200):

  1. end to end: `main_clsa.py` img/s, single- and multi-crop, with `--views gpu` (4 loader workers) and with
     `--views cpu` at 4, 8 and 16 workers, on a folder of ImageNet-like JPEGs (benchmarks/photos.py, 500 x 375);
     the rate is the batch over the median per-iteration time of the second half of the run (data wait included);
  2. the step alone (benchmarks/bench_step.py, `--amp --channels_last`, and with `--compile` too when asked: a
     few minutes more for the compilation) on the same views;
  3. the reference: a plain torchvision ResNet-50 supervised training step (bf16 autocast, channels_last, SGD) at
     the same batch and 224 px; the CLSA step's efficiency = its img/s x its forward FLOPs per image / the
     supervised step's img/s x ResNet-50's forward FLOPs at 224 px.
Prints the card (torch.cuda.get_device_name), the host's cores and one table; the last line is one JSON object
(also written to $OUT/gpu_views_check.json when $OUT is set).

    python3 benchmarks/gpu_views_check.py            # on the GPU machine
    python3 benchmarks/gpu_views_check.py --compile  # also the compiled step
    python3 benchmarks/gpu_views_check.py --dry-run  # CPU, resnet18, tiny views, a few iterations: checks the script
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

try:
    from benchmarks import common
except ImportError:  # run as a script
    import common  # type: ignore[no-redef]

import torch  # noqa: E402

from benchmarks import bench_step  # noqa: E402
from benchmarks.bench_device_views import photo_folder  # noqa: E402
from benchmarks.settings import SETTINGS  # noqa: E402

DRY_VIEWS = ["--nmb_crops", "1", "1", "--size_crops", "32", "16", "--min_scale_crops", "0.2", "0.086",
             "--max_scale_crops", "1.0", "0.429", "--pick_weak", "0", "--pick_strong", "1"]
TIME = re.compile(r"Epoch: \[\d+\]\[\s*\d+/\d+\]\s+Time\s+([\d.]+)")


def setting_flags(name: str) -> list[str]:
    s = SETTINGS[name]
    return ["--nmb_crops", *map(str, s.nmb_crops), "--size_crops", *map(str, s.size_crops),
            "--min_scale_crops", *map(str, s.min_scale_crops), "--max_scale_crops", *map(str, s.max_scale_crops),
            "--pick_weak", *map(str, s.pick_weak), "--pick_strong", *map(str, s.pick_strong)]


def end_to_end(data: str, views: str, workers: int, flags: list[str], arch: str, batch: int, iters: int,
               device: str, log: str) -> dict:
    """img/s of a real main_clsa.py run of `iters` iterations (one process), from its per-iteration times."""
    argv = [sys.executable, "main_clsa.py", "--data", data, "--arch", arch, "--batch_size", str(batch),
            "--moco_k", str(batch * 16), "--epochs", "1", "--max_iters", str(iters), "--print_freq", "1",
            "--workers", str(workers), "--views", views, "--device", device, "--multiprocessing_distributed", "0",
            "--run_dir", log, "--seed", "0", *flags]
    if device == "cuda":
        argv += ["--amp", "--channels_last"]
    t0 = time.time()
    done = subprocess.run(argv, cwd=common.REPO, capture_output=True, text=True)
    times = [float(t) for t in TIME.findall(done.stdout)]
    tail = times[len(times) // 2:] or [float("nan")]
    return {"views": views, "workers": workers, "rc": done.returncode, "iterations": len(times),
            "img_per_s": batch / statistics.median(tail), "wall_s": time.time() - t0,
            "error": "" if done.returncode == 0 else (done.stdout + done.stderr)[-800:]}


def supervised_rate(arch: str, batch: int, size: int, device: str, steps: int) -> float:
    """img/s of a plain torchvision supervised training step (the reference for the CLSA step's efficiency)."""
    import torchvision
    model = torchvision.models.__dict__[arch](num_classes=1000).to(device)
    opt = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    if device == "cuda":
        model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)

    def one() -> None:
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        one()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    if device == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def flops_per_image(sizes: list[int]) -> float:
    """Forward FLOPs of the CLSA step per image relative to one 224-px forward: the key (f_k) and every weak and
    strong view (f_q) scale with their pixel count; the backward (about 2x) applies to the f_q views only."""
    key, queries = sizes[0], sizes[1:]
    return (key ** 2 + 3 * sum(s ** 2 for s in queries)) / (3 * 224 ** 2)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="CPU, resnet18, tiny views, 4 iterations")
    p.add_argument("--batch", type=int, default=None, help="per-process batch (default 64; 4 with --dry-run)")
    p.add_argument("--iters", type=int, default=None, help="iterations per end-to-end run (default 24)")
    p.add_argument("--compile", action="store_true",
                   help="also time the step with --compile (torch.compile; adds its compile time, minutes)")
    args = p.parse_args(argv)
    dry = args.dry_run
    device = "cpu" if dry or not torch.cuda.is_available() else "cuda"
    arch, batch, iters = ("resnet18" if dry else "resnet50"), args.batch or (4 if dry else 64), args.iters or (
        4 if dry else 24)
    card = torch.cuda.get_device_name(0) if device == "cuda" else common.cpu_model()
    cores = os.cpu_count() or 1
    print(f"gpu_views_check: {card}; {cores} CPU cores; torch {torch.__version__}; {arch}, batch {batch}", flush=True)
    t0 = time.time()
    res: dict = {"benchmark": "gpu_views_check", "card": card, "cores": cores, "device": device, "arch": arch,
                 "batch": batch, "dry_run": dry, "end_to_end": {}, "step": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = photo_folder(os.path.join(tmp, "photos"), 2 if dry else max(1, batch * (iters + 4) // 10))
        for name in ("single",) if dry else ("single", "multi"):
            flags = DRY_VIEWS if dry else setting_flags(name)
            runs = [("gpu", 1 if dry else 4)] + [("cpu", w) for w in ((1,) if dry else (4, 8, 16))]
            res["end_to_end"][name] = [end_to_end(data, v, w, flags, arch, batch, iters, device,
                                                  os.path.join(tmp, f"{name}_{v}_{w}")) for v, w in runs]
            for r in res["end_to_end"][name]:
                error = " " + r["error"] if r["rc"] else ""
                print(f"  {name} --views {r['views']} {r['workers']:2d} workers: {r['img_per_s']:8.1f} img/s "
                      f"(rc {r['rc']}, {r['iterations']} iterations, {r['wall_s']:.0f} s){error}", flush=True)
            dry_step = ["--setting", "custom", "--size_crops", "32", "16", "--min_scale_crops", "0.2", "0.086",
                        "--max_scale_crops", "1", "0.429", "--pick_weak", "0", "--pick_strong", "1", "--moco_k", "64",
                        "--steps", "1", "--warmup", "1"]
            modes = ["baseline", "amp+channels_last"] + (["amp+channels_last+compile"] if args.compile else [])
            step_argv = ["--arch", arch, "--batch", str(batch), "--device", device, "--modes", *modes, "--no_memory",
                         *(dry_step if dry else ["--setting", name, "--steps", "8", "--warmup", "3"])]
            timed = bench_step.main(step_argv)["modes"]
            step = timed["amp+channels_last"]
            s = SETTINGS["single96" if dry else name]
            res["step"][name] = {"img_per_s": step["img_per_s"], "loss_rel_diff_vs_fp32": step.get("loss_rel_diff"),
                                 "flops_vs_one_224_forward": flops_per_image(s.view_sizes())}
            if args.compile:
                c = timed["amp+channels_last+compile"]
                res["step"][name]["compile"] = {"img_per_s": c["img_per_s"],
                                                "loss_rel_diff_vs_fp32": c.get("loss_rel_diff")}
    sup = supervised_rate(arch, batch, 32 if dry else 224, device, 2 if dry else 10)
    res["supervised_img_per_s"] = sup
    rows = []
    for name, runs in res["end_to_end"].items():
        st = res["step"][name]
        st["efficiency_vs_supervised"] = st["img_per_s"] * st["flops_vs_one_224_forward"] / sup
        gpu = runs[0]["img_per_s"]
        rows.append([name, st["img_per_s"], gpu, gpu / st["img_per_s"], *[r["img_per_s"] for r in runs[1:]],
                     st["efficiency_vs_supervised"]])
    res["seconds"] = time.time() - t0
    print(f"\n== {card}, {cores} host cores: {arch} batch {batch}; supervised step {sup:.1f} img/s "
          f"({res['seconds']:.0f} s in all) ==")
    workers = [r["workers"] for r in next(iter(res["end_to_end"].values()))[1:]]
    common.print_table(["setting", "step img/s", "--views gpu img/s", "gpu / step",
                        *[f"--views cpu {w}w" for w in workers], "step efficiency"], rows)
    for name, st in res["step"].items():
        if "compile" in st:
            print(f"{name}: step with --compile {st['compile']['img_per_s']:.1f} img/s "
                  f"({st['compile']['img_per_s'] / st['img_per_s']:.2f}x), loss rel. diff to fp32 "
                  f"{st['compile']['loss_rel_diff_vs_fp32']:.1e}")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "gpu_views_check.json"), "w") as f:
            json.dump(res, f, indent=1)
    common.print_json(res)
    return res


if __name__ == "__main__":
    main()
