#!/bin/bash
# GPU benchmark: ResNet-50 batch 32, TensorRT fp32/fp16/int8 vs PyTorch eager fp32/fp16 and
# torch.compile, in one run; then the same three engines rebuilt with the warm timing cache.
# Usage: TRT_PYTHON=/path/to/python-with-tensorrt bash benchmarks/gpu/run.sh [out_dir]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT_DIR=${1:-benchmarks/gpu}
TRT_PY=${TRT_PYTHON:?set TRT_PYTHON to a Python that imports tensorrt}
R=results-gpu-bench
[ "${FRESH:-1}" = 1 ] && rm -rf "$R"   # FRESH=0 resumes an interrupted run
snakemake --cores "$(nproc)" all --configfile benchmarks/gpu/resnet50.yaml \
    --config tensorrt="{python: $TRT_PY}"
mkdir -p "$R/cold"
cp "$R"/engines/resnet50/*/*-*.json "$R/cold/"
# Warm timing cache: rebuild the same engines (the cache file stays, the engines go).
snakemake $(ls "$R"/engines/resnet50/*/${WARM_ENGINES:-*}.engine) --cores "$(nproc)" \
    --configfile benchmarks/gpu/resnet50.yaml --config tensorrt="{python: $TRT_PY}" --forcerun engine
python3 benchmarks/make_table.py "$R" "$OUT_DIR/results.md" --title "GPU benchmark: ResNet-50, batch 32"
