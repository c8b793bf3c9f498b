#!/bin/bash
# Issue 13 on TensorRT: torchvision detectors as users write them (config/torchvision_detector.yaml)
# at builder optimisation level 3, the table's run; then the built-in R-CNNs through the same
# adapter (benchmarks/gpu/rcnn_adapted.yaml) at level 0, a functional check.
#   TRT_PYTHON=/tmp/trtpy bash benchmarks/gpu/torchvision_detectors.sh [tv|rcnn|both]
# Each part resumes where a previous command stopped (the GPU machine's 10-minute limit).
set -uo pipefail
run() {  # config results-dir level
  # a command killed at the machine's limit leaves its lock behind: this script is the only
  # Snakemake in this directory, so the lock is stale
  python3 -m snakemake --unlock --snakefile Snakefile --configfile "$1" --cores 1 >/dev/null
  python3 -m snakemake all --snakefile Snakefile --configfile "$1" --cores 16 --resources gpu=2 \
    --keep-going --rerun-incomplete --config backend=tensorrt results_dir="$2" \
    tensorrt="{python: ${TRT_PYTHON:?set TRT_PYTHON}, optimization_level: $3}"
}
case "${1:-both}" in
  tv) run config/torchvision_detector.yaml results-tvdet 3 ;;
  rcnn) run benchmarks/gpu/rcnn_adapted.yaml results-rcnn 0 ;;
  both) run config/torchvision_detector.yaml results-tvdet 3; run benchmarks/gpu/rcnn_adapted.yaml results-rcnn 0 ;;
esac
