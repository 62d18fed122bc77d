"""Checkpoints are safe to open and portable: weights-only loading in every entry point, plain-data saves that
a plain torch.load and a MoCo-style loader read, the previous format only with --trust_checkpoint or once upgraded,
umask modes, the export."""

from __future__ import annotations

import json
import os
import pickle
import random
import stat

import numpy as np
import pytest
import torch
import torchvision
from conftest import find_checkpoint, logged_losses, run_script, write_image_folder
from evaluation_support import SMALL, eval_folder, pretrained_checkpoint, shared_base, synthetic_voc_splits, write_voc

from clsa.builder import CLSA
from clsa.checkpoint import atomic_copy, atomic_save, load_checkpoint, load_file
from ops.argparser import naming_flag
from ops.errors import FileProblem, UsageError

R50 = ["--arch", "resnet50", "--batch_size", "8", "--moco_k", "64", "--epochs", "1", "--workers", "0",
       "--nmb_crops", "1", "1", "--size_crops", "32", "16", "--min_scale_crops", "0.2", "0.086",
       "--max_scale_crops", "1.0", "0.429", "--pick_strong", "1", "--pick_weak", "0", "--print_freq", "1",
       "--seed", "0"]


R18 = ["--arch", "resnet18", *R50[2:]]


class CreatesMarker:
    """Unpickling this object calls open(marker, "w"): the file appears iff the loader ran code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict[str, str]:
    base = shared_base(tmp_path_factory)
    return {"data": eval_folder(base), "r18": pretrained_checkpoint(base), "base": base}


@pytest.fixture(scope="module")
def r50(tmp_path_factory) -> str:
    """A one-epoch resnet50 main_clsa.py checkpoint (16 images of 36 px, two iterations)."""
    base = tmp_path_factory.mktemp("r50")
    data = write_image_folder(str(base / "data"), 2, 8, (36, 36))
    proc = run_script(["main_clsa.py", "--data", data, *R50, "--log_path", str(base / "log")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return find_checkpoint(str(base / "log"))


@pytest.fixture()
def malicious(shared, tmp_path) -> tuple[str, str]:
    """A real checkpoint's content plus one object whose unpickling creates a marker file."""
    marker = str(tmp_path / "MARKER")
    ckpt = torch.load(shared["r18"], weights_only=True)
    ckpt["extra"] = CreatesMarker(marker)
    path = str(tmp_path / "evil.pth.tar")
    torch.save(ckpt, path)
    return path, marker


def entry_points(shared: dict[str, str], evil: str, tmp_path) -> dict[str, list[str]]:
    voc = write_voc(str(tmp_path / "voc"), synthetic_voc_splits())
    save = str(tmp_path / "lincls_out")
    return {
        "lincls linear": ["lincls.py", "--data", shared["data"], *SMALL, "--epochs", "1", "--pretrained", evil,
                          "--save_path", save],
        "lincls --knn": ["lincls.py", "--data", shared["data"], *SMALL, "--knn", "--pretrained", evil,
                         "--save_path", save],
        "main_clsa --resume": ["main_clsa.py", "--data", shared["data"], *R18,
                               "--resume", evil, "--run_dir", str(tmp_path / "pre")],
        "VOC_CLF": ["VOC_CLF/main.py", f"--data={voc}", f"--pretrained={evil}", "-a", "resnet18", "--epochs", "1",
                    "--image-size", "32", "-j", "0", "--log", str(tmp_path / "voc_log"), "--device", "cpu"],
        "converter": ["detection/convert-pretrain-to-detectron2.py", evil, str(tmp_path / "out.pkl")],
        "export": ["export_backbone.py", evil, str(tmp_path / "out.safetensors")],
    }


def test_every_entry_point_refuses_a_malicious_checkpoint(shared, malicious, tmp_path):
    evil, marker = malicious
    for name, argv in entry_points(shared, evil, tmp_path).items():
        proc = run_script(argv)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, f"{name}: {proc.stdout}{proc.stderr}"
        assert len(lines) == 1 and "refused" in lines[0] and "evil.pth.tar" in lines[0], f"{name}: {proc.stderr}"
        assert "io.open" in lines[0] and "--trust_checkpoint" in lines[0], lines[0]
        assert not os.path.exists(marker), f"{name} ran the pickled code"
    assert not os.path.exists(tmp_path / "lincls_out" / "train_log"), "a refused --pretrained left a run directory"
    assert not os.path.exists(tmp_path / "out.pkl") and not os.path.exists(tmp_path / "out.safetensors")


def test_trust_flag_opts_in_to_full_unpickling(malicious, tmp_path):
    evil, marker = malicious
    with pytest.raises(UsageError, match="refused"):
        load_checkpoint(evil)
    assert not os.path.exists(marker)
    proc = run_script(["detection/convert-pretrain-to-detectron2.py", evil, str(tmp_path / "o.pkl"), "-q",
                       "--trust_checkpoint"])
    assert proc.returncode == 2 and "basic-block ResNet (resnet18/34" in proc.stderr  # read, then refused: resnet18
    assert os.path.exists(marker), "--trust_checkpoint should have unpickled the file"


def test_real_checkpoint_opens_without_this_code(r50):
    ckpt = torch.load(r50, weights_only=True)  # what torch >= 2.6 does by default
    assert isinstance(ckpt["args"], dict) and ckpt["args"]["arch"] == "resnet50" and ckpt["arch"] == "resnet50"
    assert torch.is_tensor(ckpt["rng"][0]["numpy"][1]) and isinstance(ckpt["rng"][0]["python"], tuple)
    # MoCo's main_lincls.py loader, verbatim in spirit: keep encoder_q minus its fc, strip the prefix.
    state = ckpt["state_dict"]
    for k in list(state):
        if k.startswith("module.encoder_q") and not k.startswith("module.encoder_q.fc"):
            state[k[len("module.encoder_q."):]] = state[k]
        del state[k]
    msg = torchvision.models.resnet50().load_state_dict(state, strict=False)
    assert set(msg.missing_keys) == {"fc.weight", "fc.bias"} and not msg.unexpected_keys


def previous_format(path: str, out: str, extra: object = None) -> None:
    """Rewrite a checkpoint as the previous version saved it: numpy RNG state as an ndarray tuple."""
    ckpt = torch.load(path, weights_only=True)
    ckpt["rng"] = [{"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}]
    if extra is not None:
        ckpt["extra"] = extra
    torch.save(ckpt, out)


def one_line_error(proc, *words: str) -> str:
    """The single stderr line of a refused run (exit code 2), checked to contain `words`."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stdout + proc.stderr
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


def test_numpy_objects_are_refused_without_the_trust_flag(shared, tmp_path):
    """No allowlist: the previous format (numpy RNG state) and a structured numpy dtype (the kind of dtype state a
    crafted file abuses to turn raw bytes into an object pointer) are refused by every reader, with one line."""
    old = str(tmp_path / "old.pth.tar")
    previous_format(shared["r18"], old)
    crafted = str(tmp_path / "crafted.pth.tar")
    torch.save({"state_dict": {}, "x": np.zeros(2, dtype=[("f", "<i8"), ("g", "<f4")])}, crafted)
    for path in (old, crafted):  # the library names the file and the problem; the entry script adds its flag
        with pytest.raises(FileProblem, match=r"refused: .*numpy\.dtype") as refused:
            load_checkpoint(path)
        assert refused.value.not_plain_data and refused.value.earlier_format and "--" not in str(refused.value)
        with pytest.raises(UsageError, match=r"^--resume '.*' refused: .*numpy\.dtype.*--trust_checkpoint.*"
                                             r"upgrade_checkpoint\.py IN OUT --trust_checkpoint"):
            with naming_flag("--resume"):
                load_checkpoint(path)
    run_dir = str(tmp_path / "run")
    proc = run_script(["main_clsa.py", "--data", shared["data"], *R18, "--resume", old, "--run_dir", run_dir])
    one_line_error(proc, "--resume", "old.pth.tar", "refused", "--trust_checkpoint", "upgrade_checkpoint.py IN OUT")
    proc = run_script(["export_backbone.py", crafted, str(tmp_path / "out.pth")])
    one_line_error(proc, "CHECKPOINT", "crafted.pth.tar", "refused", "numpy")
    assert not os.path.exists(tmp_path / "out.pth")


def test_previous_format_resumes_with_trust_or_once_upgraded(shared, tmp_path):
    old = str(tmp_path / "old.pth.tar")
    previous_format(shared["r18"], old)
    new = str(tmp_path / "new.pth.tar")
    one_line_error(run_script(["upgrade_checkpoint.py", old, new]), "IN", "refused", "--trust_checkpoint")
    one_line_error(run_script(["upgrade_checkpoint.py", old, old, "--trust_checkpoint"]), "OUT", "same file as IN")
    proc = run_script(["upgrade_checkpoint.py", old, new, "--trust_checkpoint"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]
    before, after = torch.load(old, weights_only=False), torch.load(new, weights_only=True)
    kind, keys, *rest = after["rng"][0]["numpy"]
    assert keys.dtype == torch.int64 and np.array_equal(keys.numpy(), before["rng"][0]["numpy"][1])
    assert (kind, *rest) == (before["rng"][0]["numpy"][0], *before["rng"][0]["numpy"][2:])
    assert all(torch.equal(v, after["state_dict"][k]) for k, v in before["state_dict"].items())
    losses = []
    for path, extra in ((old, ["--trust_checkpoint"]), (new, [])):
        argv = ["main_clsa.py", "--data", shared["data"], *R18, "--resume", path, "--run_dir",
                str(tmp_path / f"run_{len(losses)}"), "--max_iters", "1", *extra]
        argv[argv.index("--epochs") + 1] = "2"
        proc = run_script(argv)
        assert proc.returncode == 0 and "resumed" in proc.stdout and "epoch 1 done" in proc.stdout, proc.stderr
        losses.append(logged_losses(proc.stdout))
    assert losses[0] == losses[1] and losses[0], losses  # the same RNG state, read either way


def test_resume_at_the_last_epoch_says_so(shared, tmp_path):
    argv = ["main_clsa.py", "--data", shared["data"], *R18, "--resume", shared["r18"],
            "--run_dir", str(tmp_path / "again")]
    proc = run_script(argv)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "nothing to train" in proc.stdout and "--epochs is 1" in proc.stdout and "epoch 0 done" not in proc.stdout


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_files_get_the_umask_mode(tmp_path, mask):
    old = os.umask(mask)
    try:
        atomic_save({"a": torch.ones(2)}, str(tmp_path / "a.pth.tar"))
        atomic_copy(str(tmp_path / "a.pth.tar"), str(tmp_path / "b.pth.tar"))
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    want = stat.S_IMODE(os.stat(tmp_path / "plain").st_mode)
    assert want == 0o666 & ~mask
    for name in ("a.pth.tar", "b.pth.tar"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == want, name
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []


def test_written_checkpoint_has_the_umask_mode(r50):
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(os.stat(r50).st_mode) == 0o666 & ~mask


def query_features(ckpt_path: str, x: torch.Tensor) -> torch.Tensor:
    ckpt = load_checkpoint(ckpt_path)
    args = ckpt["args"]
    model = CLSA(args["arch"], args["moco_dim"], args["moco_k"], 0.999, bool(args["mlp"]), bool(args["sym"]))
    model.load_state_dict({k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()})
    encoder = model.encoder_q.eval()
    encoder.fc = torch.nn.Identity()
    with torch.no_grad():
        return encoder(x)


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_export_loads_into_torchvision_and_timm(r50, tmp_path, fmt):
    import timm
    out = str(tmp_path / f"backbone.{fmt}")
    proc = run_script(["export_backbone.py", r50, out])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    card = json.load(open(out + ".json"))
    assert card["arch"] == "resnet50" and card["epochs"] == 1 and card["pretraining_flags"]["moco_k"] == 64
    import hashlib
    assert card["source_sha256"] == hashlib.sha256(open(r50, "rb").read()).hexdigest()
    weights = load_file(out)
    if fmt == "pth":
        assert torch.load(out, weights_only=True).keys() == weights.keys()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ref = query_features(r50, x)
    tv = torchvision.models.resnet50()
    msg = tv.load_state_dict(weights, strict=False)
    assert set(msg.missing_keys) == {"fc.weight", "fc.bias"} and not msg.unexpected_keys
    tm = timm.create_model("resnet50", pretrained=False)
    msg = tm.load_state_dict(weights, strict=False)
    assert set(msg.missing_keys) == {"fc.weight", "fc.bias"} and not msg.unexpected_keys
    tv.fc = torch.nn.Identity()
    tm.reset_classifier(0)
    with torch.no_grad():
        assert (tv.eval()(x) - ref).abs().max() <= 1e-5
        assert (tm.eval()(x) - ref).abs().max() <= 1e-5


def test_exported_backbone_is_accepted_downstream(shared, r50, tmp_path):
    out = str(tmp_path / "r18.safetensors")
    assert run_script(["export_backbone.py", shared["r18"], out]).returncode == 0
    proc = run_script(["lincls.py", "--data", shared["data"], *SMALL, "--epochs", "1", "--pretrained", out,
                       "--save_path", str(tmp_path / "lin")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "torchvision state_dict" in proc.stdout and " * Acc@1 " in proc.stdout
    r50_out = str(tmp_path / "r50.pth")
    assert run_script(["export_backbone.py", r50, r50_out]).returncode == 0
    proc = run_script(["detection/convert-pretrain-to-detectron2.py", r50_out, str(tmp_path / "r50.pkl"), "-q"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "res5.2.conv3.norm.weight" in pickle.load(open(tmp_path / "r50.pkl", "rb"))["model"]
