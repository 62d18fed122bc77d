"""Write a tiny synthetic dataset in Pascal VOC layout, for smoke runs of train_net.py without the real data.

    python detection/synthetic_voc.py /tmp/d2data            # writes /tmp/d2data/VOC2007 and /tmp/d2data/VOC2012
    DETECTRON2_DATASETS=/tmp/d2data python detection/train_net.py ...

Each image is random noise with one to three filled rectangles, each labelled with a VOC class name; the layout is
the one detectron2's builtin ``voc_<year>_<split>`` datasets read: ``Annotations/<id>.xml``,
``ImageSets/Main/<split>.txt`` and ``JPEGImages/<id>.jpg``. The numbers mean nothing: it only exercises the code.
"""

from __future__ import annotations

import argparse
import os
import random
from xml.etree import ElementTree as ET

from PIL import Image, ImageDraw

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def _annotation(image_id: str, width: int, height: int, objects: list[tuple[str, tuple[int, int, int, int]]]) -> str:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for name, (x0, y0, x1, y1) in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")
        # VOC boxes are 1-based inclusive pixel indices.
        for tag, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(box, tag).text = str(value)
    return ET.tostring(root, encoding="unicode")


def write_voc(
    root: str,
    year: int = 2007,
    splits: dict[str, int] | None = None,
    size: tuple[int, int] = (80, 64),
    classes: tuple[str, ...] = ("cat", "dog", "car"),
    seed: int = 0,
) -> str:
    """Write ``<root>/VOC<year>`` with ``splits`` (split name -> number of images); return that folder.

    ``trainval`` is the union of ``train`` and ``val`` when those are requested; by default ``trainval`` and
    ``test`` get 4 images each. Images are ``size`` (width, height) JPEGs; objects use names from ``classes``.
    Every split needs at least two images (detectron2 reads the id list with numpy.loadtxt).
    """
    splits = dict(splits or {"trainval": 4, "test": 4})
    unknown = set(classes) - set(VOC_CLASSES)
    if unknown:
        raise ValueError(f"not VOC class names: {sorted(unknown)}")
    if any(n < 2 for n in splits.values()):
        raise ValueError("every split needs at least two images")
    rng = random.Random(seed)
    base = os.path.join(root, f"VOC{year}")
    for sub in ("Annotations", os.path.join("ImageSets", "Main"), "JPEGImages"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    width, height = size
    ids_per_split: dict[str, list[str]] = {}
    counter = 0
    for split, count in splits.items():
        ids = ids_per_split.setdefault(split, [])
        for _ in range(count):
            counter += 1
            image_id = f"{year}_{counter:06d}"
            ids.append(image_id)
            image = Image.effect_noise((width, height), 40).convert("RGB")
            draw = ImageDraw.Draw(image)
            objects = []
            for _ in range(rng.randint(1, 3)):
                w, h = rng.randint(width // 4, width // 2), rng.randint(height // 4, height // 2)
                x0, y0 = rng.randint(0, width - w), rng.randint(0, height - h)
                name = rng.choice(classes)
                color = tuple(rng.randint(0, 255) for _ in range(3))
                draw.rectangle((x0, y0, x0 + w - 1, y0 + h - 1), fill=color)
                objects.append((name, (x0, y0, x0 + w, y0 + h)))
            image.save(os.path.join(base, "JPEGImages", f"{image_id}.jpg"), quality=90)
            with open(os.path.join(base, "Annotations", f"{image_id}.xml"), "w") as f:
                f.write(_annotation(image_id, width, height, objects))
    if "train" in ids_per_split and "val" in ids_per_split and "trainval" not in ids_per_split:
        ids_per_split["trainval"] = ids_per_split["train"] + ids_per_split["val"]
    for split, ids in ids_per_split.items():
        with open(os.path.join(base, "ImageSets", "Main", f"{split}.txt"), "w") as f:
            f.write("\n".join(ids) + "\n")
    return base


def main() -> None:
    """Command line: write VOC2007 (trainval + test) and VOC2012 (trainval) under the given root."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="folder to write VOC2007/ and VOC2012/ into (DETECTRON2_DATASETS)")
    parser.add_argument("--images", type=int, default=4, help="images per split (at least 2)")
    args = parser.parse_args()
    for year, splits in ((2007, {"trainval": args.images, "test": args.images}), (2012, {"trainval": args.images})):
        print("wrote", write_voc(args.root, year=year, splits=splits, seed=year))


if __name__ == "__main__":
    main()
