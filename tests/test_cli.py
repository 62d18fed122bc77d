"""Flags: the README commands parse to the 2021 values; bad input gives one line and exit code 2."""

import os

import pytest
from conftest import CPU_OVERRIDES, readme_command, run_script

import main_clsa
from ops.argparser import parse_args


@pytest.mark.parametrize("kind", ["single", "multi"])
@pytest.mark.parametrize("sym", [0, 1])
def test_readme_commands_parse(kind, sym):
    a = parse_args(readme_command(kind, sym, "/data/imagenet"))
    assert (a.data, a.workers, a.epochs, a.batch_size, a.lr, a.weight_decay) == ("/data/imagenet", 32, 200, 256,
                                                                                  0.03, 1e-4)
    assert (a.world_size, a.rank, a.dist_url, a.moco_k, a.moco_m, a.moco_t, a.clsa_t) == (
        1, 0, "tcp://localhost:10001", 65536, 0.999, 0.2, 0.2)
    assert a.alpha == 1.0 and a.aug_times == 5 and a.sym == sym
    if kind == "single":
        assert (a.nmb_crops, a.size_crops, a.pick_strong, a.pick_weak) == ([1, 1], [224, 96], [1], [0])
    else:
        assert a.size_crops == [224, 192, 160, 128, 96] and a.pick_weak == [0, 1, 2, 3, 4]


def test_defaults_match_the_2021_parser():
    a = parse_args([])
    assert (a.data, a.arch, a.workers, a.batch_size, a.lr, a.world_size, a.rank, a.dist_backend) == (
        "data", "resnet50", 32, 256, 0.03, -1, -1, "nccl")
    assert (a.print_freq, a.multiprocessing_distributed, a.mlp, a.cos, a.alpha, a.sym) == (10, 1, 1, 1, 1, 0)
    assert isinstance(a.alpha, int)  # so the default run directory reads Alpha_1, as in 2021
    assert a.min_scale_crops == [0.2, 0.172, 0.143, 0.114, 0.086]
    assert parse_args(["--learning_rate", "0.5", "-b", "64"]).lr == 0.5


def test_help_explains_symbols(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for text in ("temperature T", "temperature T2", "alpha", "queue length K", "--cpu_procs"):
        assert text in out


def _bad_cases(data, tmp):
    empty = os.path.join(tmp, "empty")
    os.makedirs(os.path.join(empty, "train", "a"), exist_ok=True)
    base = ["--data", data, *CPU_OVERRIDES, "--log_path", os.path.join(tmp, "logs"),
            "--nmb_crops", "1", "1", "--size_crops", "32", "16", "--min_scale_crops", "0.2", "0.1",
            "--max_scale_crops", "1", "0.5", "--pick_weak", "0", "--pick_strong", "1"]
    return {
        "unequal crop lists": (base + ["--size_crops", "32"], "crop lists must have equal length"),
        "pick out of range": (base + ["--pick_strong", "2"], "--pick_strong [2]"),
        "moco_k not multiple": (base + ["--moco_k", "60"], "--moco_k 60 must be a multiple of the global batch 8"),
        "batch < procs": (base + ["--batch_size", "1", "--cpu_procs", "2"], "smaller than the 2 processes"),
        "no train folder": (base + ["--data", tmp], "has no 'train/' folder"),
        "no images": (base + ["--data", empty], "no images"),
        "missing resume": (base + ["--resume", os.path.join(tmp, "nope.pth.tar")], "no such checkpoint file"),
        "unknown arch": (base + ["--arch", "resnet7"], "--arch 'resnet7' is not supported"),
        "too few images": (base + ["--batch_size", "32", "--moco_k", "64"], "fewer than the global batch 32"),
        "negative warmup": (base + ["--warmup_iters", "-5"], "--warmup_iters must be >= 0, got -5"),
    }


@pytest.mark.parametrize("case", ["unequal crop lists", "pick out of range", "moco_k not multiple", "batch < procs",
                                  "no train folder", "no images", "missing resume", "unknown arch", "too few images",
                                  "negative warmup"])
def test_bad_input_one_line_exit_2(case, image_folder, tmp_path, capsys):
    argv, expected = _bad_cases(image_folder, str(tmp_path))[case]
    with pytest.raises(SystemExit) as e:
        main_clsa.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("main_clsa.py: error:") and expected in err[0], err
    assert not os.path.exists(os.path.join(tmp_path, "logs")), "no run directory before the input is valid"


def test_bad_input_as_a_real_process(image_folder, tmp_path):
    argv, expected = _bad_cases(image_folder, str(tmp_path))["moco_k not multiple"]
    r = run_script(["main_clsa.py", *argv])
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and expected in r.stderr


def test_torchrun_without_env_url_is_refused(image_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    argv, _ = _bad_cases(image_folder, str(tmp_path))["moco_k not multiple"]
    with pytest.raises(SystemExit) as e:
        main_clsa.main([*argv, "--moco_k", "64"])
    assert e.value.code == 2 and "running under torchrun: pass the env:// init method" in capsys.readouterr().err


def test_run_directories_started_in_the_same_second_differ(tmp_path):
    from ops.runlog import unique_run_dir
    base = str(tmp_path / "260101-000000")
    assert [unique_run_dir(base) for _ in range(3)] == [base, base + "-1", base + "-2"]


PROBE = """import runpy, sys
sys.argv = [sys.argv[1], *sys.argv[2:]]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
    print("exit", e.code, "torch imported:", "torch" in sys.modules)
"""


@pytest.mark.parametrize("script", ["main_clsa.py", "lincls.py", "finetune.py"])
@pytest.mark.parametrize("flags, code", [(["--help"], 0), (["--epochs", "ten"], 2), (["--no_such_flag"], 2)])
def test_help_and_malformed_flags_answer_before_torch_is_imported(script, flags, code):
    """argparse runs first in each entry script: --help and a malformed flag take a fraction of a second, not the
    seconds torch's import costs on a CPU."""
    r = run_script(["-c", PROBE, script, *flags])
    assert r.stdout.strip().splitlines()[-1] == f"exit {code} torch imported: False", r.stdout + r.stderr
    assert ("usage:" in r.stdout) if code == 0 else ("error:" in r.stderr)
