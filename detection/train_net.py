#!/usr/bin/env python
"""Fine-tune and evaluate a detectron2 R50-C4 detector from CLSA weights (VOC or COCO).

    python detection/train_net.py --config-file detection/configs/pascal_voc_R_50_C4_24k_CLSA.yaml \
        --num-gpus 8 MODEL.WEIGHTS clsa.pkl

Flags come from detectron2's ``default_argument_parser`` (``--config-file``, ``--eval-only``, ``--resume``,
``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``); trailing ``KEY VALUE`` pairs override the
config. Processes are started by detectron2's ``launch``.

Datasets are detectron2's builtin ones (``voc_2007_trainval``, ``coco_2017_val``...), found under
``$DETECTRON2_DATASETS``; when that variable is unset this script points it at ``detection/datasets`` (next to
this file), so it works from any directory. Evaluators are chosen by dataset name: names containing "coco" get
COCOEvaluator, names containing "voc" PascalVOCDetectionEvaluator. After evaluation, the main process writes the
metrics of the latest evaluation to ``<OUTPUT_DIR>/eval_results.json``.
"""

from __future__ import annotations

import gc
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# Must happen before detectron2 is imported: its builtin datasets are registered at import time from this root.
os.environ.setdefault("DETECTRON2_DATASETS", os.path.join(HERE, "datasets"))
if __name__ == "__main__":  # no cycle collection during the slow imports (ops/startup.py, not importable here)
    gc.disable()

import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import CfgNode, get_cfg  # noqa: E402
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch  # noqa: E402
from detectron2.evaluation import (  # noqa: E402
    COCOEvaluator,
    DatasetEvaluator,
    PascalVOCDetectionEvaluator,
    verify_results,
)
from detectron2.layers import get_norm  # noqa: E402
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads  # noqa: E402
from detectron2.utils import comm  # noqa: E402

if __name__ == "__main__":  # what they made stays out of later collections
    gc.freeze()
    gc.enable()

WEIGHTS_PLACEHOLDER = "See Instructions"


class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    """Res5ROIHeads with one extra norm layer (type ``MODEL.RESNETS.NORM``) appended after the res5 block.

    MoCo's C4 recipe: with a BN-everywhere backbone the pooled res5 features are normalised before the box (and
    mask) predictors. Built through ``from_config``, the public extension point of a configurable module; the
    layer is named ``res5.norm`` as in MoCo's code.
    """

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict) -> dict:
        """Arguments of Res5ROIHeads, with the norm layer added to the res5 ``nn.Sequential``."""
        ret = super().from_config(cfg, input_shape)
        res5 = ret["res5"]
        res5.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, res5[-1].out_channels))
        return ret


if "Res5ROIHeadsExtraNorm" not in ROI_HEADS_REGISTRY:
    ROI_HEADS_REGISTRY.register(Res5ROIHeadsExtraNorm)


def build_evaluator(cfg: CfgNode, dataset_name: str, output_folder: str | None = None) -> DatasetEvaluator:
    """COCOEvaluator for datasets whose name contains "coco", PascalVOCDetectionEvaluator for "voc"."""
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
    if "coco" in dataset_name:
        tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
        return COCOEvaluator(dataset_name, tasks=tasks, distributed=True, output_dir=output_folder)
    if "voc" in dataset_name:
        return PascalVOCDetectionEvaluator(dataset_name)
    raise ValueError(f"no evaluator for dataset {dataset_name!r}: its name must contain 'coco' or 'voc'")


class Trainer(DefaultTrainer):
    """DefaultTrainer whose evaluators are picked by dataset name and whose metrics are saved as JSON."""

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None) -> DatasetEvaluator:
        """See :func:`build_evaluator`."""
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg: CfgNode, model, evaluators=None) -> dict:
        """DefaultTrainer.test (also run by the end-of-training hook), then save the metrics on the main process."""
        results = super().test(cfg, model, evaluators)
        if comm.is_main_process() and results:
            print(f"evaluation results written to {save_results(cfg, results)}")
        return results


def load_config(args) -> CfgNode:
    """detectron2 defaults, then the config file (with its ``_BASE_`` chain), then the command-line overrides."""
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    return cfg


def config_problem(cfg: CfgNode, args) -> str | None:
    """One-line description of a setting that cannot work here, or None."""
    world_size = args.num_gpus * args.num_machines
    on_cuda = cfg.MODEL.DEVICE.startswith("cuda")
    if on_cuda and not torch.cuda.is_available():
        return "MODEL.DEVICE is cuda but no CUDA GPU is available; add MODEL.DEVICE cpu (see detection/README.md)"
    if not on_cuda and world_size > 1:
        # detectron2's trainer wraps the model in DDP with one GPU per process, and torch's SyncBatchNorm
        # refuses CPU tensors as soon as there is more than one process.
        return "more than one process needs CUDA GPUs; on the CPU run one process (--num-gpus 1)"
    resuming = args.resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    if cfg.MODEL.WEIGHTS == WEIGHTS_PLACEHOLDER and not resuming:
        return "set MODEL.WEIGHTS to the converted pickle, e.g. MODEL.WEIGHTS clsa.pkl (see detection/README.md)"
    return None


def save_results(cfg: CfgNode, results: dict) -> str:
    """Write evaluation metrics (``{"bbox": {"AP": ..}, ..}``) to ``<OUTPUT_DIR>/eval_results.json``."""

    def plain(value):
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        number = float(value)
        return None if math.isnan(number) else number

    path = os.path.join(cfg.OUTPUT_DIR, "eval_results.json")
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    with open(path, "w") as f:
        json.dump(plain(results), f, indent=2)
    return path


def main(args) -> dict:
    """Run in every process: evaluate (``--eval-only``) or train, then evaluate on DATASETS.TEST."""
    cfg = load_config(args)
    default_setup(cfg, args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
    else:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        results = trainer.train()
    return results


def cli(argv: list[str] | None = None) -> None:
    """Parse flags, check the configuration once, then start the processes."""
    parser = default_argument_parser()
    args = parser.parse_args(argv)
    if not args.config_file:
        parser.error("--config-file is required")
    problem = config_problem(load_config(args), args)
    if problem:
        sys.exit(f"{parser.prog}: error: {problem}")
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    cli()
