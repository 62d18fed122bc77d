"""Collect the reproduction's per-run result files into one summary and a Markdown table."""

from __future__ import annotations

import glob
import json
import os
import statistics

from ops.atomic import write_json

ORDER = ("random_init", "moco_v2", "clsa_single", "clsa_sym", "clsa_multi", "clsa_aug0", "strong_infonce",
         "smallcrop_infonce")
LABELS = {"random_init": "random init (no pretraining)", "moco_v2": "MoCo v2 (`--alpha 0`)",
          "clsa_single": "CLSA single-crop (32 + 16 px)",
          "clsa_sym": "CLSA single-crop, symmetric (`--sym 1`)", "clsa_multi": "CLSA multi-crop (32/28/24/20/16 px)",
          "clsa_aug0": "CLSA single-crop, 16-px crop without RandAugment (`--aug_times 0`)",
          "strong_infonce": "strong 16-px view as InfoNCE positive (`--strong_loss infonce`)",
          "smallcrop_infonce": "plain 16-px crop as InfoNCE positive (`--strong_loss infonce --aug_times 0`)"}


def _stat(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values), "values": values}


def summarise(out: str, meta: dict) -> dict:
    """{arm: {knn, linear (mean/std/n/values), seeds, epochs_done, partial, pretrain_minutes}} plus `meta`."""
    runs: dict[str, list[dict]] = {}
    for path in sorted(glob.glob(os.path.join(out, "*_s*", "result.json"))):
        with open(path) as f:
            r = json.load(f)
        runs.setdefault(r["arm"], []).append(r)
    arms = {}
    for name in ORDER:
        rs = runs.get(name, [])
        if not rs:
            continue
        arms[name] = {"knn": _stat([r["knn_top1"] for r in rs]), "linear": _stat([r["linear_top1"] for r in rs]),
                      "seeds": [r["seed"] for r in rs], "epochs_done": [r.get("epochs_done") for r in rs],
                      "partial": any(r.get("partial") for r in rs),
                      "pretrain_minutes": [round(r.get("pretrain_seconds", 0) / 60, 1) for r in rs],
                      "knn_monitor": [r.get("knn_monitor", []) for r in rs],
                      "commands": [r.get("command", "") for r in rs]}
        tuned = [r["finetune"] for r in rs if "finetune" in r]
        if tuned:  # per seed: the mean over the 1 % draws, the 10 % draw(s)
            arms[name].update(finetune_1pct=_stat([f["pct1_mean"] for f in tuned]),
                              finetune_10pct=_stat([f["pct10_mean"] for f in tuned]),
                              finetune_base_lr=[f["base_lr"] for f in tuned])
    summary = {"arms": arms, **meta}
    write_json(os.path.join(out, "results.json"), summary)
    return summary


def _fmt(stat: dict) -> str:
    if stat["std"] is None:
        return f"{stat['mean']:.2f}"
    return f"{stat['mean']:.2f} ± {stat['std']:.2f}"


def _fmt_n(stat: dict | None, seeds: int) -> str:
    if stat is None:
        return "-"
    return _fmt(stat) + (f" (n={stat['n']})" if stat["n"] < seeds else "")


def write_table(summary: dict, path: str) -> str:
    """Markdown table: one row per arm, mean ± sample std over seeds (n given), epochs and pretraining minutes; the
    fine-tuning columns (mean over the seeds that have it, n in brackets when fewer) once any arm has them."""
    ft = any("finetune_1pct" in a for a in summary["arms"].values())
    lines = ["| encoder | kNN top-1 (%) | linear top-1 (%) | "
             + ("fine-tune 1 % labels (%) | fine-tune 10 % labels (%) | " if ft else "")
             + "seeds | epochs done | pretraining (min) |",
             "|---|---|---|" + ("---|---|" if ft else "") + "---|---|---|"]
    for name, a in summary["arms"].items():
        epochs = ", ".join("-" if e is None else str(e) for e in a["epochs_done"])
        minutes = ", ".join(str(m) for m in a["pretrain_minutes"]) if name != "random_init" else "-"
        flag = " (stopped early)" if a["partial"] else ""
        cells = [_fmt_n(a.get(k), a["knn"]["n"]) for k in ("finetune_1pct", "finetune_10pct")] if ft else []
        lines.append(f"| {LABELS[name]}{flag} | {_fmt(a['knn'])} | {_fmt(a['linear'])} | "
                     + "".join(c + " | " for c in cells) + f"{a['knn']['n']} | {epochs} | {minutes} |")
    curves = {n: a["knn_monitor"][0] for n, a in summary["arms"].items() if a["knn_monitor"] and a["knn_monitor"][0]}
    if curves:
        epochs = max(len(c) for c in curves.values())
        lines += ["", "kNN monitor after each epoch (first seed; bank and queries of the monitor set):", "",
                  "| encoder | " + " | ".join(f"epoch {e + 1}" for e in range(epochs)) + " |",
                  "|---|" + "---|" * epochs]
        for name, curve in curves.items():
            cells = [f"{c['top1']:.1f}" for c in curve] + ["-"] * (epochs - len(curve))
            lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
        ref = summary.get("monitor", {}).get("random_init")
        if ref is not None:
            lines.append(f"| {LABELS['random_init']} | " + " | ".join([f"{ref:.1f}"] * epochs) + " |")
    text = "\n".join(lines) + "\n"
    with open(path, "w") as f:
        f.write(text)
    return text
