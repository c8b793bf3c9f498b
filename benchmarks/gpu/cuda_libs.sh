#!/bin/bash
# On the GPU machine, after ../shared/gpu/setup.sh: put forwarding libraries in place of the
# set-up's stub cuBLAS 12 / cuBLASLt 12 / cuDNN 8, so that TensorRT 8.6.0 reaches the machine's own
# CUDA 13 cuBLAS and cuDNN 9 (the torch wheels' copies).
#
# Why: the stubs export only what libnvinfer_plugin links and return an error from every call.
# TensorRT 8.6 dlsym()s more of them (cublasGetProperty, cudnnActivationForward, ...) as soon as a
# network has a plugin layer, so no plugin network could be built here (notes/trt_api.md §14).
#
# How: each forwarding library has the old soname and symbol version (libcublas.so.12, ...), so
# that libnvinfer_plugin's versioned references bind; every function the real library exports is a
# one-instruction trampoline (`jmp *slot`) whose slot a constructor fills with dlsym() from the real
# library, so no signature is needed. A function the plugin library names that the real one lacks
# keeps the stub's behaviour (returns status 1, "not initialised"), as does one that
# libnvinfer looks up by name.
# The C API of cuBLAS 12->13 and of cuDNN's legacy calls 8->9 kept their signatures for the calls
# TensorRT makes; whatever differs shows as a failed build or a failed validation, not silently:
# every engine built this way is validated against PyTorch by the workflow.
#   bash benchmarks/gpu/cuda_libs.sh [cublas cublasLt cudnn]   (default: all three)
set -euo pipefail
TRTLIB=${TRTLIB:-/tmp/trtlib}
PLUGIN=${PLUGIN:-/tmp/site39/tensorrt/libnvinfer_plugin.so.8}
WORK=$(mktemp -d)
NVIDIA=$(python3 -c "import nvidia; print(list(nvidia.__path__)[0])")
real_library() {  # the machine's newest copy of a library (e.g. libcublas.so.13)
  find "$NVIDIA" -name "$1.so.[0-9]*" -type f | sort -V | tail -1
}
forwarder() {  # name (cublas|cublasLt|cudnn), old soname, real library's stem
  local name=$1 soname=$2 real
  real=$(real_library "$3")
  [ -n "$real" ] || { echo "cuda_libs: no $3.so.* under $NVIDIA: $soname stays a stub" >&2; return 0; }
  local prefix_filter="^${name}[A-Z_]"
  nm -D --defined-only "$real" | awk '$2 == "T" {print $3}' | sed 's/@.*//' | grep -E "$prefix_filter" \
    | { if [ "$name" = cublas ]; then grep -v '^cublasLt' || true; else cat; fi; } | sort -u > "$WORK/$name.real"
  # What the plugin library links, and what libnvinfer dlsym()s by name (it fails if any is missing,
  # e.g. cuDNN 8's cudnnGetRNNLinLayerBiasParams, gone from cuDNN 9).
  { nm -D --undefined-only "$PLUGIN" | awk '{print $2}' | sed 's/@.*//'
    strings -n 6 "$(dirname "$PLUGIN")/libnvinfer.so.8" | grep -E '^[A-Za-z_][A-Za-z0-9_]*$'; } \
    | grep -E "$prefix_filter" \
    | { if [ "$name" = cublas ]; then grep -v '^cublasLt' || true; else cat; fi; } | sort -u > "$WORK/$name.needed"
  python3 - "$WORK/$name.real" "$WORK/$name.needed" "$real" > "$WORK/$name.c" <<'PY'
import sys
real = open(sys.argv[1]).read().split()
missing = sorted(set(open(sys.argv[2]).read().split()) - set(real))
print('#include <dlfcn.h>\n#include <stdio.h>')
print(f'__attribute__((visibility("hidden"))) void *trtflow_slots[{max(len(real), 1)}];')
print('__attribute__((visibility("hidden"))) long trtflow_unavailable(void) { return 1; }')
print(f'static const char *names[] = {{{", ".join(chr(34) + n + chr(34) for n in real)}}};')
print('__attribute__((constructor)) static void trtflow_bind(void) {')
print(f'  void *lib = dlopen("{sys.argv[3]}", RTLD_NOW | RTLD_LOCAL);')
print(f'  if (!lib) fprintf(stderr, "cuda_libs: %s\\n", dlerror());')
print(f'  for (unsigned i = 0; i < {len(real)}; i++) {{')
print('    void *f = lib ? dlsym(lib, names[i]) : 0;')
print('    trtflow_slots[i] = f ? f : (void *)trtflow_unavailable;')
print('  }\n}')
for i, name in enumerate(real):
    print(f'__asm__(".text\\n.globl {name}\\n.type {name},@function\\n{name}:\\n'
          f'  jmp *trtflow_slots+{8 * i}(%rip)\\n");')
for name in missing:
    print(f'long {name}(void) {{ return 1; }}')
PY
  printf '%s { global: %s*; local: *; };\n' "$soname" "$name" > "$WORK/$name.map"
  gcc -shared -fPIC -O1 -o "$WORK/$soname" "$WORK/$name.c" -ldl -Wl,-soname,"$soname" \
    -Wl,--version-script="$WORK/$name.map"
  mv -f "$WORK/$soname" "$TRTLIB/$soname"
  echo "cuda_libs: $TRTLIB/$soname -> $real ($(wc -l < "$WORK/$name.real") functions," \
    "$(comm -23 "$WORK/$name.needed" "$WORK/$name.real" | wc -l) names TensorRT uses left as stubs)"
}
for name in ${*:-cublas cublasLt cudnn}; do
  case $name in
    cublas) forwarder cublas libcublas.so.12 libcublas ;;
    cublasLt) forwarder cublasLt libcublasLt.so.12 libcublasLt ;;
    cudnn) forwarder cudnn libcudnn.so.8 libcudnn ;;
    *) echo "cuda_libs: unknown library $name (cublas, cublasLt, cudnn)" >&2; exit 2 ;;
  esac
done
# The real cuDNN 9 loads its sub-libraries (libcudnn_ops.so.9, ...) by name from its own folder.
CUDNN_DIR=$(dirname "$(real_library libcudnn)")
grep -q "$CUDNN_DIR" /tmp/trtpy || sed -i "s#^export LD_LIBRARY_PATH=/tmp/trtlib:#export LD_LIBRARY_PATH=/tmp/trtlib:$CUDNN_DIR:#" /tmp/trtpy
rm -rf "$WORK"
