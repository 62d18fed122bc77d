"""Each benchmark runs in a tiny mode and ends its output with one JSON object (no timing assertions)."""

import json

import pytest
from conftest import run_script

TINY = ["--setting", "custom", "--size_crops", "32", "24", "--min_scale_crops", "0.2", "0.1", "--max_scale_crops",
        "1", "0.5", "--pick_weak", "0", "--pick_strong", "1"]


def _last_json(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    out = json.loads(lines[-1])
    assert isinstance(out, dict)
    return out


@pytest.mark.parametrize("setting", ["single", "multi"])
def test_bench_views(setting):
    out = _last_json(run_script(["benchmarks/bench_views.py", "--setting", setting, "--seconds", "0.05",
                                 "--repeats", "1", "--json"]))
    assert set(out["modes"]) == {"reference", "torchvision", "fast"}
    views = {"single": (5, 3), "multi": (11, 11)}[setting]
    assert (out["modes"]["reference"]["views_per_image"], out["modes"]["fast"]["views_per_image"]) == views
    assert all(m["img_per_s_per_core"] > 0 for m in out["modes"].values())
    assert out["ratio_fast_vs_reference"] == pytest.approx(
        out["modes"]["fast"]["img_per_s_per_core"] / out["modes"]["reference"]["img_per_s_per_core"])


def test_bench_views_reference_only():
    out = _last_json(run_script(["benchmarks/bench_views.py", "--reference", "--seconds", "0.05", "--repeats", "1",
                                 "--json"]))
    assert list(out["modes"]) == ["reference"]


def test_bench_step_tiny():
    out = _last_json(run_script(["benchmarks/bench_step.py", "--arch", "resnet18", "--batch", "4", "--moco_k", "64",
                                 "--steps", "1", "--warmup", "1", "--modes", "baseline", "default", "amp",
                                 *TINY, "--json"]))
    modes = out["modes"]
    assert set(modes) == {"baseline", "default", "amp"}
    # same seed and inputs: the project's fp32 step computes the baseline's loss; bf16 agrees within tolerance
    assert modes["default"]["loss_rel_diff"] < 1e-4
    assert modes["amp"]["loss_rel_diff"] < 5e-2
    assert all(m["peak_rss_mb"] > 0 for m in modes.values()) and out["default_vs_baseline"] > 0


def test_bench_loader_tiny():
    out = _last_json(run_script(["benchmarks/bench_loader.py", "--workers", "0", "1", "--batch", "4", "--images",
                                 "12", "--seconds", "0.3", "--step_img_per_s", "1.5", *TINY, "--json"]))
    assert set(out["loader"]) == {"0", "1"} and out["step_img_per_s"] == 1.5
    assert all(r["img_per_s"] > 0 and isinstance(r["feeds_step"], bool) for r in out["loader"].values())


def test_gpu_check_dry_run():
    out = _last_json(run_script(["benchmarks/gpu_check.py", "--dry-run"]))
    assert out["dry_run"] and out["device"] == "cpu"
    assert "amp+channels_last" in out["steps"]["single"]["modes"]


def test_bench_alloc_tiny():
    out = _last_json(run_script(["benchmarks/bench_alloc.py", "--arch", "resnet18", "--batch", "4", "--moco_k", "64",
                                 "--steps", "1", *TINY, "--tuned", "--json"]))
    for variant in ("as_is", "malloc_tuned"):
        modes = out[variant]
        assert set(modes) == {"baseline", "default"}
        # the key-first order computes the same loss as the project's step


def test_gpu_views_check_dry_run():
    out = _last_json(run_script(["benchmarks/gpu_views_check.py", "--dry-run"]))
    runs = out["end_to_end"]["single"]
    assert out["dry_run"] and [(r["views"], r["rc"]) for r in runs] == [("gpu", 0), ("cpu", 0)]
    assert all(r["iterations"] == 4 and r["img_per_s"] > 0 for r in runs)
    assert out["step"]["single"]["img_per_s"] > 0 and out["supervised_img_per_s"] > 0


def test_bench_device_views_tiny():
    out = _last_json(run_script(["benchmarks/bench_device_views.py", *TINY, "--seconds", "0.2", "--images", "10",
                                 "--batch", "4", "--json"]))
    assert 0 < out["b_worker_cpu_s_per_img_gpu_views"] < out["b_worker_cpu_s_per_img_cpu_views"]
    assert out["a_batchviews_img_per_s"] > 0


def test_precision_check_tiny():
    """At batch 4 the loss's sensitivity to one bf16 rounding of the inputs comes from train-mode BN over few values:
    with BN on running statistics it is far smaller (docs/performance.md, `--compile` and the bf16 difference)."""
    out = _last_json(run_script(["benchmarks/precision_check.py", "--batches", "4", "--seeds", "2", "--json"]))
    (cell,) = out["cells"]
    assert cell["batch"] == 4 and len(cell["fp32"]) == 2
    assert max(cell["inputs-bf16 eval-BN"]) * 5 < min(cell["inputs-bf16"])
    assert 0 < max(cell["amp"]) < 5e-2
