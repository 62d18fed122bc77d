"""Image folders read safely: links to folders are followed, but never back into a folder already read.

torchvision's ImageFolder walks with `os.walk(followlinks=True)`: a link inside a class folder that points at the
folder itself (or at a parent) is followed until the kernel's link limit, and every level adds the same images again,
multiplying that class without a word. `image_files` walks the same way and in the same order, but raises
`FolderLoop` at a link that leads to a folder already entered: a loop, or a second path to the same folder.
"""

from __future__ import annotations

import os

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


class FolderLoop(ValueError):
    """A link leads to a folder already read; the message names the link, its target and the first path."""


def _key(path: str) -> tuple[int, int]:
    st = os.stat(path)  # follows links
    return st.st_dev, st.st_ino


def _link_in(path: str, top: str) -> str | None:
    """The deepest link on `path` below `top` (None when every folder on the way is a real one)."""
    while path != top and len(path) > len(top):
        if os.path.islink(path):
            return path
        path = os.path.dirname(path)
    return None


def class_names(folder: str) -> list[str]:
    """The class folders of `folder`, sorted (torchvision's `find_classes`: entries that are folders or link to one)."""
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir())


def image_files(folder: str, extensions: tuple[str, ...] = IMG_EXTENSIONS) -> list[str]:
    """Paths of the files under `folder` whose names end in `extensions` (any case), in the order of torchvision's
    `make_dataset` (folders sorted by path, files by name). Raises FolderLoop instead of entering a folder twice."""
    seen = {_key(folder): folder}
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        for d in list(dirs):
            path = os.path.join(root, d)
            try:
                key = _key(path)
            except OSError:  # gone or unreadable: os.walk would not list it either
                dirs.remove(d)
                continue
            if key in seen:
                link, other = _link_in(path, folder), seen[key]
                if link is None:  # reached through real folders: the link is on the path read first
                    link, other = _link_in(other, folder) or other, path
                raise FolderLoop(f"the link {link} -> {os.path.realpath(link)} leads back into {other} (a loop, or a "
                                 "second path to one folder): its images would count again; remove the link")
            seen[key] = path
        found.append((root, sorted(f for f in files if f.lower().endswith(extensions))))
    return [os.path.join(root, f) for root, names in sorted(found) for f in names]
