#!/bin/bash
# Train the three issue-4 detectors on shapes scenes (trtflow/shapes.py), side by side on one GPU:
# the checkpoints benchmarks/gpu/hard_models_shapes.yaml validates the engines with.
#   bash benchmarks/gpu/train_shapes.sh [seconds per model]   (default 420; logs in checkpoints/)
# Each run anneals its learning rate over the time budget and saves what it has at the end.
set -euo pipefail
SECONDS_PER_MODEL=${1:-420}
mkdir -p checkpoints
train() {  # architecture, training image side, batch, deployment image side (the evaluation's)
  python3 -m trtflow.shapes --architecture "$1" --size "$2" --batch "$3" --steps 100000 --evaluate-size "$4" \
    --max-seconds "$SECONDS_PER_MODEL" --workers 5 --output "checkpoints/$1_shapes.pt" \
    > "checkpoints/$1_shapes.log" 2>&1
}
train maskrcnn_r50_fpn 512 8 1344 & MASK=$!
train keypointrcnn_r50_fpn 512 8 1344 & KEYPOINT=$!
train rtdetr_r18 640 8 640 & RTDETR=$!
status=0
for pid in $MASK $KEYPOINT $RTDETR; do wait "$pid" || status=1; done
tail -n 2 checkpoints/*_shapes.log
exit $status
