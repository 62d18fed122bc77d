"""The short-schedule pretraining recipe for 28-px Fashion-MNIST images, as `main_clsa.py` flags.

Scaled from the paper's ImageNet settings: 224-px key/weak views -> 32 px (RandomResizedCrop upsamples the 28-px
photos slightly), 96-px strong view -> 16 px, same crop-area fractions. Multi-crop (paper: 224/192/160/128/96 px)
-> 32/28/24/20/16 px with the paper's scales. Short-run changes: queue K 4096, key momentum m 0.99 (0.999 barely
moves the key encoder in a few hundred iterations), lr 0.06 with the per-epoch cosine schedule, batch 128.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

SINGLE_CROP = {"nmb_crops": [1, 1], "size_crops": [32, 16], "min_scale_crops": [0.2, 0.086],
               "max_scale_crops": [1.0, 0.429], "pick_weak": [0], "pick_strong": [1]}
MULTI_CROP = {"nmb_crops": [1, 1, 1, 1, 1], "size_crops": [32, 28, 24, 20, 16],
              "min_scale_crops": [0.2, 0.172, 0.143, 0.114, 0.086],
              "max_scale_crops": [1.0, 0.86, 0.715, 0.571, 0.429],
              "pick_weak": [0, 1, 2, 3, 4], "pick_strong": [0, 1, 2, 3, 4]}


@dataclass
class Recipe:
    """Pretraining flags that the demo and the reproduction set (everything else: main_clsa.py defaults)."""
    epochs: int = 6
    batch_size: int = 128
    lr: float = 0.06
    moco_k: int = 4096
    moco_m: float = 0.99
    moco_t: float = 0.2
    clsa_t: float = 0.2
    alpha: float = 1.0
    aug_times: int = 5
    arch: str = "resnet18"
    crops: dict = field(default_factory=lambda: dict(SINGLE_CROP))
    workers: int = 1
    seed: int = 0
    print_freq: int = 20
    knn_k: int = 200
    knn_t: float = 0.1
    knn_size: int = 32
    max_iters: int = 0
    cos: int = 1
    warmup_iters: int = 0
    amp: bool = False
    sym: int = 0
    strong_loss: str = "ddm"

    def argv(self, data: str, run_dir: str, knn_data: str = "") -> list[str]:
        """`python main_clsa.py` argv for one process on this machine, resuming in `run_dir` when it can."""
        out = [sys.executable, "main_clsa.py", "--dataset", "FashionMNIST", "--data", data, "--run_dir", run_dir,
               "--resume", "auto", "--arch", self.arch, "--epochs", str(self.epochs), "--batch_size",
               str(self.batch_size), "--lr", str(self.lr), "--cos", str(self.cos),
               "--warmup_iters", str(self.warmup_iters), "--moco_k", str(self.moco_k),
               "--moco_m", str(self.moco_m), "--moco_t", str(self.moco_t), "--clsa_t", str(self.clsa_t),
               "--alpha", str(self.alpha), "--aug_times", str(self.aug_times), "--workers", str(self.workers),
               "--seed", str(self.seed), "--print_freq", str(self.print_freq), "--save_freq", "1000",
               "--multiprocessing_distributed", "0"]
        if self.sym:
            out += ["--sym", str(self.sym)]
        if self.strong_loss != "ddm":
            out += ["--strong_loss", self.strong_loss]
        for name in ("nmb_crops", "size_crops", "min_scale_crops", "max_scale_crops", "pick_weak", "pick_strong"):
            out += [f"--{name}", *(str(v) for v in self.crops[name])]
        if knn_data:
            out += ["--knn_data", knn_data, "--knn_k", str(self.knn_k), "--knn_t", str(self.knn_t),
                    "--knn_size", str(self.knn_size)]
        if self.amp:
            out += ["--amp"]
        if self.max_iters:
            out += ["--max_iters", str(self.max_iters)]
        return out
