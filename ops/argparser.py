"""Command-line flags of `main_clsa.py`.

Every flag of the 2021 parser keeps its name, type, nargs and default, so the paper README's commands run verbatim.
Flags added by this codebase are grouped at the end of `--help` under "additions".
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from ops.errors import FileProblem, UsageError

RESNET_ARCHS = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
)

DEFAULT_DATA = "data"  # --data; for --dataset FashionMNIST see ops.validate.resolve_fashion_mnist

TRUST_FLAG = "--trust_checkpoint"
UPGRADE = "python3 upgrade_checkpoint.py IN OUT " + TRUST_FLAG  # rewrites an earlier-format file as plain data


def add_trust_flag(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The one opt-in to full unpickling, spelled the same in every entry point (also --trust-checkpoint)."""
    p.add_argument(TRUST_FLAG, "--trust-checkpoint", dest="trust_checkpoint", action="store_true",
                   help="open checkpoint files with full unpickling (torch.load weights_only=False). Unpickling can "
                        "run arbitrary code: use it only for a file whose source you trust. Without it, a file "
                        "holding anything but tensors and plain Python values is refused")


@contextmanager
def naming_flag(flag: str) -> Iterator[None]:
    """Inside, a FileProblem the library raises becomes the entry script's one line `flag 'path' problem`; a file
    refused only for not being plain data also gets how to open it (TRUST_FLAG, or the one-time upgrade)."""
    try:
        yield
    except FileProblem as err:
        message = f"{flag} {err}"
        if err.not_plain_data:
            message += f"; re-save the tensors you need, or pass {TRUST_FLAG} if you trust the file's source"
        if err.earlier_format:
            message += (" (numpy objects: a checkpoint of this project's earlier format is rewritten once as plain "
                        f"data by `{UPGRADE}`)")
        raise UsageError(message) from None


def add_launch_flags(p: argparse.ArgumentParser, sep: str, world_size: int, rank: int) -> None:
    """The flags `ops.launch` reads. `sep` is "_" for main_clsa.py and "-" for lincls.py (2021 spellings)."""
    def name(flag: str) -> str:
        return "--" + flag.replace("_", sep)

    mp_flag = name("multiprocessing_distributed")
    g = p.add_argument_group("distributed")
    g.add_argument(name("world_size"), type=int, default=world_size, help="number of nodes (-1 is read as 1)")
    g.add_argument("--rank", type=int, default=rank, help="node rank (-1 is read as 0)")
    g.add_argument(name("dist_url"), type=str, default="tcp://localhost:10001",
                   help="init method; 'env://' under torchrun (RANK, WORLD_SIZE, LOCAL_RANK) or srun (SLURM_*)")
    g.add_argument(name("dist_backend"), type=str, default="nccl", help="nccl on GPUs; gloo is used on CPU")
    g.add_argument("--gpu", type=int, default=None, help=f"GPU index when {mp_flag} 0")
    g.add_argument(mp_flag, type=int, default=1,
                   help=f"1: one process per GPU (or {name('cpu_procs')} processes on CPU); 0: a single process")
    g.add_argument("--nodes_num", type=int, default=1, help="number of nodes; --choose applies only when 1")
    g.add_argument("--choose", type=str, default=None, help="e.g. '0,1,2,3': sets CUDA_VISIBLE_DEVICES")
    g.add_argument(name("cpu_procs"), type=int, default=1, help="processes per node to spawn when no GPU is used")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when available")
    g.add_argument(name("dist_timeout"), type=float, default=30, help="minutes a collective may wait for a process")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="main_clsa.py",
        description="CLSA pretraining: InfoNCE on weak views + alpha * DDM(strong || weak) over keys and queue.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data and run directory")
    g.add_argument("--data", type=str, default=DEFAULT_DATA, help="dataset root; images are read from <data>/train")
    g.add_argument("--log_path", type=str, default="train_log", help="root of the run directory")
    g.add_argument("--dataset", type=str, default="ImageNet",
                   help="name used as a run-directory component; 'FashionMNIST' reads the IDX files in --data")
    g.add_argument("--workers", type=int, default=32, help="data-loader workers per node (split across processes)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--arch", type=str, default="resnet50",
                   help="torchvision ResNet-family backbone: " + ", ".join(RESNET_ARCHS))
    g.add_argument("--epochs", type=int, default=200, help="total epochs E (also sets the LR schedule)")
    g.add_argument("--start_epoch", type=int, default=0, help="first epoch (overwritten by --resume)")
    g.add_argument("-b", "--batch_size", type=int, default=256,
                   help="batch size per node (split across its processes)")
    g.add_argument("--lr", "--learning_rate", dest="lr", type=float, default=0.03,
                   help="base learning rate (not scaled by batch size)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--weight_decay", type=float, default=1e-4, help="SGD weight decay (all parameters)")
    g.add_argument("--cos", type=int, default=1,
                   help="LR schedule: 1 = lr*(1+cos(pi e/E))/2 and 2 = lr*cos(pi e/(2E)) per epoch e (2021); "
                        "3 = lr*(1+cos(pi e/E))/2 per iteration (fractional e); other = constant")
    g.add_argument("--warmup_iters", type=int, default=0,
                   help="linear learning-rate warmup over the first N iterations (0: none, as in 2021)")
    g.add_argument("--print_freq", type=int, default=10, help="print and log every N iterations")
    g.add_argument("--resume", type=str, default="",
                   help="checkpoint to continue from (its run directory is reused), or 'auto': the newest checkpoint "
                        "of --run_dir, starting fresh when there is none")
    g.add_argument("--seed", type=int, default=None, help="seed python/numpy/torch in every process and loader worker")

    add_launch_flags(p, sep="_", world_size=-1, rank=-1)

    g = p.add_argument_group("method (CLSA)")
    g.add_argument("--moco_dim", type=int, default=128, help="embedding dimension d")
    g.add_argument("--moco_k", type=int, default=65536, help="queue length K (multiple of the global batch)")
    g.add_argument("--moco_m", type=float, default=0.999, help="key-encoder momentum m")
    g.add_argument("--moco_t", type=float, default=0.2, help="InfoNCE temperature T")
    g.add_argument("--mlp", type=int, default=1, help="1: 2-layer MLP projection head")
    g.add_argument("--alpha", type=float, default=1, help="weight alpha of the DDM loss")
    g.add_argument("--aug_times", type=int, default=5, help="RandAugment ops per strong view")
    g.add_argument("--clsa_t", type=float, default=0.2, help="DDM temperature T2")
    g.add_argument("--sym", type=int, default=0, help="1: symmetric variant (second key from weak view 0)")
    g.add_argument("--strong_loss", choices=("ddm", "infonce"), default="ddm",
                   help="how the strong views are trained: ddm = CLSA's distribution divergence to the weak view; "
                        "infonce = the ablation: each strong view is one more InfoNCE query (positive: its own key), "
                        "weighted by --alpha, no DDM term (added; not in the 2021 code)")

    g = p.add_argument_group("views (one entry per crop setting)")
    g.add_argument("--nmb_crops", type=int, nargs="+", default=[1, 1, 1, 1, 1], help="copies per crop setting")
    g.add_argument("--size_crops", type=int, nargs="+", default=[224, 192, 160, 128, 96], help="output size in px")
    g.add_argument("--min_scale_crops", type=float, nargs="+", default=[0.2, 0.172, 0.143, 0.114, 0.086],
                   help="RandomResizedCrop lower scale")
    g.add_argument("--max_scale_crops", type=float, nargs="+", default=[1.0, 0.86, 0.715, 0.571, 0.429],
                   help="RandomResizedCrop upper scale")
    g.add_argument("--pick_strong", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                   help="indices of the strong views used (into the flattened crop list)")
    g.add_argument("--pick_weak", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                   help="indices of the weak views used (into the flattened crop list)")

    g = p.add_argument_group("additions (not in the 2021 code)")
    g.add_argument("--amp", action="store_true", help="autocast (bf16 on CPU and CUDA, loss in fp32)")
    g.add_argument("--channels_last", action="store_true", help="channels_last memory format for the encoders")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the encoders' training forward (inductor; the first iterations of each view "
                        "size compile: seconds on a GPU, minutes on a CPU; needs a C/C++ compiler)")
    g.add_argument("--views", choices=("cpu", "gpu"), default="cpu",
                   help="cpu: loader workers build the views; gpu: workers read file bytes, the training process "
                        "decodes them and builds the views batched on its device (also on a CPU device)")
    g.add_argument("--save_freq", type=int, default=10, help="also keep checkpoint_{epoch:04d} every N epochs")
    g.add_argument("--knn_data", type=str, default="",
                   help="labelled ImageFolder root (train/ and val/) for a kNN monitor during pretraining")
    g.add_argument("--knn_freq", type=int, default=1, help="run the kNN monitor every N epochs")
    g.add_argument("--knn_k", type=int, default=200, help="neighbours for the kNN monitor")
    g.add_argument("--knn_t", type=float, default=0.1, help="temperature for the kNN monitor")
    g.add_argument("--knn_size", type=int, default=None, help="image size for the kNN monitor (default: size_crops[0])")
    g.add_argument("--run_dir", type=str, default="",
                   help="run directory to use instead of <log_path>/<dataset>/.../<stamp> (needed by --resume auto)")
    g.add_argument("--strict_data", action="store_true", help="stop at an unreadable image instead of skipping it")
    g.add_argument("--skip_nonfinite", action="store_true",
                   help="skip an optimiser step whose loss is NaN/inf instead of stopping the run")
    g.add_argument("--step_checks", choices=("auto", "sync", "deferred"), default="auto",
                   help="when the host learns whether a step's loss was finite and whether a process asked to stop: "
                        "sync waits for it before the update; deferred reads it one iteration later and undoes a "
                        "non-finite update on the device, so the host never waits for the GPU (auto: deferred on "
                        "CUDA, sync on CPU; the same losses either way)")
    add_trust_flag(g)
    g.add_argument("--max_iters", type=int, default=0, help="stop each epoch after N iterations (0: full epochs)")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse `argv` (default: sys.argv[1:]) into a namespace."""
    return build_parser().parse_args(argv)
