#!/bin/bash
# Issue 4's models (config/hard_models.yaml) on TensorRT, then the results table. The detectors
# use the shapes checkpoints (benchmarks/gpu/hard_models_shapes.yaml): train them first.
#   bash benchmarks/gpu/train_shapes.sh && TRT_PYTHON=/tmp/trtpy bash benchmarks/gpu/hard_models.sh [results-dir]
# Builder optimisation level 0 kept the whole matrix inside the GPU machine's 10-minute command
# limit; validation failures are recorded (validation.on_failure: record in the config).
set -uo pipefail
RESULTS=${1:-results-hard}
snakemake all --cores 16 --resources gpu=3 --keep-going --rerun-incomplete \
  --configfile config/hard_models.yaml benchmarks/gpu/hard_models_shapes.yaml --config backend=tensorrt results_dir="$RESULTS" \
  tensorrt="{python: ${TRT_PYTHON:?set TRT_PYTHON}, optimization_level: ${OPT:-0}, workspace_mib: 8192}"
python3 benchmarks/gpu/hard_models_table.py "$RESULTS"
