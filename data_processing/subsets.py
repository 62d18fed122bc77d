"""Label subsets of a training split, for fine-tuning with few labels.

Two ways to pick the labelled images:
- a list of image names, one per line (`select_listed`): the format of the standard ImageNet 1 % / 10 % lists
  (`n04235860_14959.JPEG`); a bare name matches a file name anywhere in the split, a name with a '/' the path
  relative to the split (`<class>/<file>`); for Fashion-MNIST a sample's name is its index in the 60,000 train images;
- a seeded class-balanced draw (`balanced_draw`): for class c with n_c images, max(1, floor(F * n_c + 0.5)) of them
  (F times n_c rounded half up, at least one), chosen by `numpy.random.default_rng([seed, c]).permutation(n_c)`,
  so each class's draw depends only on (seed, class index, its images).

Either gives a `LabelSubset`: sorted dataset indices, their names (writing `names` one per line gives a list file
that selects exactly this subset again) and a record for result files. Problems raise `SubsetError` with one line;
the entry scripts add the flag names.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch.utils.data import Dataset

SHOW = 5  # how many offending names a message quotes


class SubsetError(ValueError):
    """A subset that cannot be matched or drawn; the message says why in one line."""


@dataclass
class LabelSubset:
    """The labelled images of a split: `indices` (sorted, into the split), their `names`, and how they were chosen."""
    indices: list[int]
    names: list[str]
    per_class: list[int]
    split_size: int
    kind: str  # "all", "list" or "fraction"
    source: dict[str, Any] = field(default_factory=dict)  # file and its sha256, or fraction and seed

    @property
    def names_sha256(self) -> str:
        """sha256 of the names written one per line (the bytes of the list file `names_text()`)."""
        return hashlib.sha256(self.names_text().encode()).hexdigest()

    def names_text(self) -> str:
        return "".join(n + "\n" for n in self.names)

    def record(self) -> dict[str, Any]:
        """What a result file needs to repeat the selection and to check that a rerun got the same images."""
        return {"kind": self.kind, **self.source, "images": len(self.indices), "split_images": self.split_size,
                "per_class_min": min(self.per_class), "per_class_max": max(self.per_class),
                "names_sha256": self.names_sha256}


def sample_names(dataset: Dataset) -> list[str]:
    """Each sample's name: an ImageFolder's path relative to its root ('/'-separated), else the index as text."""
    samples = getattr(dataset, "samples", None)
    if samples is None:
        return [str(i) for i in range(len(dataset))]
    root = getattr(dataset, "root", "")
    return [os.path.relpath(path, root).replace(os.sep, "/") for path, _ in samples]


def sample_targets(dataset: Dataset) -> np.ndarray:
    """The class index of every sample (ImageFolder and Fashion-MNIST keep them in `targets`)."""
    return np.asarray(dataset.targets, dtype=np.int64)


def read_name_list(path: str) -> list[str]:
    """Names in `path`, one per line; blank lines and lines starting with '#' are skipped, repeats kept once."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as err:
        raise SubsetError(f"cannot read it ({type(err).__name__}: {err})") from None
    names = list(dict.fromkeys(n for n in lines if n and not n.startswith("#")))
    if not names:
        raise SubsetError("it lists no image names")
    return names


def _quote(names: list[str]) -> str:
    return ", ".join(names[:SHOW]) + (", ..." if len(names) > SHOW else "")


def select_listed(names: list[str], wanted: list[str], where: str = "the split") -> list[int]:
    """Sorted indices of `names` (sample names of a split) that the list `wanted` names.

    A wanted name with a '/' must equal a sample name; one without must equal exactly one sample's file name.
    Raises SubsetError naming how many listed names are not in the split (and the first few), or an ambiguous one.
    """
    by_path = {n: i for i, n in enumerate(names)}
    by_file: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        by_file.setdefault(n.rsplit("/", 1)[-1], []).append(i)
    chosen, missing, ambiguous = [], [], []
    for w in wanted:
        if "/" in w:
            hit = [by_path[w]] if w in by_path else []
        else:
            hit = by_file.get(w, [])
        if not hit:
            missing.append(w)
        elif len(hit) > 1:
            ambiguous.append(w)
        else:
            chosen.append(hit[0])
    if missing:
        raise SubsetError(f"{len(missing)} of its {len(wanted)} images are not in {where} (first: "
                          f"{_quote(missing)})")
    if ambiguous:
        raise SubsetError(f"{len(ambiguous)} names match files in several class folders (first: "
                          f"{_quote(ambiguous)}); write them as <class>/<file>")
    return sorted(set(chosen))


def class_counts(targets: np.ndarray, num_classes: int) -> list[int]:
    return np.bincount(targets, minlength=num_classes)[:num_classes].tolist()


def check_every_class(counts: list[int], classes: list[str], what: str) -> None:
    """Raise SubsetError when some class has no image in `what` (a split, or a subset of it)."""
    empty = [c for c, n in zip(classes, counts, strict=True) if n == 0]
    if empty:
        raise SubsetError(f"{len(empty)} of {len(classes)} classes have no image in {what} (first: {_quote(empty)})")


def balanced_draw(targets: np.ndarray, num_classes: int, fraction: float, seed: int) -> list[int]:
    """Sorted indices: for each class c, max(1, floor(fraction * n_c + 0.5)) of its n_c images, drawn without
    replacement by numpy's default_rng([seed, c]). Every class must have an image."""
    if not 0 < fraction <= 1:
        raise SubsetError(f"the fraction must be in (0, 1], got {fraction}")
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(targets == c)
        k = min(len(members), max(1, math.floor(fraction * len(members) + 0.5)))
        order = np.random.default_rng([seed, c]).permutation(len(members))
        chosen.extend(members[order[:k]].tolist())
    return sorted(chosen)


def label_subset(dataset: Dataset, classes: list[str], list_file: str = "", fraction: float | None = None,
                 seed: int = 0, where: str = "the split") -> LabelSubset:
    """The labelled part of `dataset` (named `where` in messages): the images of `list_file`, a balanced `fraction`
    drawn with `seed`, or all. Every class must keep at least one image (SubsetError naming the empty ones)."""
    names, targets = sample_names(dataset), sample_targets(dataset)
    check_every_class(class_counts(targets, len(classes)), classes, where)
    if list_file and fraction is not None:
        raise SubsetError("pass a list file or a fraction, not both")
    if list_file:
        wanted = read_name_list(list_file)
        with open(list_file, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        indices = select_listed(names, wanted, where)
        kind, source = "list", {"file": os.path.abspath(list_file), "file_sha256": digest}
    elif fraction is not None:
        indices = balanced_draw(targets, len(classes), fraction, seed)
        kind, source = "fraction", {"fraction": fraction, "seed": seed,
                                    "rule": "per class max(1, floor(fraction * n + 0.5)) images, "
                                            "numpy default_rng([seed, class index]).permutation"}
    else:
        indices, kind, source = list(range(len(names))), "all", {}
    counts = class_counts(targets[indices], len(classes))
    check_every_class(counts, classes, "the subset")
    return LabelSubset(indices, [names[i] for i in indices], counts, len(names), kind, source)
