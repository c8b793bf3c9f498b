#!/bin/bash
# Issue 10's int8 table on TensorRT: benchmarks/gpu/int8.yaml in one workflow run, then
# int8.csv and int8-tables.md (in out-dir) from its summary.
#   TRT_PYTHON=/tmp/trtpy bash benchmarks/gpu/int8.sh [results-dir] [out-dir]
# CONFIG=another.yaml runs another matrix the same way (benchmarks/gpu/int8_mobilenet_v2.yaml).
set -euo pipefail
cd "$(dirname "$0")/../.."
RESULTS=${1:-results-int8}
OUT=${2:-benchmarks/gpu}
snakemake all --cores "$(nproc)" --resources gpu=1 --keep-going --rerun-incomplete \
  --configfile "${CONFIG:-benchmarks/gpu/int8.yaml}" \
  --config results_dir="$RESULTS" tensorrt="{python: ${TRT_PYTHON:?set TRT_PYTHON}, optimization_level: ${OPT:-3}, workspace_mib: 8192}"
python3 benchmarks/gpu/int8_table.py "$OUT" "$RESULTS"
