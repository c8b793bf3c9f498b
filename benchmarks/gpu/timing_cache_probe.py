#!/usr/bin/env python3
"""Why does TensorRT 8.6.0 refuse its own timing cache? (issue 21, item 3)

Builds two tiny networks with TensorRT's network API, one that TensorRT runs with plain
convolution kernels and one that it hands to Myelin (MatMul -> Softmax -> MatMul, an attention
block), and for each:
  1. builds with an empty cache and writes the cache to a file;
  2. reads that file back in the same process (create_timing_cache) and counts logger errors;
  3. reads it back in a fresh process, and builds with it (state, errors, seconds);
  4. the same fresh-process read with the GPU machine's stub cuBLAS/cuDNN libraries left off the
     library path (seen 2026-12-02: TensorRT 8.6.0's bindings then fail to import, they need
     libcublas.so.12 themselves; benchmarks/gpu/timing-cache.md).
With --variants (issue 21, 2026-12-07): whether any cache reads back at all. An empty cache
serialised before any build; a conv build with the FASTER_DYNAMIC_SHAPES_0805 preview feature
off (8.6's route into Myelin for dynamic shapes); a conv build at optimisation level 0.
Prints one line per step. Run under the TensorRT Python:
  TRTPY_PATH=$PWD /tmp/trtpy benchmarks/gpu/timing_cache_probe.py /tmp/tc-probe
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def logger_with_errors(trt):
    class Keep(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors = []

        def log(self, severity, msg):
            if severity <= trt.ILogger.ERROR:
                self.errors.append(msg)

    return Keep()


def network(trt, builder, kind):
    net = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    rng = np.random.default_rng(0)
    if kind == "conv":
        x = net.add_input("x", trt.float32, (8, 32, 56, 56))
        w = rng.standard_normal((64, 32, 3, 3)).astype(np.float32) * 0.05
        conv = net.add_convolution_nd(x, 64, (3, 3), trt.Weights(w), trt.Weights(np.zeros(64, np.float32)))
        conv.padding_nd = (1, 1)
        relu = net.add_activation(conv.get_output(0), trt.ActivationType.RELU)
        net.mark_output(relu.get_output(0))
    else:  # attention: TensorRT 8.6 runs MatMul-Softmax-MatMul in a Myelin region
        q = net.add_input("q", trt.float32, (8, 4, 128, 64))
        k = net.add_constant((1, 4, 64, 128), trt.Weights(rng.standard_normal((1, 4, 64, 128)).astype(np.float32) * 0.1))
        v = net.add_constant((1, 4, 128, 64), trt.Weights(rng.standard_normal((1, 4, 128, 64)).astype(np.float32) * 0.1))
        s = net.add_matrix_multiply(q, trt.MatrixOperation.NONE, k.get_output(0), trt.MatrixOperation.NONE)
        p = net.add_softmax(s.get_output(0))
        p.axes = 1 << 3
        o = net.add_matrix_multiply(p.get_output(0), trt.MatrixOperation.NONE, v.get_output(0), trt.MatrixOperation.NONE)
        net.mark_output(o.get_output(0))
    return net


def build(kind, cache_in, cache_out, plugins):
    import tensorrt as trt

    logger = logger_with_errors(trt)
    if plugins:
        trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)
    net = network(trt, builder, kind)
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    config.builder_optimization_level = 3
    data = Path(cache_in).read_bytes() if cache_in else b""
    before = len(logger.errors)
    cache = config.create_timing_cache(data)
    read_errors = logger.errors[before:]
    config.set_timing_cache(cache, ignore_mismatch=False)
    start = time.perf_counter()
    engine = builder.build_serialized_network(net, config)
    seconds = time.perf_counter() - start
    out = bytes(config.get_timing_cache().serialize())
    if cache_out:
        Path(cache_out).write_bytes(out)
    same_process = None
    if data == b"" and cache_out:  # read our own cache back, in this process
        before = len(logger.errors)
        config.create_timing_cache(out)
        same_process = logger.errors[before:]
    return {"kind": kind, "bytes_in": len(data), "bytes_out": len(out), "seconds": round(seconds, 2),
            "read_errors": read_errors, "same_process_read_errors": same_process,
            "built": engine is not None, "plugins": plugins}


def fresh(args, env):
    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True,
                          text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": done.stderr[-600:]}


def main(folder):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    without_stubs = dict(os.environ)
    stubs = "/tmp/trtlib"
    cudart = folder / "cudart-only"
    cudart.mkdir(exist_ok=True)
    if os.path.exists(f"{stubs}/libcudart.so") and not (cudart / "libcudart.so").exists():
        os.symlink(os.path.realpath(f"{stubs}/libcudart.so"), cudart / "libcudart.so")
    without_stubs["LD_LIBRARY_PATH"] = ":".join(
        [str(cudart)] + [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p and p != stubs])
    for kind in ("conv", "attention"):
        cache = str(folder / f"{kind}.cache")
        print("RESULT cold     ", json.dumps(fresh([kind, "", cache, "1"], None)))
        print("RESULT warm     ", json.dumps(fresh([kind, cache, str(folder / f"{kind}.2.cache"), "1"], None)))
        nostub = str(folder / f"{kind}.nostub.cache")
        print("RESULT nostub-1 ", json.dumps(fresh([kind, "", nostub, "0"], without_stubs)))
        print("RESULT nostub-2 ", json.dumps(fresh([kind, nostub, "", "0"], without_stubs)))


def variants() -> None:
    """One line per variant: does a cache it writes read back in the same process?"""
    import tensorrt as trt

    def read_back(config, blob, logger) -> list:
        before = len(logger.errors)
        config.create_timing_cache(blob)
        return logger.errors[before:]

    logger = logger_with_errors(trt)
    builder = trt.Builder(logger)
    config = builder.create_builder_config()
    empty = bytes(config.create_timing_cache(b"").serialize())
    print("VARIANT", json.dumps({"variant": "empty, no build", "bytes": len(empty),
                                 "read_errors": read_back(config, empty, logger)}), flush=True)
    for name, level, dynamic_shapes in (("preview FASTER_DYNAMIC_SHAPES_0805 off", 3, False),
                                        ("optimisation level 0", 0, True)):
        logger = logger_with_errors(trt)
        builder = trt.Builder(logger)
        net = network(trt, builder, "conv")
        config = builder.create_builder_config()
        config.set_flag(trt.BuilderFlag.FP16)
        config.builder_optimization_level = level
        if not dynamic_shapes and hasattr(trt, "PreviewFeature"):
            config.set_preview_feature(trt.PreviewFeature.FASTER_DYNAMIC_SHAPES_0805, False)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
        built = builder.build_serialized_network(net, config) is not None
        blob = bytes(config.get_timing_cache().serialize())
        print("VARIANT", json.dumps({"variant": name, "built": built, "bytes": len(blob),
                                     "read_errors": read_back(config, blob, logger)}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "--variants":
        variants()
    elif sys.argv[1] == "--child":
        kind, cache_in, cache_out, plugins = sys.argv[2:6]
        print(json.dumps(build(kind, cache_in or None, cache_out or None, plugins == "1")))
    else:
        main(sys.argv[1])
