#!/usr/bin/env bash
# One prepared session on a CUDA machine (about 5 minutes on one H100/H200), run from the repo root:
#   1. the real entry points on the GPU, on a small generated ImageFolder: main_clsa.py spawned (nccl, --amp
#      --channels_last, multi-crop, kNN monitor), --resume auto to one more epoch, under torchrun (env://),
#      then lincls.py (linear, 1 epoch) and lincls.py --knn on that checkpoint;
#   2. benchmarks/gpu_check.py (ResNet-50 step rates and the loader, both settings).
# Logs and JSON go to $OUT (default /tmp/gpu_session). DEVICE=cpu GPU_CHECK_ARGS=--dry-run runs the same steps on
# a CPU in a minute or two, to check the script itself.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_session}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
D=/tmp/gpu_session_imgs
L=/tmp/gpu_session_log
rm -rf "$D" "$L"
status=0
step() {  # step NAME CMD...: run, log to $OUT/NAME.log, report rc and seconds
  local name=$1; shift
  local t0=$SECONDS
  "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc $rc, $((SECONDS - t0)) s"; grep -v '^{' "$OUT/$name.log" | tail -n 4
  [ $rc -eq 0 ] || status=1
}

nvidia-smi -L 2>/dev/null || echo "(no nvidia-smi)"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
$PY -c "import sys; sys.path.insert(0, 'tests'); from conftest import write_image_folder as w
w('$D', classes=4, per_class=64, size=(72, 64)); w('$D', classes=4, per_class=16, size=(72, 64), split='val')"

PRE=(--data "$D" --arch resnet18 --batch_size 32 --moco_k 256 --workers 4 --print_freq 4 --device "$DEVICE"
     --amp --channels_last --nmb_crops 1 1 1 --size_crops 64 48 32 --min_scale_crops 0.2 0.15 0.1
     --max_scale_crops 1 0.7 0.5 --pick_weak 0 1 2 --pick_strong 0 1 2 --knn_data "$D" --knn_size 64)
step pretrain_spawn "$PY" main_clsa.py "${PRE[@]}" --epochs 2 --log_path "$L/spawn" --run_dir "$L/spawn/run"
step pretrain_resume "$PY" main_clsa.py "${PRE[@]}" --epochs 3 --log_path "$L/spawn" --run_dir "$L/spawn/run" \
  --resume auto
step pretrain_torchrun "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 main_clsa.py "${PRE[@]}" \
  --epochs 1 --dist_url env:// --log_path "$L/torchrun" --run_dir "$L/torchrun/run"
CKPT=$(find "$L/spawn/run" -name 'checkpoint_last.pth.tar' | head -n 1)
echo "checkpoint: $CKPT"
EVAL=(--data "$D" -a resnet18 -b 32 -j 4 --train-crop 64 --val-resize 72 --val-crop 64 -p 4 --device "$DEVICE"
      --pretrained "$CKPT")
step lincls "$PY" lincls.py "${EVAL[@]}" --epochs 1 --lr 1.0 --log_path "$L/lincls"
step lincls_knn "$PY" lincls.py "${EVAL[@]}" --knn --log_path "$L/knn"
grep -h "kNN\|Acc@1\|acc" "$L"/spawn/run/train.log 2>/dev/null | tail -n 3

# shellcheck disable=SC2086
step gpu_check "$PY" benchmarks/gpu_check.py --out "$OUT/gpu_check.json" ${GPU_CHECK_ARGS:-}
sed -n '/^== /,$p' "$OUT/gpu_check.log" | grep -v '^{' 
exit $status
