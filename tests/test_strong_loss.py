"""main_clsa.py --strong_loss infonce end to end: what it logs, what the checkpoint records, resume with a conflict."""

import torch
from conftest import CPU_OVERRIDES, TINY_CROPS, logged_losses, run_script


def test_strong_infonce_trains_logs_and_refuses_a_conflicting_resume(image_folder, tmp_path):
    run_dir = str(tmp_path / "run")
    common = ["main_clsa.py", "--data", image_folder, *CPU_OVERRIDES, *TINY_CROPS, "--run_dir", run_dir,
              "--seed", "0", "--multiprocessing_distributed", "0"]
    r = run_script([*common, "--strong_loss", "infonce"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "StrongNCE" in r.stdout and "DDM" not in r.stdout.split("contrastive loss count")[1]
    assert "contrastive loss count 1\tweak strong loss count 1" in r.stdout
    ckpt = torch.load(f"{run_dir}/checkpoint_last.pth.tar", weights_only=True)
    assert ckpt["args"]["strong_loss"] == "infonce"

    ddm_run = run_script([*common, "--run_dir", str(tmp_path / "ddm")])
    assert ddm_run.returncode == 0 and logged_losses(ddm_run.stdout) != logged_losses(r.stdout)

    # Resuming with the default (ddm) would silently change the objective: one line, exit 2.
    bad = run_script([*common, "--resume", "auto", "--epochs", "2"])
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "strong_loss='infonce' (this run: 'ddm')" in bad.stderr and "Traceback" not in bad.stderr
    ok = run_script([*common, "--resume", "auto", "--epochs", "2", "--strong_loss", "infonce"])
    assert ok.returncode == 0 and "epoch 1 done" in ok.stdout, ok.stdout + ok.stderr
