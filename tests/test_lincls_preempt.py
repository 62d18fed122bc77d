"""lincls.py under preemption: SIGTERM writes a checkpoint and exits 75; --resume continues."""

import os
import re
import signal
import subprocess
import sys

import torch
from conftest import REPO, run_script, write_image_folder


def test_sigterm_saves_and_resume_continues(tmp_path):
    root = str(tmp_path / "data")
    write_image_folder(root, classes=2, per_class=40, size=(32, 32))
    write_image_folder(root, classes=2, per_class=4, size=(32, 32), split="val")
    common = ["lincls.py", "--data", root, "-a", "resnet18", "-b", "4", "-j", "0", "--train-crop", "32",
              "--val-resize", "32", "--val-crop", "32", "-p", "1", "--lr", "0.1", "--log_path", str(tmp_path / "log")]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, *common, "--epochs", "100"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = ""
    for line in proc.stdout:
        seen += line
        if re.search(r"Epoch: \[0\]\[\s*3/", line):
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, seen + rest
    path = re.search(r"SIGTERM: saved (\S+);", rest).group(1)
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    assert "module.fc.weight" in ckpt["state_dict"]

    r = run_script([*common, "--epochs", str(ckpt["epoch"] + 1), "--resume", path])
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"epoch {ckpt['epoch']} done" in r.stdout and " * Acc@1" in r.stdout
