"""TensorRT backend: engine build and runner for TensorRT 8.5/8.6, 10.x and 11.x.

Imports only tensorrt, numpy and the standard library (plus trtflow's pure-Python modules), so it
runs in the Python that has TensorRT (Jetson, NGC containers, a separate venv). Version checks
(see notes/trt_api.md) where the API differs:
- network: explicit batch flag before 10; strongly typed from 10 (always on, flag ignored, in 11);
- precision: on 8.x the precision ONNX is built weakly typed with the matching builder flag
  (FP16; INT8 for Q/DQ graphs); from 10 the graph's own types decide (no flags, removed in 11);
- parser errors name the node: node_name()/node_operator() from 10, the precision report's node
  list on 8.x;
- build progress through IProgressMonitor from 10.
The engine inspector's layer table is trtflow.runners.tensorrt_inspect, the shared timing cache
trtflow.runners.tensorrt_cache.
"""
from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from .. import cuda
from ..errors import TrtflowError
from ..io import atomic_path, read_json, write_json
from .base import Runner, TensorSpec, TimingModeUnavailable, check_feed, timing_loop
from .tensorrt_cache import attach_timing_cache, detach_timing_cache, save_timing_cache
from .tensorrt_precision import constrain_fp16_layers, constrain_fp32_layers, precision_flags
from .tensorrt_inspect import check_layer_precisions, inspect_engine, layer_precisions, layer_table
from .tensorrt_profile import annotate, profile_runs
from .tensorrt_speed import place_for_speed

log = logging.getLogger(__name__)

def trt_module():
    import tensorrt

    return tensorrt


def major_version(trt=None) -> int:
    trt = trt or trt_module()
    return int(trt.__version__.split(".")[0])


def capturing_logger(trt, min_severity=None):
    """A trt.ILogger that keeps errors (in .errors, for our messages) and forwards the rest to
    logging. The class is made per call because its base class comes from the tensorrt module."""

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: List[str] = []
            self.min_severity = min_severity or trt.ILogger.WARNING
            # while a build runs, TensorRT's ERROR lines are held back (logged at info level):
            # TensorRT 8.6 reports a timing cache it will not use as two ERRORs, and the build is
            # fine; they are shown as errors only if the build fails (build_engine)
            self.hold_errors = False

        def log(self, severity, msg) -> None:
            if severity <= trt.ILogger.ERROR:
                self.errors.append(msg)
                if self.hold_errors:
                    log.info("TensorRT (error held back, shown if the build fails): %s", msg)
                    return
            if severity <= self.min_severity:
                level = logging.ERROR if severity <= trt.ILogger.ERROR else (
                    logging.WARNING if severity == trt.ILogger.WARNING else logging.INFO)
                log.log(level, "TensorRT: %s", msg)

    return CapturingLogger()


def load_plugins(trt, logger) -> None:
    """Register TensorRT's bundled plugins: the ONNX parser maps some ops to them (RoiAlign ->
    ROIAlign_TRT on 8.6, EfficientNMS_TRT nodes), and engines using them need them to load."""
    trt.init_libnvinfer_plugins(logger, "")


def runtime_identity() -> Dict[str, str]:
    """TensorRT version and the GPU this process will build for / run on."""
    trt = trt_module()
    return {"tensorrt": trt.__version__, "gpu": cuda.device_name(0),
            "compute_capability": cuda.compute_capability(0)}


def network_flags(trt) -> Tuple[int, bool]:
    """(create_network flags, strongly typed?) for this TensorRT version, built from names."""
    flags_enum = trt.NetworkDefinitionCreationFlag
    major = major_version(trt)
    flags = 0
    if major < 10 and hasattr(flags_enum, "EXPLICIT_BATCH"):
        flags |= 1 << int(flags_enum.EXPLICIT_BATCH)
    strongly_typed = major >= 10
    if major == 10 and hasattr(flags_enum, "STRONGLY_TYPED"):
        flags |= 1 << int(flags_enum.STRONGLY_TYPED)
    return flags, strongly_typed


# TensorRT 8.6 loads cuBLAS and cuDNN for a network with a plugin layer; an install without
# them (stub libraries, a trimmed container) fails here, not at the parser
MISSING_LIBRARY = re.compile(r"SymbolAddress for (cublas|cudnn)\w* could not be loaded", re.I)


def build_failure_fix(errors: List[str]) -> str:
    """What to try for a failed build, from its error lines."""
    if any(MISSING_LIBRARY.search(message) for message in errors):
        return ("this TensorRT cannot load cuBLAS/cuDNN, which it needs for plugin layers: install "
                "them for it, or set patch.efficient_nms: never (the patch pass that adds a plugin)")
    return "see the log; try a larger tensorrt.workspace_mib or another opset"


def parser_errors(parser, onnx_path: Path) -> List[str]:
    """Each parser error with the failing node's name and op (10+: from the error; 8.x: from the
    node list the precision stage wrote beside the ONNX)."""
    nodes: List[str] = []
    report = onnx_path.with_suffix(".json")
    if report.exists():
        nodes = read_json(report).get("node_index", [])
    messages = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        if hasattr(error, "node_name"):
            where = f"node '{error.node_name()}' ({error.node_operator()})"
        elif 0 <= error.node() < len(nodes):
            where = f"node {nodes[error.node()]}"
        else:
            where = f"node #{error.node()}"
        messages.append(f"{where}: {error.desc()}")
    return messages


def tactic_source_mask(trt, names: Optional[List[str]]) -> Optional[int]:
    """Bit mask of the named tactic sources (None: TensorRT's default). Names this TensorRT does
    not have (cuBLAS/cuDNN sources were removed in 10/11) are skipped with a warning."""
    if names is None:
        return None
    mask = 0
    for name in names:
        source = getattr(trt.TacticSource, name, None)
        if source is None:
            log.warning("TensorRT %s has no tactic source %s: ignored", trt.__version__, name)
            continue
        mask |= 1 << int(source)
    return mask


def progress_monitor(trt):
    """Log build phases (TensorRT 10+); None where the API does not exist."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class _Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps) -> None:
            log.info("build phase: %s (%d steps)", phase_name, num_steps)

        def phase_finish(self, phase_name) -> None:
            log.info("build phase done: %s", phase_name)

        def step_complete(self, phase_name, step) -> bool:
            return True

    return _Monitor()


def profile_shapes(network, batch_profile: Mapping[str, int], model: str) -> Dict[str, List[Tuple[int, ...]]]:
    """min/opt/max shapes per dynamic-batch network input: the profile on axis 0, the rest fixed.
    A static-batch input (a model exported with static_batch) needs no profile, but must agree."""
    shapes = {}
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        dims = list(tensor.shape)
        if any(d < 0 for d in dims[1:]):
            raise TrtflowError(f"input '{tensor.name}' has dynamic non-batch axes {dims}",
                               model=model, fix="give fixed input shapes in the config")
        batches = [int(batch_profile[k]) for k in ("min", "opt", "max")]
        if dims and dims[0] >= 0:
            if any(b != dims[0] for b in batches):
                raise TrtflowError(
                    f"input '{tensor.name}' has a static batch of {dims[0]} but the batch profile "
                    f"is {dict(batch_profile)}", model=model,
                    fix=f"run this model only in a profile with min = opt = max = {dims[0]} "
                        "(models.<name>.batch_profiles)")
            continue
        shapes[tensor.name] = [tuple([b] + dims[1:]) for b in batches]
    return shapes


def io_specs(trt, engine) -> Tuple[List[TensorSpec], List[TensorSpec]]:
    inputs, outputs = [], []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        spec = TensorSpec(name, np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name,
                          [int(d) for d in engine.get_tensor_shape(name)])
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(spec)
    return inputs, outputs


def build_engine(onnx_path: Path, engine_path: Path, sidecar_path: Path, *, model: str,
                 precision: str, batch_profile: Mapping[str, int], profile_name: str,
                 options: Mapping[str, Any]) -> Dict[str, Any]:
    """Parse the precision ONNX, build one engine for one batch profile, check its layers run in
    the precision asked for, and write it with a sidecar JSON."""
    trt = trt_module()
    identity = runtime_identity()
    logger = capturing_logger(trt)
    load_plugins(trt, logger)
    builder = trt.Builder(logger)
    flags, strongly_typed = network_flags(trt)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    log.info("parsing %s with TensorRT %s", onnx_path, trt.__version__)
    if not parser.parse(Path(onnx_path).read_bytes(), str(onnx_path)):
        raise TrtflowError("TensorRT cannot parse the ONNX graph:\n  " +
                           "\n  ".join(parser_errors(parser, Path(onnx_path))),
                           model=model, path=str(onnx_path),
                           fix="add a patch pass for the failing op, or change the export opset")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE,
                                 int(options.get("workspace_mib", 4096)) << 20)
    if hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = int(options.get("optimization_level", 3))
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    flag_names = precision_flags(trt, precision, strongly_typed)
    for name in flag_names:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if not options.get("tf32", False) and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default: fp32 would not mean fp32
    sources = tactic_source_mask(trt, options.get("tactic_sources"))
    if sources is not None:
        config.set_tactic_sources(sources)
    monitor = progress_monitor(trt)
    if monitor is not None:
        config.progress_monitor = monitor
    fp32_layers = constrain_fp32_layers(trt, network, config, strongly_typed)
    fp16_layers = (constrain_fp16_layers(trt, network, config, strongly_typed)
                   if precision == "int8" and options.get("int8_float") == "fp16_layers" else 0)
    shapes = profile_shapes(network, batch_profile, model)
    if shapes:  # a network whose inputs are all static takes no optimisation profile
        opt_profile = builder.create_optimization_profile()
        for name, (low, opt, high) in shapes.items():
            opt_profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(opt_profile)
    cache_path = Path(options["timing_cache_path"]) if options.get("timing_cache_path") else None
    logger.hold_errors = True
    cache = attach_timing_cache(config, cache_path, logger)
    log.info("building %s %s engine for batch %s (flags %s, strongly typed %s, timing cache %s)",
             model, precision, dict(batch_profile), flag_names, strongly_typed, cache.state)
    start = time.perf_counter()
    serialized, errors = build_serialized(builder, network, config, logger)
    if serialized is None and cache.state == "warm":
        # a cache TensorRT took can still break the build (8.6.0's Myelin cache code): once more
        # without it, said in the log and the sidecar
        cache.retried_without = " | ".join(errors[-3:])
        log.warning("the %s %s build failed with the timing cache %s (%s); retrying once without "
                    "it", model, precision, cache_path, cache.retried_without)
        detach_timing_cache(config, cache)
        serialized, errors = build_serialized(builder, network, config, logger)
    seconds = time.perf_counter() - start
    if serialized is None:
        for message in errors:
            log.error("TensorRT: %s", message)
        raise TrtflowError("TensorRT engine build failed: " + " | ".join(errors[-5:]),
                           model=model, path=str(onnx_path), fix=build_failure_fix(errors))
    if cache_path is not None and cache.state != "dropped":  # a dropped cache is not merged back
        save_timing_cache(config, cache_path, logger, cache)
    logger.hold_errors = False

    def engine_layers(blob) -> List[Dict[str, Any]]:
        return layer_table(inspect_engine(trt, trt.Runtime(logger).deserialize_cuda_engine(blob),
                                          shapes))

    layers = engine_layers(serialized)
    speed_report = None
    if options.get("int8_speed") and precision == "int8":
        def rebuild() -> Tuple[Any, List[Dict[str, Any]]]:
            blob, _ = build_serialized(builder, network, config, logger)
            return blob, (engine_layers(blob) if blob is not None else [])

        first_build_seconds = round(time.perf_counter() - start, 3)
        serialized, layers, speed_report = place_for_speed(
            trt, network, rebuild, serialized, layers, options["int8_speed"],
            speed_feed(options["int8_speed"]["reference"], int(batch_profile["opt"])),
            TensorRTRunner)
        speed_report["first_build_seconds"] = first_build_seconds
        seconds = time.perf_counter() - start
    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
    counts = layer_precisions(layers)
    precision_check = check_layer_precisions(precision, counts, model, Path(onnx_path))
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    inputs, outputs = io_specs(trt, engine)
    sidecar = {
        "backend": "tensorrt", "version": trt.__version__, "device": "cuda",
        "device_name": identity["gpu"], "compute_capability": identity["compute_capability"],
        "model": model, "precision": precision, "batch_profile": profile_name,
        "profile": dict(batch_profile), "build_seconds": round(seconds, 3),
        "strongly_typed": strongly_typed, "builder_flags": flag_names, "fp32_layers": fp32_layers,
        "int8_float": options.get("int8_float") if precision == "int8" else None,
        "fp16_layers": fp16_layers,
        "tf32": bool(options.get("tf32", False)),
        "tactic_sources": options.get("tactic_sources"),
        "timing_cache": cache.to_dict(),
        "speed_placement": speed_report,
        "layer_precisions": counts, "precision_check": precision_check, "layers": layers,
        "source_onnx": str(onnx_path),
        "inputs": [s.to_dict() for s in inputs], "outputs": [s.to_dict() for s in outputs],
    }
    write_json(sidecar_path, sidecar)
    log.info("built %s in %.1f s (%s timing cache, %s); layer precisions %s", engine_path,
             seconds, cache.state, cache.saved or "not saved", counts)
    return sidecar


def speed_feed(reference: str, batch: int) -> Dict[str, np.ndarray]:
    """The reference inputs at `batch` (repeated to fill), for the placement's timings."""
    from ..data import batch_of
    from ..io import load_npz, reference_part

    return batch_of(reference_part(load_npz(Path(reference)), "input"), batch)


def build_serialized(builder, network, config, logger) -> Tuple[Any, List[str]]:
    """build_serialized_network, and the errors TensorRT logged during it."""
    errors_before = len(logger.errors)
    serialized = builder.build_serialized_network(network, config)
    return serialized, logger.errors[errors_before:]


def check_compatible(sidecar: Mapping[str, Any], engine_path: Path) -> None:
    """Refuse, with a clear message, an engine built by another TensorRT or for another GPU
    (deserialising it would fail or, worse, crash)."""
    here = runtime_identity()
    built = (sidecar.get("version"), sidecar.get("compute_capability"))
    if built != (here["tensorrt"], here["compute_capability"]):
        raise TrtflowError(
            f"engine was built with TensorRT {built[0]} for compute capability {built[1]} "
            f"({sidecar.get('device_name')}); this is TensorRT {here['tensorrt']} on "
            f"{here['gpu']} (compute capability {here['compute_capability']})",
            path=str(engine_path),
            fix="rerun snakemake: engine paths carry the TensorRT version and GPU, so it builds "
                "a new engine for this machine")


class TensorRTRunner(Runner):
    """Runs one engine (one optimisation profile) with execute_async_v3 on its own stream."""

    name = "tensorrt"

    def __init__(self, engine_path: Path, sidecar_path: Optional[Path] = None,
                 cuda_graph: bool = False) -> None:
        self.engine_path = Path(engine_path)
        self.sidecar = read_json(sidecar_path) if sidecar_path else None
        self.cuda_graph = cuda_graph
        self.buffers: Dict[str, cuda.DeviceBuffer] = {}

    def load(self) -> "TensorRTRunner":
        trt = trt_module()
        if self.sidecar is not None:
            check_compatible(self.sidecar, self.engine_path)
        self.logger = capturing_logger(trt)
        load_plugins(trt, self.logger)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise TrtflowError("TensorRT cannot load the engine: " + " | ".join(self.logger.errors),
                               path=str(self.engine_path),
                               fix="delete it and rerun snakemake to rebuild it for this machine")
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        self.context.set_optimization_profile_async(0, self.stream.ptr)
        self.inputs, self.outputs = io_specs(trt, self.engine)
        first = self.inputs[0].name
        static_batch = int(self.engine.get_tensor_shape(first)[0])
        if static_batch >= 0:
            self.batch_range = (static_batch, static_batch)
        else:
            low, _, high = self.engine.get_tensor_profile_shape(first, 0)
            self.batch_range = (int(low[0]), int(high[0]))
        return self

    def _stage(self, feed: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Check and upload the inputs, bind every tensor; return host arrays for the outputs."""
        check_feed(feed, self.inputs, f"engine {self.engine_path.name}", self.batch_range)
        for spec in self.inputs:
            array = np.ascontiguousarray(feed[spec.name])
            if not self.context.set_input_shape(spec.name, tuple(array.shape)):
                raise TrtflowError(f"engine {self.engine_path.name} refuses shape "
                                   f"{list(array.shape)} for input '{spec.name}'")
            buffer = self.buffers.setdefault(spec.name, cuda.DeviceBuffer())
            buffer.copy_from(array, self.stream)
            self.context.set_tensor_address(spec.name, buffer.ptr.value)
        host = {}
        for spec in self.outputs:
            shape = tuple(self.context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise TrtflowError(
                    f"engine {self.engine_path.name}: output '{spec.name}' has a data-dependent "
                    f"shape {list(shape)}; trtflow runs engines with static output shapes",
                    fix="pad the model's variable-length outputs to a fixed count in forward() "
                        "(as trtflow.zoo's R-CNN deploy modules do)")
            host[spec.name] = np.empty(shape, dtype=np.dtype(spec.dtype))
            buffer = self.buffers.setdefault(spec.name, cuda.DeviceBuffer())
            buffer.resize(host[spec.name].nbytes)
            self.context.set_tensor_address(spec.name, buffer.ptr.value)
        return host

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.stream.ptr):
            raise TrtflowError(f"engine {self.engine_path.name}: execute_async_v3 failed: "
                               + " | ".join(self.logger.errors[-3:]))

    def infer(self, feed: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        host = self._stage(feed)
        self._execute()
        for name, array in host.items():
            self.buffers[name].copy_to(array, self.stream)
        self.stream.synchronize()
        return host

    def time_modes(self) -> List[str]:
        """CUDA-graph replay first where asked for (tensorrt.cuda_graph, trtexec's
        --useCudaGraph: no per-launch CPU overhead), eager enqueue always (recorded beside it)."""
        return ["cuda_graph", "eager"] if self.cuda_graph else ["eager"]

    def time(self, feed: Mapping[str, np.ndarray], warmup: int, iterations: int,
             max_seconds: float, mode: Optional[str] = None) -> List[float]:
        """GPU time per inference between CUDA events (inputs staged once, as in deployment
        with device-resident data), enqueued eagerly or replayed from a captured CUDA graph."""
        mode = mode or self.time_modes()[0]
        self._stage(feed)
        self._execute()  # the first run after a shape change does setup work: keep it out
        self.stream.synchronize()
        graph = self._capture_graph() if mode == "cuda_graph" else None
        launch = graph.launch if graph is not None else self._execute
        start, end = cuda.Event(), cuda.Event()

        def one() -> float:
            start.record(self.stream)
            launch()
            end.record(self.stream)
            end.synchronize()
            return end.elapsed_ms(start)

        try:
            return timing_loop(one, warmup, iterations, max_seconds)
        finally:
            start.destroy()
            end.destroy()
            if graph is not None:
                graph.destroy()

    def _capture_graph(self) -> cuda.Graph:
        """One enqueue captured as a CUDA graph; an engine whose layers cannot be captured
        (a plugin that synchronises or allocates) raises TimingModeUnavailable and still runs
        eagerly afterwards."""
        graph = cuda.Graph(self.stream)
        graph.begin()
        try:
            self._execute()
            graph.end()
        except (cuda.CudaError, TrtflowError) as exc:
            graph.abort()
            self.stream.synchronize()
            raise TimingModeUnavailable(f"engine {self.engine_path.name}: no CUDA graph could be "
                                        f"captured ({str(exc).splitlines()[0]})") from exc
        return graph

    def profile_layers(self, feed: Mapping[str, np.ndarray],
                       runs: int) -> Optional[Dict[str, Dict[str, Any]]]:
        """Per-layer times from TensorRT's IProfiler over `runs` inferences, each layer with its
        type and precision from the build's engine inspector table."""
        self._stage(feed)
        self._execute()
        self.stream.synchronize()
        times = profile_runs(trt_module(), self.context, self._execute, self.stream.synchronize,
                             runs)
        return annotate(times, (self.sidecar or {}).get("layers", []))

    def close(self) -> None:
        for buffer in self.buffers.values():
            buffer.free()
        self.buffers.clear()
        if getattr(self, "stream", None) is not None:
            self.stream.destroy()
        self.context = self.engine = None


EngineRunner = TensorRTRunner
