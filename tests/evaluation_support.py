"""Data shared by the evaluation tests (lincls, kNN, VOC07): a tiny ImageFolder with train/ and val/, a checkpoint
written by main_clsa.py on it, and a synthetic VOC2007 layout. Built once per pytest session under basetemp."""

from __future__ import annotations

import os
from xml.etree import ElementTree as ET

import numpy as np
from conftest import find_checkpoint, run_script, write_image_folder
from PIL import Image

CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 3, 12, 3  # 9 val images: an odd count for 2-process validation
SMALL = ["-a", "resnet18", "-b", "8", "-j", "0", "--train-crop", "32", "--val-resize", "36", "--val-crop", "32",
         "-p", "1"]


def eval_folder(base: str) -> str:
    """<base>/data/{train,val}/class{0,1,2}/*.jpg (36 x 36 px)."""
    root = os.path.join(base, "data")
    if not os.path.isdir(os.path.join(root, "val")):
        write_image_folder(root, CLASSES, TRAIN_PER_CLASS, (36, 36), "train", seed=0)
        write_image_folder(root, CLASSES, VAL_PER_CLASS, (36, 36), "val", seed=1)
    return root


def pretrained_checkpoint(base: str) -> str:
    """checkpoint_last.pth.tar of a one-epoch main_clsa.py run on `eval_folder(base)` (the issue's command)."""
    log = os.path.join(base, "pretrain_log")
    if not os.path.isdir(log):
        data = eval_folder(base)
        cmd = ["main_clsa.py", "--data", data, "--arch", "resnet18", "--batch_size", "8", "--moco_k", "64",
               "--epochs", "1", "--workers", "0", "--nmb_crops", "1", "1", "--size_crops", "32", "16",
               "--min_scale_crops", "0.2", "0.086", "--max_scale_crops", "1.0", "0.429", "--pick_strong", "1",
               "--pick_weak", "0", "--log_path", log, "--print_freq", "1", "--seed", "0"]
        proc = run_script(cmd)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return find_checkpoint(log)


def shared_base(tmp_path_factory) -> str:
    """One folder per session for the shared data (the same path from every test module)."""
    path = os.path.join(str(tmp_path_factory.getbasetemp()), "evaluation_shared")
    os.makedirs(path, exist_ok=True)
    return path


def voc_annotation(image_id: str, objects: list[tuple[str, int]], size: int = 32) -> str:
    """XML of one image; objects are (class name, difficult flag) with a box covering most of the image."""
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    sz = ET.SubElement(root, "size")
    for tag, value in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(sz, tag).text = str(value)
    for name, difficult in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "difficult").text = str(difficult)
        box = ET.SubElement(obj, "bndbox")
        for tag, value in (("xmin", 2), ("ymin", 2), ("xmax", size - 2), ("ymax", size - 2)):
            ET.SubElement(box, tag).text = str(value)
    return ET.tostring(root, encoding="unicode")


COLOURS = {"cat": (220, 40, 40), "dog": (40, 220, 40), "car": (40, 40, 220), "person": (200, 200, 40)}


def write_voc(base: str, splits: dict[str, list[tuple[str, list[tuple[str, int]]]]], seed: int = 0) -> str:
    """Write <base>/VOCdevkit/VOC2007/{Annotations, JPEGImages, ImageSets/Main/<split>.txt}; returns base.

    Each image is noise tinted by the colours of its objects' classes (so a head has something to learn)."""
    rng = np.random.default_rng(seed)
    voc = os.path.join(base, "VOCdevkit", "VOC2007")
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(voc, sub), exist_ok=True)
    for split, images in splits.items():
        for image_id, objects in images:
            tint = np.mean([COLOURS.get(n, (128, 128, 128)) for n, _ in objects] or [(128, 128, 128)], axis=0)
            pixels = np.clip(tint + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(os.path.join(voc, "JPEGImages", f"{image_id}.jpg"), quality=90)
            with open(os.path.join(voc, "Annotations", f"{image_id}.xml"), "w") as f:
                f.write(voc_annotation(image_id, objects))
        with open(os.path.join(voc, "ImageSets", "Main", f"{split}.txt"), "w") as f:
            f.write("\n".join(i for i, _ in images) + "\n")
    return base


def synthetic_voc_splits() -> dict[str, list[tuple[str, list[tuple[str, int]]]]]:
    """16 trainval and 12 test images over cat/dog/car/person, some objects difficult."""
    patterns = [[("cat", 0)], [("dog", 0)], [("car", 0)], [("person", 0), ("car", 0)], [("cat", 0), ("dog", 1)],
                [("person", 1)], [("dog", 0), ("person", 0)], [("car", 1), ("cat", 0)]]
    trainval = [(f"{i:06d}", patterns[i % len(patterns)]) for i in range(16)]
    test = [(f"{100 + i:06d}", patterns[(i * 3) % len(patterns)]) for i in range(12)]
    return {"trainval": trainval, "test": test}
