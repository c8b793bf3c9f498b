#!/bin/bash
# Train networks on shapes scenes (trtflow/shapes.py), side by side on one GPU: the checkpoints
# benchmarks/gpu/hard_models_shapes.yaml (the three issue-4 detectors) and int8_shapes.yaml
# (issue 10: RT-DETR, Mask R-CNN and efficientnet_v2_s in int8) validate the engines with.
#   bash benchmarks/gpu/train_shapes.sh [seconds per model] [model ...]
#   default: 420 s; maskrcnn_r50_fpn keypointrcnn_r50_fpn rtdetr_r18 (logs in checkpoints/)
# Each run anneals its learning rate over the time budget and saves what it has at the end.
set -euo pipefail
SECONDS_PER_MODEL=${1:-420}
shift || true
MODELS=${*:-maskrcnn_r50_fpn keypointrcnn_r50_fpn rtdetr_r18}
mkdir -p checkpoints
train() {  # model name: its architecture, training image side, batch, deployment image side
  local architecture size batch deploy
  case "$1" in
    maskrcnn_r50_fpn|keypointrcnn_r50_fpn) architecture=$1 size=512 batch=8 deploy=1344 ;;
    rtdetr_r18) architecture=$1 size=640 batch=8 deploy=640 ;;
    # 128 pixels: in the same 330 s on a shared H200, 224-pixel training reached 47 % accuracy,
    # 128-pixel 69 % (benchmarks/gpu/int8.md, run d)
    efficientnet_v2_s) architecture=torchvision.models:efficientnet_v2_s size=128 batch=64 deploy=128 ;;
    *) echo "train_shapes.sh: no training recipe for '$1'" >&2; return 2 ;;
  esac
  python3 -m trtflow.shapes --architecture "$architecture" --size "$size" --batch "$batch" --steps 100000 \
    --evaluate-size "$deploy" --max-seconds "$SECONDS_PER_MODEL" --workers 5 \
    --output "checkpoints/$1_shapes.pt" > "checkpoints/$1_shapes.log" 2>&1
}
pids=()
for model in $MODELS; do train "$model" & pids+=($!); done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
tail -n 2 checkpoints/*_shapes.log
exit $status
