"""ONNX Runtime backend (CPU): the 'engine' is the model as optimised for this machine by ORT."""
from __future__ import annotations

import json
import logging
import platform
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from ..errors import TrtflowError
from ..io import atomic_path, read_artifact, read_json, write_json
from .base import Runner, TensorSpec, check_feed

log = logging.getLogger(__name__)
ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
             "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(uint8)": "uint8",
             "tensor(int8)": "int8", "tensor(bool)": "bool"}
LEVELS = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
# WeightBiasQuantization gives a float Conv/Gemm that reads a DequantizeLinear per-tensor int8
# weights of its own: it undid keep_precision (MobileNetV2's first depthwise conv, kept float
# on purpose, went back to int8 with one scale and rel. L2 0.12 -> 0.20). The precision graph
# says what is int8.
ALWAYS_DISABLED = ("WeightBiasQuantization",)


def disabled_optimizers(options: Mapping[str, Any]) -> List[str]:
    return sorted(set(options.get("disabled_optimizers") or ()) | set(ALWAYS_DISABLED))


def version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def session_options(threads: int, level: str, optimized_path: Optional[Path] = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return options


def _specs(nodes) -> List[TensorSpec]:
    return [TensorSpec(n.name, ORT_TYPES.get(n.type, n.type),
                       [d if isinstance(d, int) else -1 for d in n.shape]) for n in nodes]


def build_engine(onnx_path: Path, engine_path: Path, sidecar_path: Path, *, model: str,
                 precision: str, batch_profile: Mapping[str, int], profile_name: str,
                 options: Mapping[str, Any]) -> Dict[str, Any]:
    """Optimise the precision ONNX for this CPU and save it, with a sidecar JSON."""
    import onnxruntime as ort

    threads = int(options["intra_op_threads"])
    level = options["graph_optimization_level"]
    disabled = disabled_optimizers(options)
    start = time.perf_counter()
    with atomic_path(engine_path) as tmp:
        try:
            session = ort.InferenceSession(str(onnx_path), session_options(threads, level, tmp),
                                           providers=["CPUExecutionProvider"],
                                           disabled_optimizers=disabled)
        except Exception as exc:
            raise TrtflowError(f"ONNX Runtime cannot load the {precision} graph: {exc}",
                               model=model, path=str(onnx_path),
                               fix="check the patch/precision reports beside it") from exc
    seconds = time.perf_counter() - start
    sidecar = {
        "backend": "onnxruntime", "version": version(), "device": "cpu", "device_name": cpu_name(),
        "model": model, "precision": precision, "batch_profile": profile_name,
        "profile": dict(batch_profile), "graph_optimization_level": level,
        "disabled_optimizers": disabled,
        "build_seconds": round(seconds, 3), "source_onnx": str(onnx_path),
        "inputs": [s.to_dict() for s in _specs(session.get_inputs())],
        "outputs": [s.to_dict() for s in _specs(session.get_outputs())],
    }
    write_json(sidecar_path, sidecar)
    log.info("built %s in %.2f s", engine_path, seconds)
    return sidecar


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"

    def __init__(self, engine_path: Path, sidecar_path: Optional[Path] = None,
                 threads: int = 0) -> None:
        self.engine_path = Path(engine_path)
        self.sidecar = read_json(sidecar_path) if sidecar_path else None
        self.threads = threads
        self.session = None

    def load(self) -> "OnnxRuntimeRunner":
        import onnxruntime as ort

        if self.sidecar and self.sidecar["version"] != ort.__version__:
            raise TrtflowError(
                f"optimised model was made by ONNX Runtime {self.sidecar['version']}, this is "
                f"{ort.__version__}", path=str(self.engine_path),
                fix="rerun snakemake: engine paths carry the version, so it rebuilds")
        # Already optimised at build time; loading applies only the required transformers.
        self.session = read_artifact(self.engine_path, lambda p: ort.InferenceSession(
            str(p), session_options(self.threads, "basic"), providers=["CPUExecutionProvider"],
            disabled_optimizers=list(ALWAYS_DISABLED)),
            "optimised ONNX Runtime model")
        self.inputs = _specs(self.session.get_inputs())
        self.outputs = _specs(self.session.get_outputs())
        return self

    def infer(self, feed: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        profile = self.sidecar["profile"] if self.sidecar else None
        check_feed(feed, self.inputs, f"engine {self.engine_path.name}",
                   (profile["min"], profile["max"]) if profile else None)
        try:
            values = self.session.run(None, dict(feed))
        except Exception as exc:  # ONNX Runtime raises its own pybind types (Fail, RuntimeException...)
            raise run_failure(exc, self.engine_path,
                              self.sidecar.get("model") if self.sidecar else None) from exc
        return {spec.name: value for spec, value in zip(self.outputs, values)}


    def profile_layers(self, feed: Mapping[str, np.ndarray],
                       runs: int) -> Optional[Dict[str, Dict[str, Any]]]:
        """Per-node kernel times from ONNX Runtime's profiler over `runs` inferences, in a
        session of its own (profiling the timed session would slow its timings)."""
        import onnxruntime as ort

        with tempfile.TemporaryDirectory(prefix="trtflow-ort-profile-") as folder:
            options = session_options(self.threads, "basic")
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(folder) / "profile")
            session = ort.InferenceSession(str(self.engine_path), options,
                                           providers=["CPUExecutionProvider"],
                                           disabled_optimizers=list(ALWAYS_DISABLED))
            for _ in range(runs + 1):  # each node's first run allocates: node_times drops it
                session.run(None, dict(feed))
            events = _profile_events(session.end_profiling())
        return node_times(events, skip_first_run=True)


def _profile_events(path: str) -> List[Dict[str, Any]]:
    with open(path) as handle:
        return json.load(handle)


def node_times(events: List[Mapping[str, Any]], skip_first_run: bool) -> Dict[str, Dict[str, Any]]:
    """node name -> {"times_ms": one per run, "type": op type} from ONNX Runtime's profile
    events (Chrome trace format: one `Node` event `<node>_kernel_time` per node per run, in
    microseconds); each node's first run is left out where asked (it allocates)."""
    nodes: Dict[str, Dict[str, Any]] = {}
    for event in events:
        name = str(event.get("name", ""))
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        op_type = str((event.get("args") or {}).get("op_name", ""))
        entry = nodes.setdefault(name[:-len("_kernel_time")], {
            "times_ms": [], "type": op_type,
            "precision": "int8" if "QLinear" in op_type or "Integer" in op_type else ""})
        entry["times_ms"].append(float(event.get("dur", 0)) / 1e3)
    if skip_first_run:
        for entry in nodes.values():
            entry["times_ms"] = entry["times_ms"][1:] or entry["times_ms"]
    return nodes
# ONNX Runtime's run-time error: "... while running Reshape node. Name:'/a/Reshape_11' Status
# Message: <source path>:47 <function> <what failed>. <why>"
_FAILED_NODE = re.compile(r"while running (\w+) node\. Name:'([^']*)' Status Message: (.*)", re.S)
# what to try per op type whose run-time failure a patch pass exists for
RUN_FAILURE_FIXES = {
    "Reshape": "a shape computed from another tensor has no answer for this input (e.g. "
               "{0, -1} on a tensor with no rows): keep fold_known_dims in the model's "
               "patch.passes (it makes known dims constants), or set the model's onnxruntime: "
               "{graph_optimization_level: basic} (ReshapeFusion writes such shapes)",
    "TopK": "a computed K is 0 or above the input's size: keep guard_empty_topk in patch.passes",
}


def run_failure(exc: Exception, engine: Path, model: Optional[str]) -> TrtflowError:
    """One trtflow error for an engine that fails while running: the node and op that failed,
    ONNX Runtime's reason (without its source paths) and what to try."""
    text = " ".join(str(exc).split())
    match = _FAILED_NODE.search(text)
    if not match:
        return TrtflowError(f"ONNX Runtime failed while running {engine.name}: {text[:400]}",
                            model=model, path=str(engine),
                            fix="rerun the job to see whether it repeats; the job's log has the "
                                "inputs' shapes")
    op, node, message = match.groups()
    # keep the sentences after the C++ location ("/src/...h:47 onnxruntime::F(...) ...")
    reason = re.sub(r"^\S+:\d+ \S+\(.*?\) ", "", message).strip()
    return TrtflowError(
        f"ONNX Runtime failed at run time in {op} node '{node}' of {engine.name}: {reason[:400]}",
        model=model, path=str(engine),
        fix=RUN_FAILURE_FIXES.get(op, f"the {op} node cannot run on this input: check the "
                                      "inputs' shapes against the model's, or report the graph"))


EngineRunner = OnnxRuntimeRunner
