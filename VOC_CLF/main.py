#!/usr/bin/env python3
"""VOC07 classification transfer: a linear multi-label head (or per-class SVMs) on the frozen query encoder.

    python3 VOC_CLF/main.py --data=<folder holding VOCdevkit/VOC2007> --pretrained=<checkpoint>
    cd VOC_CLF && python3 main.py --data=... --pretrained=...

Trains on `trainval`, reports on `test`: the AP of each of the 20 classes (images where the class is only present
as difficult objects are ignored for it) and their mean (mAP), plus the VOC2007 devkit's 11-point mAP and the 2021
code's per-image AP for comparison. The backbone stays in eval mode (BN statistics frozen).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from ops.startup import imports_done, pause_collector  # noqa: E402

if __name__ == "__main__":  # before the slow imports
    pause_collector()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402
from torchvision import transforms as T  # noqa: E402

from clsa.builder import backbone  # noqa: E402
from clsa.checkpoint import atomic_save  # noqa: E402
from clsa.engine import set_learning_rate  # noqa: E402
from clsa.evaluation import eval_transform, extract_features  # noqa: E402
from clsa.linear import init_head, linear_lr  # noqa: E402
from clsa.pretrained import load_encoder_weights  # noqa: E402
from data_processing.transforms import normalize  # noqa: E402
from ops.argparser import RESNET_ARCHS, add_trust_flag, naming_flag  # noqa: E402
from ops.environment import use_cuda  # noqa: E402
from ops.errors import UsageError, exit_usage  # noqa: E402
from ops.ranges import check_ranges  # noqa: E402
from ops.runlog import RunLogger, format_duration  # noqa: E402
from ops.validate import check_arch  # noqa: E402
from VOC_CLF.svm import DEFAULT_COSTS, svm_scores  # noqa: E402
from VOC_CLF.voc import (  # noqa: E402
    VOC_CLASSES,
    VOC2007Classification,
    average_precision,
    check_voc_layout,
    mean_ap,
    per_class_ap,
    per_image_ap,
    voc07_11point_ap,
)

if __name__ == "__main__":
    imports_done()  # see ops/startup.py

PROG = "VOC_CLF/main.py"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=str, default=None, help="folder holding VOCdevkit/VOC2007 (trainval and test)")
    p.add_argument("-a", "--arch", type=str, default="resnet50", help="backbone: " + ", ".join(RESNET_ARCHS))
    p.add_argument("-j", "--workers", type=int, default=4, help="data-loader workers")
    p.add_argument("--epochs", type=int, default=100, help="epochs of the linear head (cosine schedule over them)")
    p.add_argument("--batch-size", type=int, default=16, help="images per step")
    p.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=0.05, help="initial learning rate")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=0.0, help="weight decay")
    p.add_argument("--gpu", type=str, default=None, help="sets CUDA_VISIBLE_DEVICES")
    p.add_argument("--pretrained", type=str, default="",
                   help="CLSA/MoCo checkpoint (module.encoder_q.*) or torchvision state_dict; empty: random backbone")
    p.add_argument("--log", type=str, default="train_log", help="output folder (log, results JSON, head weights)")
    p.add_argument("--run_num", type=int, default=1, help="suffix of the output files")
    g = p.add_argument_group("additions (not in the 2021 code)")
    g.add_argument("--image-size", type=int, default=224,
                   help="train: Resize(S x S) + light jitter; test: Resize(1.1 S) + CenterCrop(S)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when available")
    g.add_argument("--seed", type=int, default=2019, help="seed of python, numpy and torch (2019 as in 2021)")
    g.add_argument("--print-freq", type=int, default=50, help="print every N steps")
    g.add_argument("--cache-features", action="store_true",
                   help="train the head on features extracted once (centre crop, no augmentation): fast epochs")
    g.add_argument("--svm", action="store_true",
                   help="per-class linear SVMs (scikit-learn) on frozen features instead of the linear head")
    g.add_argument("--svm-costs", type=float, nargs="+", default=list(DEFAULT_COSTS),
                   help="SVM costs C tried by cross-validation on trainval")
    g.add_argument("--svm-folds", type=int, default=3, help="cross-validation folds for the SVM cost")
    add_trust_flag(g)
    return p


def check_args(args: argparse.Namespace) -> None:
    if not args.data:
        raise UsageError("--data is required: the folder holding VOCdevkit/VOC2007")
    check_ranges(build_parser(), args)  # every numeric flag, from the one table in ops/ranges.py
    check_arch(args.arch)
    if args.pretrained and not os.path.isfile(args.pretrained):
        raise UsageError(f"--pretrained {args.pretrained!r}: no such checkpoint file")
    check_voc_layout(args.data)


def transforms(size: int) -> tuple[T.Compose, T.Compose]:
    """The 2021 augmentation at S px (it used 300), ImageNet normalisation; test: Resize(1.1 S) + CenterCrop(S)."""
    train = T.Compose([T.Resize((size, size)),
                       T.RandomChoice([T.ColorJitter(brightness=(0.8, 1.2)), T.RandomGrayscale(p=0.25)]),
                       T.RandomHorizontalFlip(p=0.25), T.RandomRotation(25), normalize()])
    test = eval_transform(size, round(size * 1.1))
    return train, test


def build_trunk(args: argparse.Namespace, device: torch.device, log) -> tuple[nn.Module, int]:
    """Frozen backbone in eval mode with fc = Identity; returns it and its feature dimension."""
    trunk = backbone(args.arch)
    if args.pretrained:
        with naming_flag("--pretrained"):
            report = load_encoder_weights(trunk, args.pretrained, trust=args.trust_checkpoint)
        log(f"=> loaded '{args.pretrained}': {report.describe()}")
    else:
        log("=> no --pretrained: randomly initialised backbone (a baseline)")
    dim = trunk.fc.in_features
    trunk.fc = nn.Identity()
    for p in trunk.parameters():
        p.requires_grad = False
    return trunk.to(device).eval(), dim


def extract(trunk: nn.Module, dataset: VOC2007Classification, args: argparse.Namespace
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled features, not normalised; 20 labels in {-1, 0, 1}) of every image of `dataset`, on the CPU."""
    feats, labels = extract_features(trunk, dataset, args.batch_size, args.workers, l2_normalize=False)
    return feats.cpu(), labels.cpu()


def masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy summed over the classes, averaged over images; difficult-only labels (0) ignored."""
    target = (labels == 1).float()
    mask = (labels != 0).float()
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * mask
    return loss.sum() / logits.shape[0]


def train_head(head: nn.Linear, trunk: nn.Module | None, loader: DataLoader, args: argparse.Namespace,
               device: torch.device, log) -> list[float]:
    """SGD with momentum on the multi-label head (`masked_bce`), cosine lr from --lr to 0 over the epochs
    (`clsa.linear.linear_lr`, the schedule of lincls.py's single-label head). `trunk` None means the loader yields
    cached features. Returns the epoch losses."""
    optimizer = torch.optim.SGD(head.parameters(), args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    losses = []
    for epoch in range(args.epochs):
        lr = linear_lr(args.lr, 0.0, epoch, args.epochs, 1, ())
        set_learning_rate(optimizer, lr)
        start, total, count = time.time(), 0.0, 0
        for i, (x, labels) in enumerate(loader):
            x, labels = x.to(device), labels.to(device)
            if trunk is not None:
                with torch.no_grad():
                    x = trunk(x).float()
            loss = masked_bce(head(x), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + loss.item() * x.shape[0], count + x.shape[0]
            if trunk is not None and i % args.print_freq == 0:
                log(f"Epoch: [{epoch}][{i}/{len(loader)}]\tLoss {loss.item():.4f}")
        losses.append(total / max(count, 1))
        log(f"epoch {epoch + 1}/{args.epochs}: lr {lr:.4g} train loss {losses[-1]:.4f} "
            f"({format_duration(time.time() - start)})")
    return losses


def report(scores: np.ndarray, labels: np.ndarray, log) -> dict:
    """Per-class AP table and the three summary numbers (in percent)."""
    aps = per_class_ap(scores, labels, average_precision) * 100
    aps11 = per_class_ap(scores, labels, voc07_11point_ap) * 100
    log(f"VOC07 test: {len(labels)} images; AP per class (difficult-only images ignored), 11-point AP beside it")
    for name, ap, ap11 in zip(VOC_CLASSES, aps, aps11, strict=True):
        log(f"  {name:<12} {ap:6.2f}  ({ap11:6.2f})" if not np.isnan(ap) else f"  {name:<12}    n/a  (no positives)")
    result = {"mAP": mean_ap(aps), "mAP_11point": mean_ap(aps11), "per_image_ap": per_image_ap(scores, labels) * 100,
              "ap": dict(zip(VOC_CLASSES, aps.tolist(), strict=True)),
              "ap_11point": dict(zip(VOC_CLASSES, aps11.tolist(), strict=True))}
    log(f" * mAP {result['mAP']:.2f} (VOC07 11-point mAP {result['mAP_11point']:.2f}; "
        f"per-image AP of the 2021 code {result['per_image_ap']:.2f})")
    return result


def _clean(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    return obj


def run(args: argparse.Namespace) -> dict:
    if args.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu
    device = torch.device("cuda" if use_cuda(args.device) else "cpu")
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    logger = RunLogger(args.log, True, log_name=f"log-{args.run_num}.txt", tensorboard=False)
    log = logger.info
    train_tf, test_tf = transforms(args.image_size)
    trainval = VOC2007Classification(args.data, "trainval", train_tf)
    test = VOC2007Classification(args.data, "test", test_tf)
    log(f"VOC2007 trainval {len(trainval)} images, test {len(test)} images, {args.image_size}px, {device.type}")
    trunk, dim = build_trunk(args, device, log)
    kw = {"batch_size": args.batch_size, "num_workers": args.workers, "pin_memory": device.type == "cuda"}
    start = time.time()
    test_x, test_y = extract(trunk, test, args)
    result: dict = {"mode": "svm" if args.svm else "linear", "arch": args.arch, "pretrained": args.pretrained,
                    "trainval_images": len(trainval), "test_images": len(test), "image_size": args.image_size}
    if args.svm or args.cache_features:
        trainval.transform = test_tf
        train_x, train_y = extract(trunk, trainval, args)
        log(f"features extracted ({dim}-d) in {format_duration(time.time() - start)}")
    if args.svm:
        scores, costs = svm_scores(F.normalize(train_x, dim=1).numpy(), train_y.numpy(),
                                   F.normalize(test_x, dim=1).numpy(), args.svm_costs, args.svm_folds, log,
                                   VOC_CLASSES)
        result["svm_costs"] = dict(zip(VOC_CLASSES, costs, strict=True))
    else:
        head = init_head(nn.Linear(dim, len(VOC_CLASSES)).to(device))
        if args.cache_features:
            loader = DataLoader(TensorDataset(train_x, train_y), batch_size=args.batch_size, shuffle=True)
            result["train_loss"] = train_head(head, None, loader, args, device, log)
        else:
            loader = DataLoader(trainval, shuffle=True, drop_last=False, **kw)
            result["train_loss"] = train_head(head, trunk, loader, args, device, log)
        with torch.no_grad():
            scores = head(test_x.to(device)).float().cpu().numpy()
        os.makedirs(os.path.join(args.log, "model"), exist_ok=True)
        atomic_save({"arch": args.arch, "head": head.state_dict(), "pretrained": args.pretrained,
                     "epochs": args.epochs}, os.path.join(args.log, "model", f"model-{args.run_num}.pth"))
    result.update(report(scores, test_y.numpy(), log))
    header = "image," + ",".join(VOC_CLASSES)
    rows = [f"{i}," + ",".join(f"{v:.6g}" for v in row) for i, row in zip(test.ids, scores, strict=True)]
    with open(os.path.join(args.log, f"scores-{args.run_num}.csv"), "w") as f:
        f.write("\n".join([header, *rows]) + "\n")
    logger.write_json(f"results-{args.run_num}.json", _clean(result))
    log(f"results: {os.path.join(args.log, f'results-{args.run_num}.json')} "
        f"({format_duration(time.time() - start)})")
    logger.close()
    return result


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        return run(args)
    except UsageError as err:
        exit_usage(PROG, err)


if __name__ == "__main__":
    main()
