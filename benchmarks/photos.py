"""Real photos for benchmarks and distribution tests: scikit-image's bundled pictures as ImageNet-like JPEGs.

Each photo is centre-cropped to 4:3 (landscape), resized to 500 x 375 (Lanczos) and saved at quality 90, the size
and compression of a typical ImageNet training JPEG. The files are cached in a temporary directory.
"""

from __future__ import annotations

import io
import os
import tempfile
import zlib

import numpy as np
from PIL import Image

SIZE = (500, 375)
QUALITY = 90
# colour photos first; two grayscale ones (stored as RGB, as ImageNet's few grayscale JPEGs decode)
PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
               "stereo_motorcycle", "camera", "clock")


def _synthetic(name: str) -> np.ndarray:
    """Stand-in when scikit-image is missing (e.g. a bare GPU machine): smooth colour fields plus noise."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    y, x = np.mgrid[0:375, 0:500] / 100.0
    chans = [np.sin(x * rng.uniform(0.5, 3) + y * rng.uniform(0.5, 3) + rng.uniform(0, 6)) for _ in range(3)]
    arr = 127.5 + 90 * np.stack(chans, -1) + rng.normal(0, 12, (375, 500, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


def have_skimage() -> bool:
    try:
        import skimage.data  # noqa: F401
    except ImportError:
        return False
    return True


def _load(name: str) -> np.ndarray:
    if not have_skimage():
        return _synthetic(name)
    from skimage import data
    arr = getattr(data, name)()
    if name == "stereo_motorcycle":
        arr = arr[0]
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3]).astype(np.uint8)


def _to_imagenet_like(arr: np.ndarray, size: tuple[int, int] = SIZE) -> Image.Image:
    img = Image.fromarray(arr)
    w, h = img.size
    target = size[0] / size[1]
    if w / h > target:  # too wide: crop width
        cw = round(h * target)
        img = img.crop(((w - cw) // 2, 0, (w - cw) // 2 + cw, h))
    else:
        ch = round(w / target)
        img = img.crop((0, (h - ch) // 2, w, (h - ch) // 2 + ch))
    return img.resize(size, Image.Resampling.LANCZOS)


def photo_dir(names: tuple[str, ...] = PHOTO_NAMES, size: tuple[int, int] = SIZE) -> str:
    """A folder of `<name>.jpg` files (built once per machine, in the temporary directory)."""
    kind = "photos" if have_skimage() else "synthetic"
    if kind == "synthetic":
        import warnings
        warnings.warn("scikit-image is not installed: benchmarks use synthetic images instead of photos", stacklevel=2)
    root = os.path.join(tempfile.gettempdir(), f"clsa_bench_{kind}_{size[0]}x{size[1]}_q{QUALITY}")
    os.makedirs(root, exist_ok=True)
    for name in names:
        path = os.path.join(root, f"{name}.jpg")
        if not os.path.isfile(path):
            tmp = f"{path}.{os.getpid()}.tmp"
            _to_imagenet_like(_load(name), size).save(tmp, format="JPEG", quality=QUALITY)
            os.replace(tmp, path)
    return root


def photo_bytes(names: tuple[str, ...] = PHOTO_NAMES, size: tuple[int, int] = SIZE) -> list[bytes]:
    """The JPEG files' bytes, in `names` order (decode them with `decode`)."""
    root = photo_dir(names, size)
    out = []
    for name in names:
        with open(os.path.join(root, f"{name}.jpg"), "rb") as f:
            out.append(f.read())
    return out


def decode(data: bytes) -> Image.Image:
    """JPEG bytes -> RGB PIL image, as torchvision's ImageFolder loader does (open, then convert('RGB'))."""
    return Image.open(io.BytesIO(data)).convert("RGB")


def image_folder(root: str, n_images: int, names: tuple[str, ...] = PHOTO_NAMES) -> str:
    """<root>/train/photos/<i>.jpg: `n_images` copies of the photos (hard links when possible), for DataLoaders."""
    src = photo_dir(names)
    folder = os.path.join(root, "train", "photos")
    os.makedirs(folder, exist_ok=True)
    for i in range(n_images):
        dst = os.path.join(folder, f"{i:05d}.jpg")
        if os.path.exists(dst):
            continue
        path = os.path.join(src, f"{names[i % len(names)]}.jpg")
        try:
            os.link(path, dst)
        except OSError:
            with open(path, "rb") as f_in, open(dst, "wb") as f_out:
                f_out.write(f_in.read())
    return root
