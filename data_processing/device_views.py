"""`--views gpu`: loader workers only read file bytes; the training process decodes and builds the views on its device.

    dataset = EncodedImages(ImageFolder(root, loader=read_file_bytes))     # or a decoded dataset (Fashion-MNIST)
    loader = DataLoader(RobustViews(dataset, seed), ..., collate_fn=collate_encoded)
    make_views = DeviceViews(BatchViews(crops, pick_weak, pick_strong, aug_times), device, seed, rank)
    views, unreadable = make_views(batch, epoch, iteration)               # [key, weak..., strong...] on `device`

Decoding: TorchCodec (`torchcodec.decoders`, the successor of torchvision's deprecated image decoding since
torchvision 0.29) decodes a batch of JPEGs in one nvJPEG call on CUDA and any supported format (JPEG, PNG, WebP, ...)
on CPU; without TorchCodec, `torchvision.io` does the same. On CUDA a batch that nvJPEG refuses (a CMYK or odd JPEG)
falls back to the CPU decode file by file, as do PNGs and other formats. A file that no decoder reads is replaced
by the next readable image of the batch and reported, like the CPU pipeline's unreadable files; with
`strict` it stops the run (`UnreadableImage`).

The views' randomness comes from a generator seeded from (seed, epoch, iteration, rank), so a resumed run builds the
views an uninterrupted one builds.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from data_processing.datasets import ImageTooLarge, open_image
from data_processing.gpu_views import BatchViews
from data_processing.sampling import UnreadableImage

JPEG_MAGIC = b"\xff\xd8"


def read_file_bytes(path: str) -> torch.Tensor:
    """The file's bytes as a 1-D uint8 tensor (what loader workers do under --views gpu). A header that claims more
    pixels than PIL allows (a decompression bomb) raises ImageTooLarge here, before any decoder allocates them."""
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise OSError(f"empty file {path}")
    try:
        open_image(io.BytesIO(data))  # the header only
    except ImageTooLarge:
        raise
    except (OSError, SyntaxError, ValueError):
        pass  # a file PIL does not read: the decoders try it and report it if they cannot either
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def to_uint8_chw(img: Any) -> torch.Tensor:
    """A PIL image (or H x W [x C] array) as a decoded uint8 C x H x W tensor."""
    arr = np.asarray(img)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()


class EncodedImages(Dataset):
    """dataset[i] -> ((bytes or decoded uint8 image, name), target); `name` is the file path when there is one."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.samples = getattr(dataset, "samples", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[tuple[torch.Tensor, str], int]:
        data, target = self.dataset[i]
        if not torch.is_tensor(data):
            data = to_uint8_chw(data)
        name = self.samples[i][0] if self.samples is not None else f"sample {i}"
        return (data, name), target


def collate_encoded(batch: Sequence) -> tuple[tuple[list[torch.Tensor], list[str]], torch.Tensor, list[str]]:
    """((tensors, names), targets, skipped) of RobustViews items holding EncodedImages samples; no stacking, the
    images differ in size."""
    return (([item[0][0] for item in batch], [item[0][1] for item in batch]),
            torch.tensor([item[1] for item in batch]), [item[2] for item in batch])


def _cpu_decode(data: torch.Tensor) -> torch.Tensor:
    try:
        from torchcodec.decoders import decode_image
        return decode_image(data, mode="RGB")
    except ImportError:
        from torchvision.io import ImageReadMode, decode_image
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_image(data, mode=ImageReadMode.RGB)


def _cuda_decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    try:
        from torchcodec.decoders import decode_jpeg
        return decode_jpeg(data, mode="RGB", device=device)
    except ImportError:
        from torchvision.io import ImageReadMode, decode_jpeg
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def decode_batch(data: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Decoded uint8 3 x H x W images on `device` (None where a file cannot be decoded). Already decoded (3-D)
    tensors are moved as they are."""
    out: list[torch.Tensor | None] = [None] * len(data)
    encoded = [i for i, d in enumerate(data) if d.dim() == 1]
    for i, d in enumerate(data):
        if d.dim() == 3:
            out[i] = d.to(device, non_blocking=True)
    jpegs = [i for i in encoded if bytes(data[i][:2].tolist()) == JPEG_MAGIC] if device.type == "cuda" else []
    if jpegs:
        try:
            for i, img in zip(jpegs, _cuda_decode_jpegs([data[i] for i in jpegs], device), strict=True):
                out[i] = img
        except RuntimeError:
            pass  # one file nvJPEG cannot read: decode this batch's files one by one on the CPU below
    for i in encoded:
        if out[i] is None:
            try:
                out[i] = _cpu_decode(data[i]).to(device, non_blocking=True)
            except (RuntimeError, ValueError):
                out[i] = None
    return out


class DeviceViews:
    """batch of (encoded or decoded images, names) -> ([key, weak..., strong...] on `device`, unreadable names)."""

    def __init__(self, views: BatchViews, device: torch.device, seed: int | None, rank: int, strict: bool = False
                 ) -> None:
        self.views, self.device, self.seed, self.rank, self.strict = views, device, seed, rank, strict

    def generator(self, epoch: int, iteration: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        if self.seed is None:
            return g.manual_seed(int(torch.randint(0, 2 ** 62, (1,))))
        state = np.random.SeedSequence([self.seed, epoch, iteration, self.rank]).generate_state(2, np.uint64)
        return g.manual_seed(int(state[0] >> np.uint64(2)))

    def __call__(self, batch: tuple[list[torch.Tensor], list[str]], epoch: int, iteration: int
                 ) -> tuple[list[torch.Tensor], list[str]]:
        data, names = batch
        images = decode_batch(data, self.device)
        bad = [names[i] for i, img in enumerate(images) if img is None]
        if bad and self.strict:
            raise UnreadableImage(f"unreadable image {bad[0]}")
        if len(bad) == len(images):
            raise RuntimeError(f"no image of this batch could be decoded ({', '.join(bad[:3])}, ...)")
        good = [i for i, img in enumerate(images) if img is not None]
        # each unreadable slot takes the next readable image of the batch, keeping the batch size
        images = [img if img is not None else images[min((j for j in good if j > i), default=good[0])]
                  for i, img in enumerate(images)]
        return self.views(images, self.generator(epoch, iteration)), bad
