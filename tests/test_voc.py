"""VOC07 classification: annotation parsing, per-class AP (hand-computed and against scikit-learn, difficult
images ignored), layout errors, and VOC_CLF/main.py end to end on a synthetic VOC2007 layout."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torchvision
from conftest import REPO, run_script
from evaluation_support import synthetic_voc_splits, voc_annotation, write_voc
from sklearn.metrics import average_precision_score

from VOC_CLF.voc import (
    VOC_CLASSES,
    VOC2007Classification,
    average_precision,
    mean_ap,
    parse_annotation,
    per_class_ap,
    per_image_ap,
    voc07_11point_ap,
)


def test_parse_annotation_present_difficult_absent(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(voc_annotation("a", [("cat", 0), ("cat", 1), ("dog", 1), ("tvmonitor", 0)]))
    labels = parse_annotation(str(path))
    expected = np.full(20, -1)
    expected[VOC_CLASSES.index("cat")] = 1  # one non-difficult cat is enough
    expected[VOC_CLASSES.index("dog")] = 0  # difficult only: ignored
    expected[VOC_CLASSES.index("tvmonitor")] = 1
    assert labels.tolist() == expected.tolist()
    assert VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[-1] == "tvmonitor" and list(VOC_CLASSES) == sorted(VOC_CLASSES)


def test_ap_hand_computed():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    labels = np.array([1, -1, 1, -1, 1])
    # precision at each positive: 1/1, 2/3, 3/5; each adds recall 1/3.
    assert average_precision(scores, labels) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # 11-point: best precision at recall >= r is 1 for r <= 0.3, 2/3 for r in 0.4..0.6, 3/5 for r >= 0.7.
    assert voc07_11point_ap(scores, labels) == pytest.approx((4 * 1 + 3 * 2 / 3 + 4 * 0.6) / 11)
    assert average_precision(scores, np.array([-1, 1, -1, 1, 1])) == pytest.approx((1 / 2 + 2 / 4 + 3 / 5) / 3)
    assert np.isnan(average_precision(scores, -np.ones(5)))


def test_ap_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for trial in range(30):
        n = int(rng.integers(5, 60))
        labels = np.where(rng.random(n) < 0.35, 1, -1)
        labels[0] = 1
        scores = np.round(rng.normal(size=n) + labels * rng.random(), 1 if trial % 2 else 6)  # coarse: many ties
        assert average_precision(scores, labels) == pytest.approx(average_precision_score(labels == 1, scores))


def test_difficult_images_are_ignored():
    scores = np.array([0.95, 0.9, 0.8, 0.7, 0.4, 0.3])
    labels = np.array([0, -1, 1, 0, 1, -1])  # two difficult-only images, one of them ranked first
    kept = labels != 0
    expected = average_precision_score(labels[kept] == 1, scores[kept])
    assert average_precision(scores, labels) == pytest.approx(expected)
    # Counting the difficult image as a negative (the 2021 behaviour) would lower the AP.
    assert average_precision(scores, np.where(labels == 0, -1, labels)) < expected
    # Columns: per-class AP and the mean over classes that have positives.
    matrix_scores = np.stack([scores, scores[::-1]], axis=1)
    matrix_labels = np.stack([labels, -np.ones(6, dtype=int)], axis=1)
    aps = per_class_ap(matrix_scores, matrix_labels)
    assert aps[0] == pytest.approx(expected) and np.isnan(aps[1]) and mean_ap(aps) == pytest.approx(expected)


def test_per_image_ap_is_the_2021_metric():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.7], [0.1, 0.2, 0.3]])
    labels = np.array([[1, -1, -1], [-1, -1, 1], [-1, 0, -1]])  # the last image has no positive: skipped
    assert per_image_ap(scores, labels) == pytest.approx((1.0 + 0.5) / 2)


def test_dataset_reads_the_layout(tmp_path):
    data = write_voc(str(tmp_path), synthetic_voc_splits())
    ds = VOC2007Classification(data, "trainval", torchvision.transforms.ToTensor())
    assert len(ds) == 16
    image, labels = ds[4]  # cat + difficult dog
    assert image.shape == (3, 32, 32) and labels.dtype == torch.int64
    assert labels[VOC_CLASSES.index("cat")] == 1 and labels[VOC_CLASSES.index("dog")] == 0
    assert labels[VOC_CLASSES.index("car")] == -1


@pytest.mark.parametrize("remove, needle", [
    (os.path.join("VOCdevkit", "VOC2007", "ImageSets", "Main", "test.txt"), "missing file"),
    (os.path.join("VOCdevkit", "VOC2007", "JPEGImages", "000101.jpg"), "missing image file"),
    (os.path.join("VOCdevkit", "VOC2007", "Annotations", "000003.xml"), "missing annotation file"),
    ("VOCdevkit", "missing folder"),
])
def test_incomplete_layout_exits_2_naming_the_file(tmp_path, capsys, remove, needle):
    import shutil

    from VOC_CLF.main import main
    data = write_voc(str(tmp_path), synthetic_voc_splits())
    target = os.path.join(data, remove)
    shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
    with pytest.raises(SystemExit) as exc:
        main(["--data", data, "-a", "resnet18", "--epochs", "1", "--image-size", "32", "--log", str(tmp_path / "l"),
              "-j", "0", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1
    assert needle in err[0] and os.path.basename(remove) in err[0]


def _check_results(log: str, data: str, mode: str) -> dict:
    result = json.load(open(os.path.join(log, "results-1.json")))
    assert result["mode"] == mode and result["test_images"] == 12 and result["trainval_images"] == 16
    assert set(result["ap"]) == set(VOC_CLASSES)
    present = {k for k, v in result["ap"].items() if v is not None}
    assert present == {"cat", "dog", "car", "person"}
    # The reported APs equal scikit-learn's on the written scores, difficult-only images left out per class.
    lines = open(os.path.join(log, "scores-1.csv")).read().split()
    assert lines[0] == "image," + ",".join(VOC_CLASSES)
    ids = [row.split(",")[0] for row in lines[1:]]
    scores = np.array([[float(v) for v in row.split(",")[1:]] for row in lines[1:]])
    gt = np.stack([parse_annotation(os.path.join(data, "VOCdevkit", "VOC2007", "Annotations", f"{i}.xml"))
                   for i in ids])
    for name in present:
        c = VOC_CLASSES.index(name)
        keep = gt[:, c] != 0
        expected = 100 * average_precision_score(gt[keep, c] == 1, scores[keep, c])
        assert result["ap"][name] == pytest.approx(expected, abs=1e-3), name
    assert result["mAP"] == pytest.approx(np.mean([result["ap"][n] for n in present]))
    return result


def test_main_end_to_end_from_inside_voc_clf(tmp_path):
    data = write_voc(str(tmp_path / "voc"), synthetic_voc_splits())
    weights = str(tmp_path / "resnet18.pth")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    log = str(tmp_path / "log")
    proc = run_script(["main.py", f"--data={data}", f"--pretrained={weights}", "-a", "resnet18", "--epochs", "1",
                       "--batch-size", "4", "--image-size", "32", "-j", "0", "--log", log, "--device", "cpu"],
                      cwd=os.path.join(REPO, "VOC_CLF"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "torchvision state_dict" in proc.stdout and "epoch 1/1" in proc.stdout
    assert " * mAP " in proc.stdout and "  cat " in proc.stdout
    _check_results(log, data, "linear")
    head = torch.load(os.path.join(log, "model", "model-1.pth"), map_location="cpu", weights_only=False)
    assert head["head"]["weight"].shape == (20, 512)


def test_main_svm_from_repo_root(tmp_path):
    data = write_voc(str(tmp_path / "voc"), synthetic_voc_splits())
    log = str(tmp_path / "log")
    proc = run_script(["VOC_CLF/main.py", "--data", data, "-a", "resnet18", "--svm", "--svm-costs", "0.1", "1",
                       "--image-size", "32", "-j", "0", "--log", log, "--device", "cpu"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "randomly initialised backbone" in proc.stdout
    result = _check_results(log, data, "svm")
    assert result["svm_costs"]["cat"] in (0.1, 1.0) and result["svm_costs"]["bus"] is None
