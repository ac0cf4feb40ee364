#!/usr/bin/env bash
# Train the release models on a lent GPU host in ONE call: several runs side by side on one GPU
# (each HIME run is far too small to fill an H100), then copy weights + resumable checkpoints and
# logs to $OUT. Needs only torch, numpy, pillow, opencv and safetensors on the host.
#   OUT=... BUDGET=420 TRAIN=.gpu/train_crops.npz VAL=.gpu/dev_crops.npz bash benchmarks/gpu_train.sh
set -u
OUT=${OUT:-runs/gpu-out}
BUDGET=${BUDGET:-420}
DEVICE=${DEVICE:-cuda}
TRAIN=${TRAIN:-.gpu/train_crops.npz}
VAL=${VAL:-.gpu/dev_crops.npz}
ARCHS=${ARCHS:-"hime_small_x4:32 hime_small_x8:32 hime_large_x4:32"}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PY:-python3}
mkdir -p "$OUT" runs
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
for spec in $ARCHS; do
  arch=${spec%%:*}; batch=${spec##*:}
  RESUME=""
  [ -f ".gpu/$arch.ckpt.safetensors" ] && mkdir -p "runs/$arch" && cp ".gpu/$arch.ckpt.safetensors" "runs/$arch/checkpoint.safetensors" && RESUME="--resume"
  timeout $((${BUDGET%.*} + 120)) "$PY" -m hime_cli.training.run --data "$TRAIN" --val-data "$VAL" --run "runs/$arch" --arch "$arch" \
    --time-budget "$BUDGET" --batch "$batch" --device "$DEVICE" --checkpoint-minutes 2 $RESUME > "runs/$arch.log" 2>&1 &
done
wait
for spec in $ARCHS; do
  arch=${spec%%:*}
  cp "runs/$arch/$arch.safetensors" "$OUT/" 2>/dev/null
  cp "runs/$arch/checkpoint.safetensors" "$OUT/$arch.ckpt.safetensors" 2>/dev/null
done
{
  for spec in $ARCHS; do arch=${spec%%:*}; echo "== $arch"; tail -n 3 "runs/$arch.log"; sed "s/^/$arch /" "runs/$arch/log.jsonl"; done
  echo "== dev evaluation"
  "$PY" benchmarks/gpu_eval.py "$VAL" $(for spec in $ARCHS; do echo "runs/${spec%%:*}/${spec%%:*}.safetensors"; done)
} > "$OUT/report.txt" 2>&1
grep -v '"step"' "$OUT/report.txt" | tail -n 30
