"""experiments/finetune_eval.py and the reproduction's fine-tuning columns: the held-out folder never holds a test
image, the lr is the held-out argmax, the 1 % / 10 % draws run on the full folder with that lr, records are cached,
and the table gains the columns (real finetune.py child processes on a tiny Fashion-MNIST-shaped folder)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from experiments import fmnist_data
from experiments.finetune_eval import Protocol, finetune_encoder, prepare_folders
from experiments.reproduce_table import summarise, write_table

TINY = Protocol(batch=16, epochs_1pct=1, epochs_10pct=1, base_lrs=(0.05, 0.2), draws_1pct=(0, 1), draws_10pct=(0,),
                size=28, workers=0)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    """10 classes x 30 train and x 5 test 28-px images whose brightness follows the class."""
    rng = np.random.default_rng(0)

    def split(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(10, dtype=np.uint8), per_class)
        x = (rng.integers(0, 40, (len(y), 28, 28)) + 20 * y[:, None, None]).astype(np.uint8)
        return x, y

    return fmnist_data.write_split_folder(str(tmp_path_factory.mktemp("fmnist")), split(30), split(5))


def test_held_out_images_come_from_train_only(source, tmp_path):
    folders = prepare_folders(source, str(tmp_path), held_out=50)
    xtr, xte = fmnist_data.load_split(source, "train")[0], fmnist_data.load_split(source, "t10k")[0]
    (fx, _), (tx, _) = fmnist_data.load_split(folders["full"], "train"), fmnist_data.load_split(folders["full"], "t10k")
    assert np.array_equal(fx, xtr) and np.array_equal(tx, xte)
    (kx, ky), (hx, hy) = (fmnist_data.load_split(folders["tune"], s) for s in ("train", "t10k"))
    assert len(hx) == 50 and np.bincount(hy).tolist() == [5] * 10 and len(kx) == 250
    rows = {r.tobytes() for r in xtr}
    assert all(r.tobytes() in rows for r in hx)  # held-out images are train images ...
    assert not {r.tobytes() for r in hx} & {r.tobytes() for r in kx}  # ... that the tuning pool does not hold
    assert not {r.tobytes() for r in hx} & {r.tobytes() for r in xte}


def test_finetune_encoder_tunes_on_held_out_then_reports_test(source, tmp_path):
    folders = prepare_folders(source, str(tmp_path / "data"), held_out=50)
    out = str(tmp_path / "ft")
    res = finetune_encoder(None, 0, folders, out, TINY, log=lambda s: None)
    tune = res["holdout_top1_by_base_lr"]
    assert set(tune) == {"0.05", "0.2"}
    assert res["base_lr"] == max(TINY.base_lrs, key=lambda lr: (tune[str(lr)], -lr))
    records = {n[:-5]: json.load(open(os.path.join(out, n))) for n in os.listdir(out) if n.endswith(".json")}
    assert set(records) == {"tune_lr0.05", "tune_lr0.2", "pct1_s0", "pct1_s1", "pct10_s0"}
    for name, r in records.items():
        assert r["epoch"] == 1 and "--eval-freq 0" in r["command"] and "--random-init" in r["command"]
        if name.startswith("tune"):  # 1 % of the 250 tuning images (1 per class), scored on the 50 held-out ones
            assert folders["tune"] in r["command"] and r["images"] == 50 and r["train_images"] == 10
            assert r["subset"]["seed"] == TINY.tune_seed
        else:  # with the chosen lr, on the full train split, scored on the test split
            assert folders["full"] in r["command"] and r["images"] == 50
            assert r["base_lr"] == res["base_lr"]
            assert r["train_images"] == (10 if name.startswith("pct1_") else 30)
    assert records["pct1_s0"]["subset"]["names_sha256"] != records["pct1_s1"]["subset"]["names_sha256"]
    assert res["pct1_top1"] == [records["pct1_s0"]["top1"], records["pct1_s1"]["top1"]]
    assert res["pct10_top1"] == [records["pct10_s0"]["top1"]]
    kept = [os.path.relpath(os.path.join(d, f), out) for d, _, files in os.walk(out) for f in files]
    assert not [f for f in kept if f.endswith(".pth.tar")], kept  # 170 MB each at full size; the record suffices
    assert sum(f.endswith("finetune.json") for f in kept) == len(records) == sum(f.endswith("train.log") for f in kept)

    # finished runs are read back, not rerun: their run folders are no longer needed
    for name in os.listdir(os.path.join(out, "runs")):
        os.rename(os.path.join(out, "runs", name), os.path.join(tmp_path, name))
    again = finetune_encoder(None, 0, folders, out, TINY, log=lambda s: None)
    assert {k: v for k, v in again.items() if k != "seconds_this_invocation"} == \
        {k: v for k, v in res.items() if k != "seconds_this_invocation"}
    assert os.listdir(os.path.join(out, "runs")) == []


def test_table_gains_fine_tuning_columns(tmp_path):
    def result(arm: str, seed: int, ft: tuple[float, float] | None) -> None:
        os.makedirs(tmp_path / f"{arm}_s{seed}")
        r = {"arm": arm, "seed": seed, "knn_top1": 70.0 + seed, "linear_top1": 80.0}
        if ft:
            r["finetune"] = {"pct1_mean": ft[0], "pct10_mean": ft[1], "base_lr": 0.05}
        json.dump(r, open(tmp_path / f"{arm}_s{seed}" / "result.json", "w"))

    result("random_init", 0, (50.0, 70.0))
    result("moco_v2", 0, (60.0, 80.0))
    result("moco_v2", 1, (62.0, 82.0))
    result("clsa_single", 0, None)
    result("clsa_single", 1, (64.0, 84.0))
    text = write_table(summarise(str(tmp_path), {}), str(tmp_path / "table.md"))
    lines = text.splitlines()
    assert "fine-tune 1 % labels (%) | fine-tune 10 % labels (%)" in lines[0]
    row = {line.split(" | ")[0]: line.split(" | ") for line in lines[2:5]}
    assert row["| MoCo v2 (`--alpha 0`)"][3:5] == ["61.00 ± 1.41", "81.00 ± 1.41"]
    assert row["| CLSA single-crop (32 + 16 px)"][3:5] == ["64.00 (n=1)", "84.00 (n=1)"]
    assert row["| random init (no pretraining)"][3:5] == ["50.00", "70.00"]
