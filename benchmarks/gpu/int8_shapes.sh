#!/bin/bash
# RT-DETR and Mask R-CNN in int8, efficientnet_v2_s in fp16 and int8 (shapes checkpoints):
# TensorRT engines and ONNX Runtime on the CPU side by side, then every cell's verdict and metrics.
#   bash benchmarks/gpu/train_shapes.sh 330 maskrcnn_r50_fpn rtdetr_r18 efficientnet_v2_s
#   TRT_PYTHON=/tmp/trtpy bash benchmarks/gpu/int8_shapes.sh   (EXTRA_CONFIGS="more.yaml ...": overlays)
set -uo pipefail
cd "$(dirname "$0")/../.."
CONFIGS="config/hard_models.yaml benchmarks/gpu/hard_models_shapes.yaml benchmarks/gpu/int8_shapes.yaml ${EXTRA_CONFIGS:-}"
snakemake all --cores 8 --resources gpu=1 --keep-going --rerun-incomplete --configfile $CONFIGS \
  --config backend=tensorrt results_dir=results-int8-shapes \
  tensorrt="{python: ${TRT_PYTHON:?set TRT_PYTHON}, optimization_level: ${OPT:-0}, workspace_mib: 8192}" \
  > results-int8-shapes.log 2>&1 &
TRT=$!
snakemake all --cores 8 --keep-going --rerun-incomplete --configfile $CONFIGS \
  --config backend=onnxruntime results_dir=results-int8-shapes-cpu > results-int8-shapes-cpu.log 2>&1
wait $TRT
python3 - <<'PY'
import glob, json
for path in sorted(glob.glob("results-int8-shapes*/validation/*/*/*.json")):
    cell = json.load(open(path))
    metrics = {name: {k: v for k, v in values.items() if isinstance(v, (int, float))}
               for name, values in cell["outputs"].items() if name in ("boxes", "logits", "masks")}
    print(path, cell["verdict"], metrics, cell["failures"][:3])
PY
