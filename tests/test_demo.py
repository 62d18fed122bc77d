"""`make demo` end to end in its seconds-long --smoke mode on a tiny IDX dataset, plus its pieces."""

import json
import os

import pytest
from fmnist_support import write_tiny_fmnist
from PIL import Image

import demo
from experiments.plots import plot_curves, read_scalars
from experiments.recipe import MULTI_CROP, Recipe
from ops.validate import check_views


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One --smoke demo run (shared by the assertions below)."""
    root = tmp_path_factory.mktemp("demo")
    data = write_tiny_fmnist(str(root / "fm"), n_train=120, n_test=40)
    out = str(root / "out")
    code = demo.main(["--smoke", "--data", data, "--out", out, "--no_install"])
    return code, out


def test_smoke_demo_writes_results_and_figures(smoke_run, capsys):
    code, out = smoke_run
    assert code == 0
    with open(os.path.join(out, "results.json")) as f:
        res = json.load(f)
    for name in ("clsa", "random_init"):
        enc = res["encoders"][name]
        assert 0 <= enc["knn_top1"] <= 100 and 0 <= enc["linear_top1"] <= 100
        assert enc["queries"] == 40 and enc["bank"] == 64
    assert res["epochs_done"] == res["epochs"] == 2 and res["wall_time_s"] > 0
    plan = res["plan"]  # sized from a measured speed: the smoke recipe fits its 15 minutes
    assert plan["img_per_s"] > 0 and not plan["shortened"] and (plan["epochs"], plan["images"]) == (2, 64)
    assert os.path.isfile(os.path.join(out, "plan.json")) and not os.path.exists(os.path.join(out, "calibrate"))
    assert [k["epoch"] for k in res["knn_monitor"]["by_epoch"]] == [1, 2]
    ft = res["finetune"]  # both encoders fine-tuned on the same labelled half of the tiny train split
    assert ft["labelled"] == 60 and ft["test_images"] == 40 and ft["epochs"] == 1
    for name in ("clsa", "random_init"):
        assert 0 <= ft[name]["top1"] <= 100 and ft[name]["train_images"] == 60
    assert "--pretrained" in ft["clsa"]["command"] and "--random-init" in ft["random_init"]["command"]
    assert res["recipe"]["cos"] == 3 and res["recipe"]["lr"] == 0.1  # the reproduction's schedule
    for png in ("loss_knn.png", "views.png"):
        with Image.open(os.path.join(out, png)) as img:
            assert img.format == "PNG" and img.size[0] > 300 and img.size[1] > 200
    run = os.path.join(out, "run")
    assert os.path.isfile(os.path.join(run, "checkpoint_last.pth.tar"))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(run))
    capsys.readouterr()
    assert demo.main(["--report", "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "random init" in printed and "CLSA, 2 epoch(s)" in printed and "kNN monitor by epoch" in printed
    assert "fine-tuned, every layer, on 50% of the train labels (60 images, 1 epochs" in printed
    assert "img/s; the whole recipe fits --budget_min 15" in printed


def test_a_budget_too_small_for_one_epoch_reports_no_encoder(tmp_path, capsys):
    data = write_tiny_fmnist(str(tmp_path / "fm"), n_train=120, n_test=40)
    out = str(tmp_path / "out")
    code = demo.main(["--smoke", "--data", data, "--out", out, "--no_install", "--budget_min", "0.01"])
    captured = capsys.readouterr()
    assert code == 1 and not os.path.exists(os.path.join(out, "results.json"))
    assert "this machine: " in captured.out and "training 1 epoch on 64 images to fit 0.01 min" in captured.out
    assert "trained no iteration within --budget_min 0.01" in captured.err


def test_smoke_demo_logs_losses_and_knn_to_tensorboard(smoke_run):
    _, out = smoke_run
    scalars = read_scalars(os.path.join(out, "run"))
    assert len(scalars["train/infonce"]) == 8 and len(scalars["train/ddm"]) == 8  # 2 epochs x 4 iterations
    assert all(v > 0 for _, v in scalars["train/ddm"])
    assert [s for s, _ in scalars["knn/top1"]] == [0, 1]


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        demo.main(["--data", str(tmp_path), "--no_install", "--out", str(tmp_path / "o")])
    assert err.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("demo.py: error:") and "dataset-fashion-mnist" in lines[0]
    with pytest.raises(SystemExit) as err:
        demo.main(["--epochs", "0", "--out", str(tmp_path / "o")])
    assert err.value.code == 2
    with pytest.raises(SystemExit) as err:
        demo.main(["--finetune_fraction", "1.5", "--out", str(tmp_path / "o")])
    assert err.value.code == 2 and "--finetune_fraction must be" in capsys.readouterr().err


def test_recipes_are_valid_main_clsa_views():
    import argparse
    for crops in (Recipe().crops, MULTI_CROP):
        assert check_views(argparse.Namespace(**crops)) == len(crops["size_crops"])
    argv = Recipe(alpha=0.0).argv("d", "r", "k")
    assert argv[argv.index("--alpha") + 1] == "0.0" and argv[argv.index("--knn_data") + 1] == "k"


def test_plot_curves_from_tensorboard_events(tmp_path):
    from tensorboardX import SummaryWriter
    w = SummaryWriter(log_dir=str(tmp_path))
    for step in range(5):
        w.add_scalar("train/infonce", 8.0 - step, step)
        w.add_scalar("train/ddm", 4.0 - step / 2, step)
    w.add_scalar("knn/top1", 70.0, 0)
    w.add_scalar("knn/top1", 75.5, 1)
    w.close()
    scalars = read_scalars(str(tmp_path))
    assert scalars["knn/top1"] == [(0, 70.0), (1, 75.5)] and scalars["train/infonce"][-1] == (4, 4.0)
    path = plot_curves(scalars, str(tmp_path / "c.png"), random_knn=72.0)
    with Image.open(path) as img:
        assert img.format == "PNG"


def test_a_run_stopped_mid_epoch_reports_the_fraction_it_trained(smoke_run, capsys):
    from experiments.demo_report import print_table
    _, out = smoke_run
    with open(os.path.join(out, "results.json")) as f:
        res = json.load(f)
    res.update(epochs_done=0, epochs_trained=0.75, stopped_at_budget=True)  # the guard stopped epoch 1 at 3/4
    capsys.readouterr()
    print_table(res)
    printed = capsys.readouterr().out
    assert "CLSA, 0.75 epoch(s)" in printed and "after 0.75 short epoch(s) of 64 images" in printed
    assert "(stopped early at the time budget)" in printed


def test_a_failed_fine_tune_is_one_line_and_a_record_not_a_traceback(tmp_path, monkeypatch, capsys):
    """main() writes results.json with whatever finetune_both returns, so the frozen-feature results survive."""
    def failing(*_args, **_kwargs):
        raise RuntimeError("finetune.py exited with 1:\nno space left on device")
    monkeypatch.setattr(demo, "finetune_pair", failing)
    args = demo.build_parser().parse_args(["--out", str(tmp_path)])
    sizes = demo.EvalSizes(2000, 2000, 1000, 1000, finetune_passes=6000)
    got = demo.finetune_both(args, str(tmp_path / "ft"), str(tmp_path / "ckpt"), sizes)
    assert got == {"skipped": "finetune.py failed: finetune.py exited with 1:"}
    assert "the fine-tune failed (finetune.py exited with 1:)" in capsys.readouterr().err
    assert demo.finetune_both(args, "", "", demo.EvalSizes(2000, 2000, 1000, 1000)) == {
        "skipped": "no time within --budget_min 15"}
