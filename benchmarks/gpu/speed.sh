#!/bin/bash
# Issues 20/21 on the GPU machine, one command (run it detached; it writes $RUNS/*):
#   1. why TensorRT 8.6.0 refuses its own timing cache (timing_cache_probe.py);
#   2. Mask R-CNN 1344 fp16/int8 at level 3 with per-layer profiles (maskrcnn_speed.yaml);
#      deploy: its fp16 with the efficient_nms pass (maskrcnn_deploy.yaml);
#   3. ResNet-50 b256 and MobileNetV2 b32, fp16/int8 at level 3 (int8.yaml less efficientnet),
#      then the same matrix rebuilt with its engines deleted and the timing cache kept (warm);
#   4. gputests: `pytest -m gpu` (GPUTESTS_K='pyramid or nms' selects with -k);
#   cachevariants: timing_cache_probe.py --variants (does any cache read back);
#   keypoint: keypointrcnn_deploy.yaml;
#   train: shapes checkpoints of both R-CNNs (train_shapes.sh, TRAIN_SECONDS each, default 330, side
#   by side); SHAPES=1 then validates deploy and keypoint with them (*_deploy_shapes.yaml);
#   collect: tars what exists (summaries, JSONs, logs; no engines or ONNX) to $OUT/results.tgz (poll with it).
#   TRT_PYTHON=/tmp/trtpy RUNS=/tmp/runs bash benchmarks/gpu/speed.sh [steps: probe maskrcnn int8 warm gputests]
#   EXCLUDE='[{model: efficientnet_v2_s}]' leaves cells of int8.yaml out; TRT_EXTRA adds tensorrt
#   settings; PRECISIONS='[fp16, int8]' sets deploy's precisions (default: the YAML's);
#   INT8_FLOAT=fp16_layers sets tensorrt.int8_float; AB=1 adds deploy's A/B model (filters kept,
#   maskrcnn_deploy_ab.yaml).
#   A plugin layer (deploy) makes TensorRT load cuBLAS and cuDNN: run benchmarks/gpu/cuda_libs.sh
#   once after ../shared/gpu/setup.sh, whose libraries for them are stubs.
set -uo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-/tmp/runs}
mkdir -p "$RUNS"
: "${TRT_PYTHON:?set TRT_PYTHON}"
TRT="{python: $TRT_PYTHON, optimization_level: ${OPT:-3}, workspace_mib: 8192${INT8_FLOAT:+, int8_float: $INT8_FLOAT}${TRT_EXTRA:+, $TRT_EXTRA}}"
summary() {  # the cells of a results folder, one line each, into the run log
  python3 - "$1" <<'PY'
import csv, sys
for r in csv.DictReader(open(f"{sys.argv[1]}/summary.csv")):
    print(" | ".join(r.get(k, "") for k in ("model", "precision", "verdict", "latency_p50_ms",
          "eager_latency_p50_ms", "timing_mode", "throughput", "speedup_vs_torch",
          "build_seconds", "profile_top_category", "profile_reformat_layers", "speed_flags")))
PY
}
collect() {  # results, small files only, into $OUT/results.tgz (a poll's copy survives a lost
  # machine; a tar, because the transfer back drops files more than a few folders deep)
  local dirs=()
  for dir in results-maskrcnn results-deploy results-keypoint results-int8 "$RUNS"; do [ -d "$dir" ] && dirs+=("$dir"); done
  [ ${#dirs[@]} -gt 0 ] && find "${dirs[@]}" -type f \( -name '*.csv' -o -name '*.json' -o -name '*.log' \
    -o -name '*.txt' -o -name '*.png' \) -size -5M -print0 | tar czf "$OUT/results.tgz" --null -T -
  return 0
}
for step in ${*:-probe maskrcnn int8 warm}; do
  echo "=== $step $(date -u +%T)"
  case $step in
    probe)
      TRTPY_PATH=$PWD $TRT_PYTHON benchmarks/gpu/timing_cache_probe.py /tmp/tc-probe 2>&1 | tee "$RUNS/timing_cache_probe.log" ;;
    train)
      bash benchmarks/gpu/train_shapes.sh "${TRAIN_SECONDS:-330}" maskrcnn_r50_fpn keypointrcnn_r50_fpn
      cp checkpoints/*.log "$RUNS/" ;;
    deploy)
      snakemake all --cores "$(nproc)" --resources gpu=1 --keep-going --rerun-incomplete \
        --configfile benchmarks/gpu/maskrcnn_deploy.yaml ${SHAPES:+benchmarks/gpu/maskrcnn_deploy_shapes.yaml} \
        ${AB:+benchmarks/gpu/maskrcnn_deploy_ab.yaml} --config tensorrt="$TRT" \
        ${PRECISIONS:+precisions="$PRECISIONS"} >> "$RUNS/deploy.log" 2>&1
      summary results-deploy ;;
    keypoint)
      snakemake all --cores "$(nproc)" --resources gpu=1 --keep-going --rerun-incomplete \
        --configfile benchmarks/gpu/keypointrcnn_deploy.yaml ${SHAPES:+benchmarks/gpu/keypointrcnn_deploy_shapes.yaml} --config tensorrt="$TRT" >> "$RUNS/keypoint.log" 2>&1
      summary results-keypoint ;;
    cachevariants)
      TRTPY_PATH=$PWD $TRT_PYTHON benchmarks/gpu/timing_cache_probe.py --variants 2>&1 | tee "$RUNS/timing_cache_variants.log" | grep VARIANT ;;
    maskrcnn)
      snakemake all --cores "$(nproc)" --resources gpu=1 --keep-going --rerun-incomplete \
        --configfile benchmarks/gpu/maskrcnn_speed.yaml --config tensorrt="$TRT" > "$RUNS/maskrcnn.log" 2>&1
      summary results-maskrcnn ;;
    int8|warm)
      if [ "$step" = warm ]; then rm -f results-int8/engines/*/*/*.engine; fi
      snakemake all --cores "$(nproc)" --resources gpu=1 --keep-going --rerun-incomplete \
        --configfile benchmarks/gpu/int8.yaml --config results_dir=results-int8 tensorrt="$TRT" \
        exclude="${EXCLUDE:-[]}" > "$RUNS/$step.log" 2>&1
      summary results-int8
      python3 -c "import json,glob; [print(p, json.load(open(p))['build_seconds'], json.load(open(p))['timing_cache']) for p in sorted(glob.glob('results-int8/engines/*/*/*.json'))]" | tee "$RUNS/$step-builds.txt" ;;
    gputests)
      TRTFLOW_TRT_PYTHON=$TRT_PYTHON python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py \
        ${GPUTESTS_K:+-k "$GPUTESTS_K"} > "$RUNS/gputests.log" 2>&1
      tail -5 "$RUNS/gputests.log" ;;
    collect) collect; continue ;;
  esac
done
echo "=== done $(date -u +%T)"
