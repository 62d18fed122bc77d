"""Tests of detection/convert.py and convert-pretrain-to-detectron2.py (torch only, no detectron2 needed)."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "detection" / "convert-pretrain-to-detectron2.py"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from detection import convert  # noqa: E402

# A hand-written slice of a torchvision ResNet state dict (with the MoCo/CLSA MLP head) and the names MoCo's
# renaming gives it. Values are small distinct tensors so that any mix-up of keys shows.
KNOWN_RENAMES = {
    "conv1.weight": "stem.conv1.weight",
    "bn1.weight": "stem.conv1.norm.weight",
    "bn1.bias": "stem.conv1.norm.bias",
    "bn1.running_mean": "stem.conv1.norm.running_mean",
    "bn1.running_var": "stem.conv1.norm.running_var",
    "bn1.num_batches_tracked": "stem.conv1.norm.num_batches_tracked",
    "layer1.0.conv1.weight": "res2.0.conv1.weight",
    "layer1.0.bn1.weight": "res2.0.conv1.norm.weight",
    "layer1.0.bn2.running_mean": "res2.0.conv2.norm.running_mean",
    "layer1.0.bn3.bias": "res2.0.conv3.norm.bias",
    "layer1.0.downsample.0.weight": "res2.0.shortcut.weight",
    "layer1.0.downsample.1.weight": "res2.0.shortcut.norm.weight",
    "layer1.0.downsample.1.running_var": "res2.0.shortcut.norm.running_var",
    "layer2.0.conv1.weight": "res3.0.conv1.weight",
    "layer2.3.bn2.bias": "res3.3.conv2.norm.bias",
    "layer3.0.conv1.weight": "res4.0.conv1.weight",
    "layer3.5.conv3.weight": "res4.5.conv3.weight",
    "layer4.0.conv1.weight": "res5.0.conv1.weight",
    "layer4.0.downsample.1.num_batches_tracked": "res5.0.shortcut.norm.num_batches_tracked",
    "layer4.2.bn3.weight": "res5.2.conv3.norm.weight",
    "fc.0.weight": "stem.fc.0.weight",
    "fc.0.bias": "stem.fc.0.bias",
    "fc.2.weight": "stem.fc.2.weight",
    "fc.2.bias": "stem.fc.2.bias",
}


def known_encoder() -> dict[str, torch.Tensor]:
    """The torchvision-named tensors of KNOWN_RENAMES, with distinct values (0-d int64 for num_batches_tracked)."""
    state = {}
    for i, key in enumerate(KNOWN_RENAMES):
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(100 + i, dtype=torch.long)
        else:
            state[key] = torch.arange(6, dtype=torch.float32).reshape(2, 3) + 10 * i
    return state


def pretrain_checkpoint(encoder: dict[str, torch.Tensor]) -> dict:
    """A checkpoint in the pretraining layout (query and key encoders, queue, pointer)."""
    state = {"module.queue": torch.randn(4, 8), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    for k, v in encoder.items():
        state["module.encoder_q." + k] = v.clone()
        state["module.encoder_k." + k] = v.clone() - 1000  # must never leak into the output
    return {"epoch": 1, "arch": "resnet50", "state_dict": state, "optimizer": {}, "best_acc": 0.0}


def expected_model() -> dict[str, np.ndarray]:
    return {KNOWN_RENAMES[k]: v.numpy() for k, v in known_encoder().items()}


def read_pickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f)


def assert_same_model(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name, array in want.items():
        assert isinstance(got[name], np.ndarray), name
        assert got[name].dtype == array.dtype and got[name].shape == array.shape, name
        assert np.array_equal(got[name], array), name


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120, cwd=REPO)


def test_known_pretrain_checkpoint_converts_to_expected_names_and_arrays(tmp_path):
    src, out = tmp_path / "ckpt.pth.tar", tmp_path / "out.pkl"
    torch.save(pretrain_checkpoint(known_encoder()), src)
    count = convert.convert_file(str(src), str(out), verbose=False)
    payload = read_pickle(out)
    assert sorted(payload) == ["__author__", "matching_heuristics", "model"]
    assert payload["matching_heuristics"] is True
    assert payload["__author__"] == "MOCO"
    assert_same_model(payload["model"], expected_model())
    assert count == len(KNOWN_RENAMES)
    assert payload["model"]["stem.conv1.norm.num_batches_tracked"].shape == ()


@pytest.mark.parametrize("layout", ["bare", "state_dict", "model", "ddp_prefix"])
def test_plain_resnet_state_dicts_are_accepted(tmp_path, layout):
    encoder = known_encoder()
    if layout == "ddp_prefix":
        obj = {"state_dict": {"module." + k: v for k, v in encoder.items()}}
    elif layout == "bare":
        obj = encoder
    else:
        obj = {layout: encoder, "epoch": 3}
    src, out = tmp_path / "resnet.pth", tmp_path / "resnet.pkl"
    torch.save(obj, src)
    convert.convert_file(str(src), str(out), verbose=False)
    assert_same_model(read_pickle(out)["model"], expected_model())


def test_torchvision_resnet_names_cover_every_key():
    import torchvision

    state = torchvision.models.resnet50(weights=None).state_dict()
    renamed = convert.convert_state_dict(state)
    assert len(renamed) == len(state)
    assert all(n.startswith(("stem.", "res2.", "res3.", "res4.", "res5.")) for n in renamed)
    assert not any("bn" in n or "layer" in n or "downsample" in n for n in renamed)
    assert renamed["res4.0.shortcut.norm.running_mean"] is not None
    assert sum(n.startswith("res5.") for n in renamed) == sum(k.startswith("layer4.") for k in state)


def test_script_reports_count_and_renames(tmp_path):
    src, out = tmp_path / "ckpt.pth.tar", tmp_path / "out.pkl"
    torch.save(pretrain_checkpoint(known_encoder()), src)
    proc = run_script(str(src), str(out))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == f"wrote {len(KNOWN_RENAMES)} tensors to {out}"
    assert "layer1.0.downsample.1.weight -> res2.0.shortcut.norm.weight" in lines
    assert_same_model(read_pickle(out)["model"], expected_model())


def _write_bad_input(kind: str, path: Path) -> None:
    if kind == "no_resnet":
        state = {"module.encoder_q.weight": torch.zeros(3), "module.queue": torch.zeros(2, 2)}
        torch.save({"epoch": 1, "state_dict": state}, path)
    elif kind == "truncated_resnet":  # stages missing: not a ResNet encoder
        torch.save({k: v for k, v in known_encoder().items() if not k.startswith("layer4")}, path)
    elif kind == "not_a_checkpoint":
        path.write_text("this is not a checkpoint\n")
    elif kind != "missing":
        raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["no_resnet", "truncated_resnet", "not_a_checkpoint", "missing"])
def test_script_refuses_bad_input_with_one_line_and_exit_2(tmp_path, kind):
    src, out = tmp_path / f"{kind}.pth.tar", tmp_path / "out.pkl"
    _write_bad_input(kind, src)
    proc = run_script(str(src), str(out))
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, proc.stderr
    assert str(src) in err[0] and "error" in err[0]
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert not out.exists()
    assert os.listdir(tmp_path) == ([src.name] if src.exists() else [])


def test_failed_conversion_keeps_existing_output_and_leaves_no_temp(tmp_path, monkeypatch):
    src, out = tmp_path / "ckpt.pth.tar", tmp_path / "out.pkl"
    torch.save(pretrain_checkpoint(known_encoder()), src)
    out.write_bytes(b"previous")

    def broken_dump(obj, f, *args, **kwargs):
        f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(convert.pickle, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        convert.convert_file(str(src), str(out), verbose=False)
    assert out.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pth.tar", "out.pkl"]


def test_bad_input_keeps_existing_output(tmp_path):
    src, out = tmp_path / "bad.pth", tmp_path / "out.pkl"
    _write_bad_input("no_resnet", src)
    out.write_bytes(b"previous")
    with pytest.raises(convert.ConversionError, match="no ResNet encoder"):
        convert.convert_file(str(src), str(out), verbose=False)
    assert out.read_bytes() == b"previous"
