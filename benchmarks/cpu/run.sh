#!/bin/bash
# CPU benchmark: ONNX Runtime fp32/fp16/int8 engines vs PyTorch eager fp32, one workflow run.
# Run on an otherwise idle machine: bash benchmarks/cpu/run.sh [out_dir]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT_DIR=${1:-benchmarks/cpu}
rm -rf results-cpu-bench
snakemake --cores "$(nproc)" all --configfile benchmarks/cpu/config.yaml
python3 benchmarks/make_table.py results-cpu-bench "$OUT_DIR/results.md" \
    --title "CPU benchmark: ONNX Runtime vs PyTorch eager, $(nproc) cores"
