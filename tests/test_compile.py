"""--compile: torch.compile of the encoders' training forward computes the eager losses and keeps checkpoints as they
are; without a compiler it is refused up front."""

import os
import re

import torch
from conftest import CPU_OVERRIDES, TINY_CROPS, find_checkpoint, free_port, logged_losses, run_script

from clsa.builder import CLSA

TINY = [*TINY_CROPS, "--seed", "3"]


def test_compile_encoders_keeps_modules_and_state_dict_keys():
    model = CLSA("resnet18", 16, 32, 0.99)
    keys, encoder_type = list(model.state_dict()), type(model.encoder_q)
    model.compile_encoders(view_sizes=12)
    assert torch._dynamo.config.recompile_limit >= 24  # f_q and f_k at 12 sizes still compiled, not left eager
    assert list(model.state_dict()) == keys  # checkpoints keep their layout
    assert type(model.encoder_q) is encoder_type and type(model.encoder_k) is encoder_type  # evaluation stays eager
    assert set(model._forward_fns) == {"q", "k"}


def test_compiled_run_matches_eager_run(image_folder, tmp_path):
    """fp32 on CPU: the same seeded run with and without --compile logs the same losses (to fp32 rounding of a
    different kernel order) and writes checkpoints with the same keys; TORCH_LOGS shows the graphs were compiled."""
    def run(tag, *extra, env=None):
        r = run_script(["main_clsa.py", "--data", image_folder, *CPU_OVERRIDES, *TINY, "--log_path",
                        str(tmp_path / tag), "--dist_url", f"tcp://127.0.0.1:{free_port()}", *extra], timeout=600,
                       env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        return r, torch.load(find_checkpoint(str(tmp_path / tag)), map_location="cpu", weights_only=True)

    eager, eager_ckpt = run("eager")
    compiled, compiled_ckpt = run("compiled", "--compile", env={"TORCH_LOGS": "recompiles"})
    a, b = logged_losses(eager.stdout), logged_losses(compiled.stdout)
    assert len(a) == len(b) == 2
    for x, y in zip(a, b, strict=True):
        assert abs(x - y) <= 1e-4 * abs(x), (a, b)
    # f_k without grad at 32 px, then f_q with grad at 32 px and at 16 px: two recompiles of one forward.
    assert len(re.findall(r"Recompiling function forward", compiled.stderr)) == 2, compiled.stderr[-3000:]
    assert list(compiled_ckpt["state_dict"]) == list(eager_ckpt["state_dict"])
    assert compiled_ckpt["args"]["compile"] is True
    w = "module.encoder_q.layer4.1.bn2.weight"
    assert torch.allclose(compiled_ckpt["state_dict"][w], eager_ckpt["state_dict"][w], atol=1e-5)


def test_compile_without_a_compiler_is_refused(image_folder, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    r = run_script(["main_clsa.py", "--data", image_folder, *CPU_OVERRIDES, "--compile", "--log_path",
                    str(tmp_path / "log")], env={"PATH": str(empty), "CXX": ""})
    assert r.returncode == 2, r.stdout + r.stderr
    assert "--compile needs a C/C++ compiler" in r.stderr and "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "log")
