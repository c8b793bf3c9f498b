#!/bin/bash
# RT-DETR and Mask R-CNN (shapes checkpoints) in int8: TensorRT engines and ONNX Runtime on the
# CPU side by side, then the detection metrics of every int8 cell.
#   bash benchmarks/gpu/train_shapes.sh && TRT_PYTHON=/tmp/trtpy bash benchmarks/gpu/int8_detectors.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
CONFIGS="config/hard_models.yaml benchmarks/gpu/hard_models_shapes.yaml benchmarks/gpu/int8_detectors.yaml"
snakemake all --cores 8 --resources gpu=1 --keep-going --rerun-incomplete --configfile $CONFIGS \
  --config backend=tensorrt results_dir=results-int8-det \
  tensorrt="{python: ${TRT_PYTHON:?set TRT_PYTHON}, optimization_level: ${OPT:-0}, workspace_mib: 8192}" \
  > results-int8-det.log 2>&1 &
TRT=$!
snakemake all --cores 8 --keep-going --rerun-incomplete --configfile $CONFIGS \
  --config backend=onnxruntime results_dir=results-int8-det-cpu > results-int8-det-cpu.log 2>&1
wait $TRT
python3 - <<'PY'
import glob, json
for path in sorted(glob.glob("results-int8-det*/validation/*/*/*.json")):
    cell = json.load(open(path))
    boxes = cell["outputs"].get("boxes", {})
    print(path, cell["verdict"], {k: boxes.get(k) for k in ("reference_detections", "engine_detections",
          "detection_recall", "detection_precision", "matched_box_iou", "threshold_crossings")},
          cell["failures"][:3])
PY
