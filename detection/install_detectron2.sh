#!/usr/bin/env bash
# Install detectron2 (pure-Python part of 0.7.2) and its dependencies into the venv whose python is $1.
#
#   bash detection/install_detectron2.sh .venv/bin/python
#
# Offline route (no access to detectron2's git repository needed): PyPI's sal-detectron2==0.7.2 is the genuine
# detectron2 0.7.2 Python package, shipped as one wheel tagged cp310 whose compiled _C only loads on Python 3.10.
# We fetch that wheel with pip, give it a py3-none-any name, install it without dependencies, then install
# detection/requirements.txt. Without _C, R50-C4 Faster/Mask R-CNN trains and evaluates (ROIAlign and NMS come
# from torchvision); deformable and rotated ops are unavailable.
#
# Idempotent: an importable detectron2 (this wheel or an official source build) is left as it is. Any failure
# stops the script with a non-zero status.
set -euo pipefail

PY="${1:?usage: bash detection/install_detectron2.sh PYTHON (the python of the target venv)}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PKG="sal-detectron2"
VERSION="0.7.2"

if ! "$PY" -c 'import torch, torchvision' >/dev/null 2>&1; then
    echo "install_detectron2.sh: $PY cannot import torch and torchvision; install requirements.txt first" >&2
    exit 1
fi

# Dependencies first, so that the import check below sees a complete environment.
"$PY" -m pip install -q -r "$HERE/requirements.txt"

if "$PY" -c 'import detectron2.modeling' >/dev/null 2>&1; then
    echo "install_detectron2.sh: detectron2 already importable, not reinstalling"
else
    TMP="$(mktemp -d)"
    trap 'rm -rf "$TMP"' EXIT
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 -d "$TMP" "$PKG==$VERSION"
    shopt -s nullglob
    wheels=("$TMP"/sal_detectron2-"$VERSION"-*.whl)
    shopt -u nullglob
    if [ "${#wheels[@]}" -ne 1 ]; then
        echo "install_detectron2.sh: expected one $PKG $VERSION wheel in $TMP, found ${#wheels[@]}" >&2
        exit 1
    fi
    ANY="$TMP/sal_detectron2-$VERSION-py3-none-any.whl"
    cp "${wheels[0]}" "$ANY"
    "$PY" -m pip install -q --no-deps "$ANY"
fi

# Fail loudly if the result does not work: import the pieces detection/train_net.py uses.
"$PY" - <<'PYCHECK'
import detectron2
from detectron2.checkpoint import DetectionCheckpointer  # noqa: F401
from detectron2.engine import DefaultTrainer, default_argument_parser, launch  # noqa: F401
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator  # noqa: F401
from detectron2.modeling.roi_heads import Res5ROIHeads  # noqa: F401

print(f"install_detectron2.sh: detectron2 {detectron2.__version__} ready")
PYCHECK
