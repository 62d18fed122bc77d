"""The demo's outputs: the view grid, the run's figures, and the printed table."""

from __future__ import annotations

import os

import numpy as np

from data_processing.datasets import FashionMNIST
from data_processing.transforms import MultiViewTransform
from data_processing.view_plan import ViewPlan, expand_crops
from experiments.demo_sizing import SPEED_MARGIN, EvalSizes
from experiments.plots import plot_curves, plot_views, read_scalars
from experiments.recipe import Recipe

LONGER = "docs/reproduction.md (experiments/reproduce.py)"
LONGER_RUN = "python demo.py --epochs 30 --subset 0 --budget_min 120"
SPREAD = 1.0  # points: seed-to-seed spread of one metric at this scale (docs/reproduction.md); smaller is "level"
PASS_IMAGES = 120000  # pretraining images after which frozen kNN clearly passes random init (docs/demo.md)
STARTUP_S = 120.0  # data preparation, speed measurement and process start-ups of a demo run


def view_grid(folder: str, recipe: Recipe, path: str, seed: int = 0, rows: int = 5) -> str:
    """Real Fashion-MNIST training images of `folder` through the recipe's MultiViewTransform, one per class."""
    import random

    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    data = FashionMNIST(folder, "train")
    c = recipe.crops
    transform = MultiViewTransform(ViewPlan.build(expand_crops(c["nmb_crops"], c["size_crops"], c["min_scale_crops"],
                                                c["max_scale_crops"]), c["pick_weak"], c["pick_strong"],
                                   recipe.aug_times))
    picks, seen = [], set()
    for i, y in enumerate(data.targets):
        if int(y) not in seen:
            seen.add(int(y))
            picks.append(i)
        if len(picks) == rows:
            break
    images = [data[i][0] for i in picks]
    names = [FashionMNIST.classes[int(data.targets[i])] for i in picks]
    return plot_views(images, transform, path, names)


def knn_by_epoch(run_dir: str) -> list[dict]:
    """[{epoch (1-based), top1}] of the run's kNN monitor."""
    return [{"epoch": step + 1, "top1": value} for step, value in read_scalars(run_dir).get("knn/top1", [])]


def write_figures(run_dir: str, out: str, random_knn: float | None = None) -> list[str]:
    """loss_knn.png in `out` from the run's TensorBoard events."""
    path = os.path.join(out, "loss_knn.png")
    plot_curves(read_scalars(run_dir), path, "CLSA on Fashion-MNIST (resnet18, CPU demo)", random_knn)
    return [path]


def print_finetune(ft: dict, clsa_label: str) -> float | None:
    """The fine-tune rows (every layer, few labels); returns CLSA's difference to random init, None when skipped."""
    if "skipped" in ft or not ft:
        if ft:
            print(f"fine-tune with few labels: skipped ({ft['skipped']})")
        return None
    print(f"fine-tuned, every layer, on {ft['fraction']:.0%} of the train labels ({ft['labelled']} images, "
          f"{ft['epochs']} epochs, base lr {ft['base_lr']:g}); test: {ft['test_images']} images")
    print(f"{'encoder':<22}{'top-1':>10}")
    for label, r in (("random init", ft["random_init"]), (clsa_label, ft["clsa"])):
        print(f"{label:<22}{r['top1']:>10.2f}   ({r['seconds'] / 60:.1f} min)")
    diff = ft["clsa"]["top1"] - ft["random_init"]["top1"]
    print(f"{'difference':<22}{diff:>+10.2f}")
    return diff


def print_table(summary: dict) -> None:
    """The demo's closing table: pretrained vs random init, and where the short run stands."""
    enc = summary["encoders"]
    knn = summary["knn_monitor"]["by_epoch"]
    clsa_label = f"CLSA, {epochs_label(summary)} epoch(s)"
    rows = [("random init", enc["random_init"]), (clsa_label, enc["clsa"])]
    q = enc["clsa"]["queries"]
    print("")
    print(f"Fashion-MNIST test split ({q} images), resnet18, frozen features; kNN bank / probe train: "
          f"{enc['clsa']['bank']} train images")
    print(f"{'encoder':<22}{'kNN top-1':>10}{'linear top-1':>14}")
    for name, r in rows:
        print(f"{name:<22}{r['knn_top1']:>10.2f}{r['linear_top1']:>14.2f}")
    d_knn = enc["clsa"]["knn_top1"] - enc["random_init"]["knn_top1"]
    d_lin = enc["clsa"]["linear_top1"] - enc["random_init"]["linear_top1"]
    print(f"{'difference':<22}{d_knn:>+10.2f}{d_lin:>+14.2f}")
    d_ft = print_finetune(summary.get("finetune") or {}, clsa_label)
    if knn:
        rise = knn[-1]["top1"] - knn[0]["top1"]
        trail = ", ".join(f"{k['top1']:.1f}" for k in knn)
        print(f"kNN monitor by epoch ({summary['knn_monitor']['queries']} test images): {trail} "
              f"({rise:+.1f} from epoch 1; random init {summary['knn_monitor']['random_init']:.1f})")
    print(f"pretraining {summary['pretrain_seconds'] / 60:.1f} min on {summary['pretrain_images']} images, total "
          f"{summary['wall_time_s'] / 60:.1f} min" + (" (stopped early at the time budget)"
                                                      if summary["stopped_at_budget"] else ""))
    plan = summary.get("plan")
    if plan and plan["shortened"]:
        print(f"shortened to fit --budget_min {plan['budget_min']:g} on this machine ({plan['img_per_s']:.0f} img/s): "
              f"{plan['epochs']} epoch(s) on {plan['images']} images instead of {plan['asked_epochs']} on "
              f"{plan['asked_images']}")
    elif plan:
        print(f"this machine: {plan['img_per_s']:.0f} img/s; the whole recipe fits --budget_min {plan['budget_min']:g}")
    if plan and "eval" in plan and EvalSizes(**plan["eval"]).counts != EvalSizes(**plan["asked_eval"]).counts:
        got, want = plan["eval"], plan["asked_eval"]
        print(f"evaluation shortened too: {got['bank']} bank / {got['queries']} test images (kNN monitor "
              f"{got['monitor_bank']} / {got['monitor_queries']}) instead of {want['bank']} / {want['queries']} "
              f"({want['monitor_bank']} / {want['monitor_queries']})")
    print(where_it_stands(summary, d_knn, d_lin, d_ft))
    print(f"results: {summary['figures'][0]}, {summary['figures'][-1]}, TensorBoard: {summary['tensorboard']}")


def epochs_trained(summary: dict) -> float:
    """Epochs of pretraining, with the fraction of an epoch the time budget stopped (older results: whole epochs)."""
    return summary.get("epochs_trained", summary["epochs_done"])


def epochs_label(summary: dict) -> str:
    t = epochs_trained(summary)
    return f"{t:g}" if t == int(t) else f"{t:.2f}"


def standing(d: float) -> str:
    return "ahead" if d > SPREAD else "behind" if d < -SPREAD else "level"


def where_it_stands(summary: dict, d_knn: float, d_lin: float, d_ft: float | None) -> str:
    """The closing verdict, one clause per kind of evaluation, and what budget would change it on this machine."""
    done, images = epochs_trained(summary), summary["pretrain_images"]
    frozen = {standing(d_knn), standing(d_lin)}
    words = [f"{frozen.pop() if len(frozen) == 1 else 'mixed'} on frozen features (kNN {d_knn:+.2f}, linear "
             f"{d_lin:+.2f})"]
    if d_ft is not None:
        words.append(f"{standing(d_ft)} when every layer is fine-tuned on "
                     f"{summary['finetune']['fraction']:.0%} of the labels ({d_ft:+.2f})")
    text = (f"Where this stands: against the same resnet18 at random initialisation, after "
            f"{epochs_label(summary)} short epoch(s) of {images} images on a CPU the pretrained encoder is "
            f"{' and '.join(words)} (within {SPREAD:g} point: level, inside the seed-to-seed spread).")
    knn = summary["knn_monitor"]["by_epoch"]
    if len(knn) >= 2:
        text += (" The kNN monitor was still rising at the last epoch." if knn[-1]["top1"] > knn[-2]["top1"]
                 else " The kNN monitor did not rise at the last epoch.")
    plan = summary.get("plan") or {}
    if standing(d_knn) != "ahead" and plan.get("img_per_s") and done * images < PASS_IMAGES:
        rate = plan["img_per_s"] * SPEED_MARGIN  # the speed the demo plans with
        pretrain_s = PASS_IMAGES / rate
        total = pretrain_s + EvalSizes(**plan["asked_eval"]).seconds(rate) + STARTUP_S
        text += (f" Random init is a strong frozen-feature baseline on 28-px images: frozen kNN passes it after about "
                 f"{PASS_IMAGES:,} pretraining images (docs/demo.md), {pretrain_s / 60:.0f} min at the {rate:.0f} "
                 f"img/s the demo plans with here: python demo.py --budget_min {-(-total // 60):.0f}.")
    return (text + f" The paper pretrains 200-800 epochs on ImageNet; a longer run here: {LONGER_RUN}. CLSA vs MoCo "
            f"v2 at equal epochs: {LONGER}.")
