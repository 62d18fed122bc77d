"""One writer per run directory: a second run is refused with one line naming the first; the lock goes at exit
(also on SIGTERM and on errors); a stale lock of a dead process on this host is taken over, and the log says so."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
from conftest import CPU_OVERRIDES, REPO, TINY_CROPS, read_until, run_script, write_image_folder

import finetune
import lincls
import main_clsa
from ops.errors import UsageError
from ops.runlock import LOCK_NAME, RunLock, process_start


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _write_lock(folder, **holder) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_NAME)
    with open(path, "w") as f:
        json.dump(holder, f)
    return path


def test_a_run_directory_that_is_a_file_is_one_line(tmp_path):
    taken = tmp_path / "run"
    taken.write_text("not a folder")
    with pytest.raises(UsageError, match=f"^run directory {taken} is a file, not a folder$"):
        RunLock().acquire(str(taken))
    with pytest.raises(UsageError, match=f"^run directory {taken / 'sub'} cannot be made \\(Not a directory\\)$"):
        RunLock().acquire(str(taken / "sub"))
    assert taken.read_text() == "not a folder"


def test_second_lock_is_refused_naming_the_first_and_release_frees_it(tmp_path):
    first = RunLock().acquire(str(tmp_path / "run"))
    holder = json.load(open(first.path))
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(UsageError, match=rf"pid {os.getpid()} on {socket.gethostname()}.*lock {first.path}"):
        RunLock().acquire(str(tmp_path / "run"))
    first.release()
    assert not os.path.exists(first.path)
    RunLock().acquire(str(tmp_path / "run")).release()


def test_a_stale_lock_of_this_host_is_taken_over(tmp_path):
    pid = _dead_pid()
    _write_lock(tmp_path, pid=pid, host=socket.gethostname(), start=None)
    lock = RunLock().acquire(str(tmp_path))
    assert f"took over the stale lock {lock.path} of pid {pid}" in lock.note
    assert json.load(open(lock.path))["pid"] == os.getpid()
    lock.release()


def test_a_reused_pid_is_stale_and_another_hosts_lock_is_not_judged(tmp_path):
    _write_lock(tmp_path / "a", pid=os.getpid(), host=socket.gethostname(), start="1")  # our pid, another start
    assert process_start(os.getpid()) != "1"
    RunLock().acquire(str(tmp_path / "a")).release()
    _write_lock(tmp_path / "b", pid=_dead_pid(), host="elsewhere.example")
    with pytest.raises(UsageError, match="on elsewhere.example"):
        RunLock().acquire(str(tmp_path / "b"))
    path = _write_lock(tmp_path / "c")
    with pytest.raises(UsageError, match=f"names no process; .* remove {path}"):
        RunLock().acquire(str(tmp_path / "c"))


def test_release_leaves_a_lock_that_is_not_its_own(tmp_path):
    lock = RunLock().acquire(str(tmp_path))
    os.unlink(lock.path)
    other = _write_lock(tmp_path, pid=1, host="elsewhere.example")
    lock.release()
    assert os.path.exists(other)


def test_a_run_refused_after_taking_the_lock_removes_it(tmp_path, image_folder, capsys):
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as e:  # too few images for a batch of 32: refused inside the worker
        main_clsa.main(["--data", image_folder, *CPU_OVERRIDES, *TINY_CROPS, "--batch_size", "32",
                        "--run_dir", str(run_dir)])
    assert e.value.code == 2 and "fewer than the global batch 32" in capsys.readouterr().err
    assert not run_dir.exists()  # the lock and the folder it made are gone


@pytest.mark.parametrize("entry", [lincls, finetune])
def test_a_second_classifier_run_in_a_locked_run_dir_is_refused(entry, tmp_path, capsys):
    """lincls.py / finetune.py --resume into a folder whose lock a live run holds (this process): one line, exit 2,
    naming the holder; the holder's lock stays."""
    data = str(tmp_path / "data")
    write_image_folder(data, per_class=4)
    write_image_folder(data, per_class=2, split="val")
    run_dir = str(tmp_path / "run")
    held = RunLock().acquire(run_dir)
    resume = os.path.join(run_dir, "checkpoint_last.pth.tar")
    with open(resume, "wb") as f:
        f.write(b"never read: the lock is checked first")
    flags = ["--random-init", "--label-fraction", "0.5"] if entry is finetune else ["--epochs", "1"]
    try:
        with pytest.raises(SystemExit) as e:
            entry.main(["--data", data, "-a", "resnet18", "-b", "8", "-j", "0", *flags, "--resume", resume])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1, err
        assert f"run directory {run_dir} is in use by another run (pid {os.getpid()}" in err[0], err
        assert os.path.exists(held.path)
    finally:
        held.release()


def test_a_stop_signal_while_loading_still_checkpoints_and_releases_the_lock(tmp_path, monkeypatch, capsys):
    """finetune.py (and lincls.py: the same run_worker) handles stop signals from before it takes the lock: SIGTERM
    while the data is opened is kept, the first iteration ends in checkpoint_last.pth.tar and exit 75, and run.lock
    goes. Fails if the training loop's handler is installed only after loading (the signal is lost or kills)."""
    data = str(tmp_path / "data")
    write_image_folder(data, per_class=4)
    write_image_folder(data, per_class=2, split="val")
    opened = finetune.open_splits

    def open_then_signal(*a, **k):
        out = opened(*a, **k)
        os.kill(os.getpid(), signal.SIGTERM)  # handled at once: recorded, not fatal
        return out

    monkeypatch.setattr(finetune, "open_splits", open_then_signal)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as e:
        finetune.main(["--data", data, "-a", "resnet18", "-b", "4", "-j", "0", "--random-init", "--label-fraction",
                       "1", "--epochs", "2", "--seed", "0", "--save_path", str(tmp_path / "out")])
    assert e.value.code == 75, capsys.readouterr()
    assert signal.getsignal(signal.SIGTERM) == before  # main() called as a library leaves the handlers as it found
    runs = [d for d, _, files in os.walk(tmp_path / "out") if "checkpoint_last.pth.tar" in files]
    assert len(runs) == 1 and not os.path.exists(os.path.join(runs[0], LOCK_NAME))


def test_two_runs_in_one_run_dir(image_folder, tmp_path):
    run_dir = str(tmp_path / "run")
    stale = _dead_pid()
    _write_lock(run_dir, pid=stale, host=socket.gethostname())
    argv = ["main_clsa.py", "--data", image_folder, *CPU_OVERRIDES, *TINY_CROPS, "--workers", "0",
            "--run_dir", run_dir]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    first = subprocess.Popen([sys.executable, *argv, "--epochs", "50"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        seen = read_until(first, r"Epoch: \[0\]", timeout=240)
        assert f"took over the stale lock {os.path.join(run_dir, LOCK_NAME)} of pid {stale}" in seen

        second = run_script([*argv, "--epochs", "1", "--max_iters", "1"], timeout=240)
        err = second.stderr.strip().splitlines()
        assert second.returncode == 2 and len(err) == 1, second.stdout + second.stderr
        assert err[0].startswith(f"main_clsa.py: error: run directory {run_dir} is in use by another run (pid "
                                 f"{first.pid} on {socket.gethostname()}")
        assert os.path.join(run_dir, LOCK_NAME) in err[0] and "run directory" not in second.stdout
    finally:
        first.send_signal(signal.SIGTERM)
        rest, _ = first.communicate(timeout=240)
    assert first.returncode == 75, rest
    assert not os.path.exists(os.path.join(run_dir, LOCK_NAME))
    assert "took over the stale lock" in open(os.path.join(run_dir, "train.log")).read()
