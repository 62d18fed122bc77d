"""Detection transfer end to end on the CPU: pretraining checkpoint -> detectron2 pickle -> R50-C4 -> VOC metrics.

Needs detectron2 (``make detectron2`` or ``bash detection/install_detectron2.sh .venv/bin/python``); skipped
without it. Images are tiny and runs are a few iterations long.
"""

import glob
import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DETECTION = REPO / "detection"
CLSA_VOC_CONFIG = DETECTION / "configs" / "pascal_voc_R_50_C4_24k_CLSA.yaml"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

pytest.importorskip("detectron2", reason="detectron2 not installed (bash detection/install_detectron2.sh PYTHON)")

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.datasets import register_coco_instances  # noqa: E402
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from detection import convert, synthetic_voc, train_net  # noqa: E402

# Overrides that make the R50-C4 recipe run in seconds on two CPU cores.
CPU_OPTS = [
    "MODEL.DEVICE", "cpu",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.002", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "1",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "32", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "256", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "256", "MODEL.RPN.POST_NMS_TOPK_TEST", "32",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    "TEST.PRECISE_BN.ENABLED", "False", "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip

PRETRAIN_CMD = [
    "--arch", "resnet50", "--batch_size", "4", "--moco_k", "8", "--epochs", "1", "--workers", "0",
    "--nmb_crops", "1", "1", "--size_crops", "32", "16", "--min_scale_crops", "0.2", "0.086",
    "--max_scale_crops", "1.0", "0.429", "--pick_strong", "1", "--pick_weak", "0", "--print_freq", "1",
]  # fmt: skip


def make_pretrain_checkpoint(path: Path, queue_size: int = 8) -> None:
    """Write a checkpoint in the pretraining layout: resnet50 query/key encoders with the MLP head, queue, pointer.

    BatchNorm statistics and affine parameters are randomised so that a backbone left at its initial values
    (running mean 0, variance 1, weight 1, bias 0) cannot pass for a loaded one.
    """
    import torchvision
    from torch import nn

    def encoder() -> nn.Module:
        model = torchvision.models.resnet50(weights=None, num_classes=128)
        model.fc = nn.Sequential(nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 128))
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.data.uniform_(0.5, 1.5)
                module.bias.data.normal_()
                module.num_batches_tracked.fill_(7)
        return model

    torch.manual_seed(0)
    state = {}
    for prefix, model in (("module.encoder_q.", encoder()), ("module.encoder_k.", encoder())):
        state.update({prefix + k: v for k, v in model.state_dict().items()})
    state["module.queue"] = nn.functional.normalize(torch.randn(128, queue_size), dim=0)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    torch.save({"epoch": 1, "arch": "resnet50", "state_dict": state, "optimizer": {}, "best_acc": 0.0}, path)


def clsa_voc_cfg(*opts: str):
    """The CLSA VOC config with the CPU overrides (default NORM SyncBN: one process behaves as plain BN)."""
    cfg = get_cfg()
    cfg.merge_from_file(str(CLSA_VOC_CONFIG))
    cfg.merge_from_list(CPU_OPTS + list(opts))
    return cfg


def assert_backbone_loaded(pkl: Path) -> int:
    """Load ``pkl`` into a fresh R50-C4 model; every backbone/res5 tensor must equal the converted array.

    Returns the number of tensors checked.
    """
    with open(pkl, "rb") as f:
        converted = pickle.load(f)["model"]
    model = build_model(clsa_voc_cfg("MODEL.WEIGHTS", str(pkl)))
    assert type(model.roi_heads).__name__ == "Res5ROIHeadsExtraNorm"
    assert isinstance(model.roi_heads.res5.norm, torch.nn.SyncBatchNorm)
    assert model.roi_heads.res5.norm.num_features == 2048
    assert list(model.roi_heads.res5._modules) == ["0", "1", "2", "norm"]
    DetectionCheckpointer(model).load(str(pkl))
    state = model.state_dict()
    # The extra norm (res5.norm) is new; everything else in backbone + res5 must come from the checkpoint.
    pretrained = {
        k: v
        for k, v in state.items()
        if k.startswith("backbone.") or (k.startswith("roi_heads.res5.") and not k.startswith("roi_heads.res5.norm."))
    }
    checked = 0
    for key, value in pretrained.items():
        name = key.split(".", 1)[1]  # drop "backbone." / "roi_heads."
        assert name in converted, f"{key} has no converted counterpart {name}"
        assert torch.equal(value.cpu(), torch.as_tensor(converted[name])), f"{key} was not loaded"
        checked += 1
    used = {k.split(".", 1)[1] for k in pretrained}
    unused = sorted(set(converted) - used)
    assert all(k.startswith("stem.fc.") for k in unused), unused  # only the projection head is dropped
    return checked


@pytest.fixture(scope="module")
def d2_converted(tmp_path_factory) -> Path:
    """A pickle converted from a helper-made pretraining checkpoint."""
    folder = tmp_path_factory.mktemp("d2_converted")
    make_pretrain_checkpoint(folder / "checkpoint_last.pth.tar")
    convert.convert_file(str(folder / "checkpoint_last.pth.tar"), str(folder / "clsa.pkl"), verbose=False)
    (folder / "checkpoint_last.pth.tar").unlink()  # 240 MB
    return folder / "clsa.pkl"


def test_converted_checkpoint_fills_every_backbone_weight(d2_converted):
    # ResNet-50 without its head has 318 tensors (53 convs; 53 norms x 5 with num_batches_tracked): all loaded.
    assert assert_backbone_loaded(d2_converted) == 318


def test_main_clsa_checkpoint_converts_and_loads(tmp_path):
    if not (REPO / "main_clsa.py").exists():
        pytest.skip("main_clsa.py not written yet")
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "data" / "train" / cls).mkdir(parents=True)
        for i in range(2):
            Image.effect_noise((40, 48), 60).convert("RGB").save(tmp_path / "data" / "train" / cls / f"{i}.jpg")
    cmd = [sys.executable, "main_clsa.py", "--data", str(tmp_path / "data"), *PRETRAIN_CMD]
    proc = subprocess.run(
        cmd + ["--log_path", str(tmp_path / "log")], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    found = glob.glob(str(tmp_path / "log/ImageNet/Alpha_1/Aug_5/lr_0.03/cos_1/*/checkpoint_last.pth.tar"))
    assert len(found) == 1, found
    out = tmp_path / "clsa.pkl"
    proc = subprocess.run(
        [sys.executable, str(DETECTION / "convert-pretrain-to-detectron2.py"), "-q", found[0], str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wrote 322 tensors to {out}"  # 318 ResNet-50 tensors + 4 of the MLP head
    assert assert_backbone_loaded(out) == 318


def run_train_net(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(DETECTION / "train_net.py"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return proc


def read_metrics(path: Path) -> dict[str, float]:
    bbox = json.loads(path.read_text())["bbox"]
    assert set(bbox) == {"AP", "AP50", "AP75"}, bbox
    for name, value in bbox.items():
        assert value is not None and math.isfinite(value) and 0.0 <= value <= 100.0, (name, value)
    return bbox


def test_voc_train_then_eval_only_on_cpu(tmp_path, d2_converted):
    data = tmp_path / "datasets"
    synthetic_voc.write_voc(str(data), 2007, {"trainval": 4, "test": 4}, seed=1)
    synthetic_voc.write_voc(str(data), 2012, {"trainval": 2}, seed=2)
    env = dict(os.environ, DETECTRON2_DATASETS=str(data), OMP_NUM_THREADS="2")
    out = tmp_path / "output"
    common = ["--config-file", str(CLSA_VOC_CONFIG), *CPU_OPTS, "OUTPUT_DIR", str(out)]
    common += ["DATASETS.TRAIN", "('voc_2007_trainval', 'voc_2012_trainval')", "DATASETS.TEST", "('voc_2007_test',)"]

    train = run_train_net([*common, "MODEL.WEIGHTS", str(d2_converted), "SOLVER.MAX_ITER", "3"], env, tmp_path)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    log = train.stdout + train.stderr
    assert "Following weights matched with submodule" in log
    assert "Evaluating voc_2007_test using 2007 metric" in log
    with open(out / "metrics.json") as f:
        losses = [json.loads(line)["total_loss"] for line in f if "total_loss" in line]
    assert len(losses) >= 1 and all(math.isfinite(v) for v in losses)
    assert (out / "model_final.pth").is_file()
    after_training = read_metrics(out / "eval_results.json")
    (out / "eval_results.json").unlink()

    weights = ["MODEL.WEIGHTS", str(out / "model_final.pth")]
    evaluate = run_train_net(["--eval-only", *common, *weights], env, tmp_path)
    assert evaluate.returncode == 0, evaluate.stdout[-3000:] + evaluate.stderr[-3000:]
    log = evaluate.stdout + evaluate.stderr
    assert "copypaste: AP,AP50,AP75" in log
    assert "Starting training" not in log
    evaluated = read_metrics(out / "eval_results.json")
    # The same weights on the same images: the evaluation after training and --eval-only agree.
    assert evaluated == pytest.approx(after_training, abs=1e-6)


@pytest.mark.parametrize(
    "flags, opts, message",
    [
        ([], ["MODEL.RESNETS.NORM", "BN"], "set MODEL.WEIGHTS"),  # the CLSA configs' placeholder
        (["--num-gpus", "2"], ["MODEL.WEIGHTS", "x.pkl"], "more than one process needs CUDA"),
    ],
)
def test_train_net_refuses_unusable_settings_in_one_line(tmp_path, flags, opts, message):
    args = [*flags, "--config-file", str(CLSA_VOC_CONFIG), "MODEL.DEVICE", "cpu", *opts]
    proc = run_train_net(args, dict(os.environ), tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert not (tmp_path / "output").exists()


def test_evaluator_is_chosen_by_dataset_name(tmp_path):
    cfg = clsa_voc_cfg("OUTPUT_DIR", str(tmp_path))
    synthetic_voc.write_voc(str(tmp_path), 2007, {"test": 2})
    name = "d2_test_voc_2007_tiny"
    if name not in DatasetCatalog.list():
        from detectron2.data.datasets import register_pascal_voc

        register_pascal_voc(name, str(tmp_path / "VOC2007"), "test", 2007)
    assert isinstance(train_net.build_evaluator(cfg, name), PascalVOCDetectionEvaluator)

    coco_json = tmp_path / "coco.json"
    coco_json.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.jpg", "height": 8, "width": 8}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "area": 16,
                                 "iscrowd": 0}],
                "categories": [{"id": 1, "name": "thing"}],
            }
        )
    )  # fmt: skip
    coco_name = "d2_test_coco_tiny"
    if coco_name not in DatasetCatalog.list():
        register_coco_instances(coco_name, {}, str(coco_json), str(tmp_path))
    evaluator = train_net.build_evaluator(cfg, coco_name)
    assert isinstance(evaluator, COCOEvaluator)
    assert evaluator._output_dir == str(tmp_path / "inference")
    assert MetadataCatalog.get(coco_name).json_file == str(coco_json)

    with pytest.raises(ValueError, match="must contain 'coco' or 'voc'"):
        train_net.build_evaluator(cfg, "cityscapes_fine_instance_seg_val")
