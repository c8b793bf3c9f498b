"""Precision debugging: where an int8 or fp16 graph departs from fp32, and which layers to keep in
higher precision so that the cell passes.

Two tools, after Polygraphy's, simulated on ONNX Runtime on the CPU so that they need no engine
builds:
- the layer comparison (`polygraphy run --onnx-outputs mark all`): the cell's graph and the fp32
  (patched) graph run with every tensor both have marked as an output; per tensor the rel. L2 and
  max-abs against fp32, in topological order, and the first layers past the cell's rel_l2 gate;
- the fallback search (`polygraphy debug precision`): each quantised node (int8) or diverging node
  (fp16) alone in float, scored by the cell's own validation gates against PyTorch's outputs, then
  nodes added in that order until the simulated cell passes with a margin.

Intermediate errors alone rank int8 layers badly: on MobileNetV2 the error grows most at the late
projection convolutions, while the culprit is the first depthwise convolution, whose error every
later layer carries. The search measures what the gates see instead.

The fallback is written in the form `models.<model>.keep_precision` of the config takes (int8:
`fp16`, no Q/DQ; fp16: `fp32`), with the lists the model has already, so that the file can be
layered over the run's config files as it is.
"""
from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import TrtflowError
from .validate import GATES, compare

log = logging.getLogger(__name__)

def default_settings() -> Dict[str, Any]:
    """What the search may do, where the config says nothing else: the schema's defaults of the
    debug_precision block (num_samples, max_nodes, margin, report_layers, fp16_candidates)."""
    from .config import load_schema

    block = load_schema()["properties"]["debug_precision"]["properties"]
    return {key: spec["default"] for key, spec in block.items()}


# keep_precision key a cell's fallback goes under: int8 layers left out of int8, fp16 layers kept
# in fp32 (config/schema.yaml, definitions.keep_precision)
FALLBACK_KEY = {"int8": "fp16", "fp16": "fp32"}
# ONNX Runtime's quantiser names a quantised weight `<weight>_quantized`
QUANTIZED_SUFFIX = "_quantized"
# a gate that allows nothing (top-1 agreement 1.0) is scored against this allowance, so that one
# disagreement counts a lot without being infinite (rankings need finite numbers)
TINY_ALLOWANCE = 1e-3
# a gate error beyond this (NaN/Inf outputs) counts as this, to keep sums comparable
ERROR_CAP = 1e6


# --- running graphs as the cell's engine does ----------------------------------------------------

@dataclass(frozen=True)
class Runtime:
    """How a graph is run on ONNX Runtime (CPU) to stand in for the cell's engine.

    TensorRT cells run unoptimised (ORT_DISABLE_ALL): Q/DQ pairs then round exactly as int8 does
    and no fusion hides a tensor. ONNX Runtime cells run with the engine's own session options
    (graph_optimization_level, disabled_optimizers), through the runner's helper."""

    backend: str
    engine_options: Mapping[str, Any] = field(default_factory=dict)
    threads: int = 0

    def session(self, model, exact: bool = False):
        """An InferenceSession of `model` (ModelProto). exact: unoptimised whatever the backend
        (the fp32 reference)."""
        import onnxruntime as ort

        from .nms import has_plugins, onnxruntime_runnable
        from .runners.onnxruntime import session_options, disabled_optimizers

        if has_plugins(model):  # a TensorRT graph's plugin nodes, as the standard ops they are
            model = onnxruntime_runnable(model)
        options = session_options(self.threads,
                                   self.engine_options.get("graph_optimization_level", "basic"))
        if exact or self.backend != "onnxruntime":
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return ort.InferenceSession(model.SerializeToString(), options,
                                    providers=["CPUExecutionProvider"],
                                    disabled_optimizers=disabled_optimizers(self.engine_options))


class _SessionRunner:
    """An InferenceSession behind the runner interface infer_in_chunks calls."""

    def __init__(self, session) -> None:
        self.session = session
        self.names = [o.name for o in session.get_outputs()]

    def infer(self, feed: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return dict(zip(self.names, self.session.run(None, dict(feed))))


def static_batch(model) -> Optional[int]:
    """The fixed batch of a graph's first input (a static-batch detector), None when dynamic."""
    from .precision import graph_inputs

    specs = graph_inputs(model.graph)
    size = specs[0].shape[0] if specs and specs[0].shape else -1
    return size if size > 0 else None


def run_graph(session, model, inputs: Mapping[str, np.ndarray],
              batch: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Every output of `session` over `inputs`, `batch` samples at a time (default: the graph's
    static batch, else all at once); int64 inputs narrowed where the graph takes int32."""
    from .precision import graph_inputs
    from .runners.base import adapt_feed, infer_in_chunks

    feed = adapt_feed(inputs, graph_inputs(model.graph), "debug_precision")
    fixed = static_batch(model)
    return infer_in_chunks(_SessionRunner(session), feed, fixed or batch, fixed or 1)


# --- layer comparison (polygraphy run --onnx-outputs mark all) -----------------------------------

@dataclass
class LayerError:
    """One tensor of the cell's graph against fp32: the node that makes it, in topological order."""

    index: int
    node: str
    op_type: str
    tensor: str
    rel_l2: float
    max_abs: float
    # rel. L2 this node adds to the worst of its float inputs: large where a layer itself loses
    # precision, rather than carrying its inputs' error on
    increase: float


def with_outputs(model, names: Sequence[str]):
    """A copy of `model` with `names` added as graph outputs (untyped: ONNX Runtime infers the
    type, and refuses an output declared UNDEFINED)."""
    import onnx

    marked = onnx.ModelProto()
    marked.CopyFrom(model)
    present = {o.name for o in marked.graph.output}
    marked.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name)
                               for name in names if name not in present)
    return marked


def dequantized_views(model) -> Dict[str, str]:
    """Tensor -> the output of the QuantizeLinear -> DequantizeLinear pair that rounds it, where
    one does: what the next layers read. ONNX Runtime's quantiser also drops a Relu/Clip after a
    Conv and lets the pair's range clip instead, so there only the pair's output is the layer's
    value."""
    dequantized = {node.input[0]: node.output[0] for node in model.graph.node
                   if node.op_type == "DequantizeLinear"}
    return {node.input[0]: dequantized[node.output[0]] for node in model.graph.node
            if node.op_type == "QuantizeLinear" and node.output[0] in dequantized}


def shared_tensors(reference, cell) -> List[Tuple[int, str, str, str, str]]:
    """(index, node, op type, tensor, the cell's tensor for it) of each output of the reference
    graph's nodes that the cell's graph also makes, in the reference's (topological) order.

    The node is the one making the tensor in the cell's graph where the reference has it too:
    where ONNX Runtime's quantiser folded a Relu into the Conv before it, the Conv makes the
    Relu's output, and the Conv is the layer. A node only the cell has (the fp16 graph's output
    Casts) is no layer a keep_precision list can name: there the reference's node stands."""
    made_by_cell = {o: node for node in cell.graph.node for o in node.output if o}
    by_name = {node.name: node for node in reference.graph.node if node.name}
    views = dequantized_views(cell)
    rows = []
    for index, node in enumerate(reference.graph.node):
        for output in node.output:
            if output and output in made_by_cell:
                layer = by_name.get(made_by_cell[output].name, node)
                rows.append((index, layer.name, layer.op_type, output, views.get(output, output)))
    return rows


class _ErrorSums:
    """Running sums of one tensor's error over samples, so that no sample is kept."""

    def __init__(self) -> None:
        self.diff_sq = 0.0
        self.ref_sq = 0.0
        self.max_abs = 0.0
        self.nonfinite = 0

    def add(self, out: np.ndarray, ref: np.ndarray) -> None:
        out64 = out.astype(np.float64).ravel()
        ref64 = ref.astype(np.float64).ravel()
        if out64.shape != ref64.shape:  # a layer whose shape differs cannot be compared
            self.nonfinite += 1
            return
        finite = np.isfinite(out64)
        self.nonfinite += int(out64.size - np.count_nonzero(finite))
        diff = np.where(finite, out64 - ref64, 0.0)
        self.diff_sq += float(diff @ diff)
        self.ref_sq += float(ref64 @ ref64)
        self.max_abs = max(self.max_abs, float(np.max(np.abs(diff), initial=0.0)))

    def rel_l2(self) -> float:
        if self.nonfinite:
            return math.inf
        return math.sqrt(self.diff_sq / self.ref_sq) if self.ref_sq > 0 else math.sqrt(self.diff_sq)


def compare_layers(reference, cell, inputs: Mapping[str, np.ndarray],
                   runtime: Runtime) -> List[LayerError]:
    """Every float tensor both graphs make, the cell's (as its consumers read it: after its Q/DQ
    pair in an int8 graph) against the fp32 graph's, over `inputs`.

    Both run one sample at a time, so memory holds one sample's tensors. The cell runs as its
    engine would (Runtime.session); for an ONNX Runtime cell a marked tensor stays unfused, so the
    layers are those of the graph, not of the optimised engine."""
    tensors = shared_tensors(reference, cell)
    reference_marked = with_outputs(reference, [t[3] for t in tensors])
    cell_marked = with_outputs(cell, [t[4] for t in tensors])
    reference_session = runtime.session(reference_marked, exact=True)
    cell_session = runtime.session(cell_marked)
    sums = {t[3]: _ErrorSums() for t in tensors}
    compared = list(tensors)
    count = next(iter(inputs.values())).shape[0]
    for index in range(count):
        sample = {k: v[index:index + 1] for k, v in inputs.items()}
        expected = run_graph(reference_session, reference_marked, sample)
        got = run_graph(cell_session, cell_marked, sample)
        # shapes, indices, int8: not a layer's values
        compared = [t for t in compared if np.issubdtype(expected[t[3]].dtype, np.floating)
                    and np.issubdtype(got[t[4]].dtype, np.floating)]
        for tensor in compared:
            sums[tensor[3]].add(got[tensor[4]], expected[tensor[3]])
    return _layer_table([t[:4] for t in compared], sums, reference)


def _layer_table(tensors: Sequence[Tuple[int, str, str, str]], sums: Mapping[str, _ErrorSums],
                 reference) -> List[LayerError]:
    inputs_of = {node.name: list(node.input) for node in reference.graph.node}
    errors: Dict[str, float] = {}
    rows = []
    for index, node, op_type, tensor in tensors:
        rel = sums[tensor].rel_l2()
        carried = max((errors[i] for i in inputs_of.get(node, ()) if i in errors), default=0.0)
        errors[tensor] = rel
        rows.append(LayerError(index, node, op_type, tensor, rel, sums[tensor].max_abs,
                               rel - carried if math.isfinite(rel) else math.inf))
    return rows


# a layer whose largest absolute error is below this has not diverged, whatever its relative
# error: as Polygraphy's comparison passes a value within atol or rtol (its default atol 1e-5).
# Tensors of numerically zero values (RT-DETR's padded attention slices, 3e-13) have rel. L2 ~1.
DIVERGENCE_ATOL = 1e-5


def first_divergent(layers: Sequence[LayerError], threshold: float,
                    count: int) -> List[LayerError]:
    """The first `count` layers (topological order) whose rel. L2 against fp32 is above
    `threshold` (or not finite) and whose error reaches DIVERGENCE_ATOL somewhere."""
    return [layer for layer in layers if not math.isfinite(layer.rel_l2) or (
        layer.rel_l2 > threshold and layer.max_abs >= DIVERGENCE_ATOL)][:count]


# --- scoring a graph by the cell's gates ---------------------------------------------------------

@dataclass(frozen=True)
class CellCheck:
    """The cell's validation (trtflow.validate.compare with its gates) on a subset of samples."""

    task: str
    tolerances: Mapping[str, float]
    precision: str
    reference: Mapping[str, np.ndarray]  # PyTorch's outputs for the samples
    sample_names: Sequence[str]
    labels: Optional[Sequence[str]] = None
    check_expected: bool = False
    detection_min_score: float = 0.3
    detection_match_fraction: float = 0.5

    def result(self, outputs: Mapping[str, np.ndarray]) -> Dict[str, Any]:
        return compare(outputs, self.reference, self.task, self.tolerances, self.sample_names,
                       self.labels, check_expected=self.check_expected,
                       detection_min_score=self.detection_min_score,
                       detection_match_fraction=self.detection_match_fraction,
                       precision=self.precision, with_nulls=False)  # graphs of one cell: the
        # validation that sent the cell here already judged its reference against the nulls


def gate_errors(result: Mapping[str, Any], tolerances: Mapping[str, float]) -> Dict[str, float]:
    """Each gate's value as a share of what it allows: 0 is a perfect match, 1 the bound, above 1
    a failure. A "max" gate (rel_l2) allows its bound; a "min" gate (cosine, agreements, IoUs,
    recall: all perfect at 1) allows 1 - bound. Keyed '<output>:<metric>'."""
    if "detections" in result:
        metric_sets: List[Tuple[str, Mapping[str, Any]]] = [("detections", result["detections"])]
    else:
        metric_sets = list((result.get("outputs") or {}).items())
    errors: Dict[str, float] = {}
    for where, metrics in metric_sets:
        for metric, (direction, key) in GATES.items():
            if key not in tolerances or metric not in metrics:
                continue
            value, bound = float(metrics[metric]), float(tolerances[key])
            distance, allowed = (value, bound) if direction == "max" else (1.0 - value, 1.0 - bound)
            error = distance / max(allowed, TINY_ALLOWANCE) if math.isfinite(value) else ERROR_CAP
            errors[f"{where}:{metric}"] = min(max(error, 0.0), ERROR_CAP)
    checked = [row for row in result.get("predictions") or [] if "expected" in row]
    if checked:  # photos of a known class: a miss the reference does not make allows nothing
        missed = sum(bool(row["reference_ok"]) and not row["engine_ok"] for row in checked)
        errors["expected_labels"] = min(missed / TINY_ALLOWANCE, ERROR_CAP)
    return errors


@dataclass
class Evaluation:
    """One graph scored by the cell's gates."""

    nodes: List[str]  # the nodes this graph keeps in higher precision (beyond the config's)
    verdict: str
    failures: List[str]
    errors: Dict[str, float]
    metrics: Dict[str, Any]
    # how far the outputs are from PyTorch's on a scale that moves with every small change, to
    # rank nodes by: top-1 agreement on 8 samples moves in steps of 1/8, where one borderline
    # sample flipping would outrank the layer that really loses the accuracy
    distance: float

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"

    def summary(self) -> Dict[str, Any]:
        return {"nodes": self.nodes, "verdict": self.verdict, "failures": self.failures,
                "distance": round(self.distance, 6),
                "gate_errors": {k: round(v, 6) for k, v in self.errors.items()},
                "metrics": self.metrics}


def output_distance(result: Mapping[str, Any], errors: Mapping[str, float]) -> float:
    """The mean rel. L2 of the outputs against PyTorch's; for detectors, whose outputs may
    reorder near-equal detections, the sum of the gate errors."""
    if "detections" in result or not result.get("outputs"):
        return float(sum(errors.values())) if errors else ERROR_CAP
    values = [float(m["rel_l2"]) for m in result["outputs"].values()]
    mean = sum(values) / len(values)
    return mean if math.isfinite(mean) else ERROR_CAP


def evaluate(model, nodes: Sequence[str], check: CellCheck, runtime: Runtime,
             inputs: Mapping[str, np.ndarray]) -> Evaluation:
    outputs = run_graph(runtime.session(model), model, inputs)
    result = check.result(outputs)
    errors = gate_errors(result, check.tolerances)
    metrics = result.get("detections") or dict(result["outputs"])
    return Evaluation(list(nodes), result["verdict"],
                      list(result["failures"]) + list(result["reference_problems"]), errors,
                      metrics, output_distance(result, errors))


@dataclass(frozen=True)
class Target:
    """When a simulated graph is good enough: it passes, and each gate error, scaled by how much
    worse the real engine was than the simulation of the same graph (`gap`), is within `margin`."""

    margin: float
    gap: Mapping[str, float] = field(default_factory=dict)

    def scaled(self, evaluation: Evaluation) -> Dict[str, float]:
        return {k: min(v * self.gap.get(k, 1.0), ERROR_CAP) for k, v in evaluation.errors.items()}

    def met(self, evaluation: Evaluation) -> bool:
        return evaluation.passed and all(v <= self.margin for v in self.scaled(evaluation).values())


def engine_gap(engine_errors: Mapping[str, float],
               simulated: Mapping[str, float]) -> Dict[str, float]:
    """Per gate, how much worse the engine was than the simulation of the same graph (at least
    1): a TensorRT engine runs the graph's float parts in fp16 and rounds in its own kernels, so
    its error can be well above the simulation's. A gate the simulation gets perfect cannot be
    scaled (1)."""
    gap = {}
    for key, engine in engine_errors.items():
        sim = simulated.get(key, 0.0)
        gap[key] = max(1.0, engine / sim) if sim > 0 and math.isfinite(engine) else 1.0
    return gap


# --- int8: float inputs for chosen nodes ---------------------------------------------------------

def float_initializers(model) -> Dict[str, np.ndarray]:
    """The fp32 graph's weights by name: what the quantiser turned into `<name>_quantized`."""
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


class Int8Variants:
    """The cell's int8 graph with chosen nodes reading float inputs: the activation a Q/DQ pair
    rounds (the QuantizeLinear's float source) and the fp32 graph's weight instead of its
    dequantised int8 copy. Other consumers of the same pairs keep them."""

    def __init__(self, int8_model, fp32_model) -> None:
        import onnx_graphsurgeon as gs

        self.source = int8_model
        self.graph = gs.import_onnx(int8_model)
        self.weights = float_initializers(fp32_model)
        self.fp32_producers = {tensor.name: node for node in gs.import_onnx(fp32_model).nodes
                               for tensor in node.outputs}

    def quantised_nodes(self, ops: Sequence[str]) -> List[str]:
        """Nodes of `ops` (what the backend runs in int8) that read a DequantizeLinear output,
        in graph order."""
        from .graph_surgery import producer

        return [node.name for node in self.graph.nodes if node.op in ops and any(
            producer(tensor, "DequantizeLinear") is not None for tensor in node.inputs)]

    def build(self, nodes: Sequence[str]):
        """The graph with `nodes` reading float inputs, as a ModelProto."""
        import onnx_graphsurgeon as gs

        graph = self.graph.copy()
        by_name = {node.name: node for node in graph.nodes}
        made: Dict[str, Any] = {}  # one float tensor per source, however many nodes read it
        for name in nodes:
            node = by_name[name]
            for index, tensor in enumerate(list(node.inputs)):
                source = self._float_input(graph, tensor, made)
                if source is not None:
                    node.inputs[index] = source
        graph.cleanup().toposort()
        exported = gs.export_onnx(graph)
        exported.ir_version = self.source.ir_version  # gs stamps onnx's newest, ORT may refuse it
        return exported

    def _float_input(self, graph, tensor, made: Dict[str, Any]):
        """The float value of a node's input that a Q/DQ pair rounds, else None."""
        value = self._float_value(graph, tensor, made)
        return None if value is tensor else value

    def _float_value(self, graph, tensor, made: Dict[str, Any]):
        """`tensor` without the rounding of the Q/DQ pairs it went through. TensorRT moves Q/DQ
        through shuffles (Flatten, Reshape, Transpose...), and its placement leaves pairs in
        front of them: a shuffle of a rounded tensor is repeated on the float one."""
        import onnx_graphsurgeon as gs

        from .graph_surgery import producer
        from .precision import QDQ_SHUFFLES

        shuffle = producer(tensor, *QDQ_SHUFFLES)
        if shuffle is not None:
            inner = self._float_value(graph, shuffle.inputs[0], made)
            if inner is shuffle.inputs[0]:
                return tensor
            return _apply_again(graph, shuffle, inner, list(shuffle.inputs[1:]), made)
        dequantize = producer(tensor, "DequantizeLinear")
        if dequantize is None:
            return tensor
        source = dequantize.inputs[0]
        quantize = producer(source, "QuantizeLinear")
        if quantize is not None:
            return self._float_value(graph, self._as_in_fp32(graph, quantize.inputs[0], made), made)
        original = source.name[:-len(QUANTIZED_SUFFIX)] \
            if source.name.endswith(QUANTIZED_SUFFIX) else ""
        if isinstance(source, gs.Constant) and original in self.weights:
            if original not in made:  # a new name: the int8 graph may still use the original one
                made[original] = gs.Constant(f"{original}_float", self.weights[original])
            return made[original]
        return tensor  # a weight the fp32 graph does not have by that name: its int8 copy stays

    def _as_in_fp32(self, graph, tensor, made: Dict[str, Any]):
        """`tensor` with the value the fp32 graph gives it. ONNX Runtime's quantiser drops a
        Relu/Clip after a Conv (the Q/DQ range clips instead) and gives its output's name to the
        Conv's: there the activation is applied again, as the fp32 graph has it."""
        import onnx_graphsurgeon as gs

        original = self.fp32_producers.get(tensor.name)
        made_by = tensor.inputs[0] if tensor.inputs else None
        if original is None or made_by is None or made_by.op == original.op:
            return tensor
        operands = []
        for index, operand in enumerate(original.inputs[1:]):
            if isinstance(operand, gs.Constant):  # Clip's bounds (a tensor of the fp32 graph)
                operands.append(gs.Constant(f"{tensor.name}_float_{index}", operand.values))
            elif not operand.name:  # an optional input left out
                operands.append(gs.Variable.empty())
            else:  # an activation with a computed operand: not one the quantiser drops
                return tensor
        return _apply_again(graph, original, tensor, operands, made)


def _apply_again(graph, original, data, operands: Sequence[Any], made: Dict[str, Any]):
    """A copy of node `original` on `data` (and `operands`), added to `graph`; its output, made
    once per variant."""
    import onnx_graphsurgeon as gs

    key = f"{original.outputs[0].name}_float"
    if key not in made:
        output = gs.Variable(key, dtype=original.outputs[0].dtype)
        graph.nodes.append(gs.Node(original.op, f"{original.name}_float", dict(original.attrs),
                                   [data] + list(operands), [output]))
        made[key] = output
    return made[key]


# --- fp16: nodes kept in fp32 --------------------------------------------------------------------

class Fp16Variants:
    """The patched graph converted to fp16 by the precision stage's own code, with the config's
    fp32 nodes and the chosen ones kept in fp32."""

    def __init__(self, patched: Path, kept: Sequence[str], workdir: Path) -> None:
        self.patched = Path(patched)
        self.kept = list(kept)
        self.workdir = Path(workdir)

    def build(self, nodes: Sequence[str]):
        from .io import load_onnx
        from .precision import to_fp16

        output = self.workdir / "fp16-variant.onnx"
        to_fp16(self.patched, output, list(dict.fromkeys(self.kept + list(nodes))))
        return load_onnx(output)


# --- the search (polygraphy debug precision) ------------------------------------------------------

# a node joins the fallback only if it brings the outputs this much closer (relative): less is
# noise of a few samples, and a node that does not help is a node run slower for nothing
MIN_GAIN = 0.005
# the search tries at most this many nodes per node it may keep: each try builds a graph
TRIES_PER_NODE = 3
# the ranking logs its progress every this many nodes
PROGRESS_EVERY = 25


@dataclass
class Candidate:
    node: str
    op_type: str
    gain: float  # how much closer to PyTorch the outputs get with this node alone in float
    evaluation: Evaluation

    def summary(self) -> Dict[str, Any]:
        return {"node": self.node, "op_type": self.op_type, "gain": round(self.gain, 6),
                "distance": round(self.evaluation.distance, 6),
                "verdict": self.evaluation.verdict,
                "gate_errors": {k: round(v, 6) for k, v in self.evaluation.errors.items()}}


Build = Callable[[Sequence[str]], Any]
Score = Callable[[Any, Sequence[str]], Evaluation]


def rank(nodes: Sequence[str], op_types: Mapping[str, str], build: Build, score: Score,
         baseline: Evaluation) -> List[Candidate]:
    """Each node alone in higher precision, the largest gain first (ties: graph order).
    Progress (done, elapsed, time left) is logged every PROGRESS_EVERY nodes: a transformer
    has hundreds of candidates, each a whole graph run over the samples."""
    candidates = []
    started = time.perf_counter()
    for done, node in enumerate(nodes, 1):
        evaluation = score(build([node]), [node])
        candidates.append(Candidate(node, op_types.get(node, ""),
                                    baseline.distance - evaluation.distance, evaluation))
        log.debug("alone in higher precision: %s: distance %.4g", node, evaluation.distance)
        if done % PROGRESS_EVERY == 0 and done < len(nodes):
            elapsed = time.perf_counter() - started
            log.info("alone in higher precision: %d of %d nodes tried, %.0f s, about %.0f s left",
                     done, len(nodes), elapsed, elapsed / done * (len(nodes) - done))
    return sorted(candidates, key=lambda candidate: -candidate.gain)  # stable: graph order


@dataclass
class Search:
    chosen: List[str]
    final: Evaluation
    steps: List[Dict[str, Any]]
    met: bool


def greedy(ranked: Sequence[Candidate], build: Build, score: Score, baseline: Evaluation,
           target: Target, max_nodes: int) -> Search:
    """Nodes in ranked order, each kept when, with those taken before it, it brings the outputs
    closer still (MIN_GAIN); stop when the target is met, `max_nodes` are taken or
    TRIES_PER_NODE * max_nodes were tried. Only nodes that helped alone are tried."""
    chosen: List[str] = []
    current = baseline
    steps: List[Dict[str, Any]] = []
    for candidate in ranked:
        if (target.met(current) or len(chosen) >= max_nodes
                or len(steps) >= TRIES_PER_NODE * max_nodes):
            break
        if candidate.gain <= MIN_GAIN * baseline.distance:
            break  # ranked: no later node helps alone either
        trial = chosen + [candidate.node]
        evaluation = score(build(trial), trial)
        better = evaluation.distance < current.distance * (1.0 - MIN_GAIN)
        steps.append({"node": candidate.node, "taken": better, "verdict": evaluation.verdict,
                      "distance": round(evaluation.distance, 6),
                      "gate_errors": {k: round(v, 6)
                                      for k, v in target.scaled(evaluation).items()}})
        log.info("fallback search: %s %s: distance %.4g (%s)", "take" if better else "skip",
                 candidate.node, evaluation.distance, _errors_text(target.scaled(evaluation)))
        if better:
            chosen, current = trial, evaluation
    return Search(chosen, current, steps, target.met(current))


def _errors_text(errors: Mapping[str, float]) -> str:
    """Gate errors for a log line: 1 is the gate's bound."""
    return ", ".join(f"{k} {v:.3g}" for k, v in errors.items()) or "no gate"


# --- one cell, end to end ------------------------------------------------------------------------

@dataclass
class CellDebug:
    """What debug_cell needs to know about the cell besides its graphs."""

    model: str
    precision: str
    backend: str
    check: CellCheck
    runtime: Runtime
    keep_precision: Mapping[str, Any]  # the model's keep_precision lists now
    settings: Mapping[str, Any]
    int8_ops: Sequence[str] = ()
    engine_errors: Mapping[str, float] = field(default_factory=dict)


def divergence_threshold(precision: str, tolerances: Mapping[str, float]) -> float:
    """A layer has diverged past the cell's rel_l2 gate; a cell without one (detection, int8
    segmentation) uses the built-in generic gate of its precision."""
    from .config import builtin_tolerances

    if "rel_l2" in tolerances:
        return float(tolerances["rel_l2"])
    return float(builtin_tolerances()["generic"][precision]["rel_l2"])


StageBuild = Callable[[Sequence[str], Path], Any]


def debug_cell(cell: CellDebug, patched: Path, graph: Path, inputs: Mapping[str, np.ndarray],
               stage_build: Optional[StageBuild] = None) -> Dict[str, Any]:
    """The layer table, the sensitivity ranking, the chosen fallback and the simulated metrics
    before and after, as one JSON-able report.

    The ranking tries every candidate alone in a quickly made variant of the cell's graph.
    `stage_build(nodes, workdir)`, where given, makes the cell's graph with `nodes` added to its
    keep_precision by the precision stage's own code (a ModelProto): the search then adds nodes
    by what the cell will really get, not by the variants alone."""
    from .io import load_onnx

    if cell.precision not in FALLBACK_KEY:
        raise TrtflowError(f"debug_precision takes int8 and fp16 cells, not {cell.precision}",
                           model=cell.model, fix="ask for an int8 or fp16 cell")
    fp32_model, cell_model = load_onnx(patched), load_onnx(graph)
    threshold = divergence_threshold(cell.precision, cell.check.tolerances)
    layers = compare_layers(fp32_model, cell_model, inputs, cell.runtime)
    divergent = first_divergent(layers, threshold, int(cell.settings["report_layers"]))
    _log_layers(cell, layers, divergent, threshold)

    def score(model, nodes: Sequence[str]) -> Evaluation:
        return evaluate(model, nodes, cell.check, cell.runtime, inputs)

    baseline = score(cell_model, [])
    target = Target(float(cell.settings["margin"]), engine_gap(cell.engine_errors, baseline.errors))
    report: Dict[str, Any] = {
        "model": cell.model, "precision": cell.precision, "backend": cell.backend,
        "samples": list(cell.check.sample_names), "tolerances": dict(cell.check.tolerances),
        "settings": dict(cell.settings), "divergence_threshold": threshold,
        "first_divergent": [asdict(layer) for layer in divergent],
        "layers": [asdict(layer) for layer in layers],
        "engine_gate_errors": dict(cell.engine_errors), "engine_gap": dict(target.gap),
        "search_graphs": "precision stage" if stage_build else "variants",
        "baseline": baseline.summary()}
    if baseline.verdict == "vacuous":
        log.warning("%s %s: the reference proves nothing (%s): no fallback can make this cell "
                    "pass", cell.model, cell.precision, "; ".join(baseline.failures))
        return {**report, "status": "vacuous", "candidates": [], "chosen": [], "steps": [],
                "final": baseline.summary()}
    ranked: List[Candidate] = []
    search = Search([], baseline, [], target.met(baseline))
    if not search.met:
        with tempfile.TemporaryDirectory(prefix="trtflow-debug-") as scratch:
            variants, candidates = _variants(cell, fp32_model, cell_model, patched, layers,
                                             threshold, Path(scratch))
            log.info("%s %s: trying %d nodes alone in higher precision", cell.model,
                     cell.precision, len(candidates))
            op_types = {n.name: n.op_type for n in fp32_model.graph.node}
            ranked = rank(candidates, op_types, variants.build, score, baseline)
            build = variants.build if stage_build is None else (
                lambda nodes: stage_build(nodes, Path(scratch)))
            search = greedy(ranked, build, score, baseline, target, int(cell.settings["max_nodes"]))
    status = ("passes_already" if not search.chosen and search.met else
              "fallback_found" if search.met else "not_found")
    report.update({"status": status, "candidates": [c.summary() for c in ranked],
                   "chosen": search.chosen, "steps": search.steps, "final": search.final.summary()})
    _log_outcome(cell, report, target, baseline, search)
    return report


def _variants(cell: CellDebug, fp32_model, cell_model, patched: Path,
              layers: Sequence[LayerError], threshold: float,
              scratch: Path) -> Tuple[Any, List[str]]:
    """The variant builder of the cell's precision and the nodes to try: int8, every node the
    backend runs in int8 (it reads a Q/DQ pair); fp16, the first nodes past the threshold, then
    those that add the most error themselves."""
    from .precision import kept_nodes

    if cell.precision == "int8":
        variants = Int8Variants(cell_model, fp32_model)
        layers_of_fp32 = {node.name for node in fp32_model.graph.node}  # what a list can name
        return variants, [n for n in variants.quantised_nodes(cell.int8_ops) if n in layers_of_fp32]
    kept = kept_nodes(fp32_model.graph, cell.keep_precision.get("fp32"), cell.model, patched)
    limit = int(cell.settings["fp16_candidates"])
    diverging = [layer.node for layer in first_divergent(layers, threshold, limit)]
    adding = [layer.node for layer in sorted(layers, key=lambda layer: -layer.increase)
              if layer.increase > 0]
    nodes = [node for node in dict.fromkeys(diverging + adding) if node not in kept][:limit]
    return Fp16Variants(patched, kept, scratch), nodes


def _log_layers(cell: CellDebug, layers: Sequence[LayerError], divergent: Sequence[LayerError],
                threshold: float) -> None:
    where = f"{cell.model} {cell.precision}"
    log.info("%s: %d layers compared with fp32 on %d samples", where, len(layers),
             len(cell.check.sample_names))
    if not divergent:
        log.info("%s: no layer's rel. L2 against fp32 is above %g", where, threshold)
    for layer in divergent:
        log.info("%s: layer diverges: %s (%s) rel. L2 %.4g, max-abs %.4g (above %g)", where,
                 layer.node, layer.op_type, layer.rel_l2, layer.max_abs, threshold)


def _log_outcome(cell: CellDebug, report: Mapping[str, Any], target: Target, baseline: Evaluation,
                 search: Search) -> None:
    where = f"{cell.model} {cell.precision}"
    named = report["candidates"][:int(cell.settings["report_layers"])]
    for position, candidate in enumerate(named):
        log.info("%s: most sensitive #%d: %s (%s): alone in higher precision, the outputs' "
                 "distance to PyTorch drops by %.4g", where, position + 1, candidate["node"],
                 candidate["op_type"], candidate["gain"])
    log.info("%s: simulated now: %s (gate errors, 1 = the bound: %s)", where, baseline.verdict,
             _errors_text(target.scaled(baseline)))
    if report["status"] == "passes_already":
        log.info("%s: the simulated cell passes with margin %g: no fallback to add", where,
                 target.margin)
        return
    log.info("%s: simulated with %s kept in %s: %s (%s)", where, search.chosen or "nothing",
             FALLBACK_KEY[cell.precision], search.final.verdict,
             _errors_text(target.scaled(search.final)))
    if not search.met:
        log.warning("%s: no fallback of at most %d nodes meets every gate with margin %g in the "
                    "simulation; the list has the nodes that helped", where,
                    int(cell.settings["max_nodes"]), target.margin)


# --- the overlay ---------------------------------------------------------------------------------

def applied_keep_precision(keep_precision: Mapping[str, Any], precision: str,
                           chosen: Sequence[str]) -> Dict[str, Any]:
    """The model's keep_precision with the chosen nodes added under the cell's fallback key."""
    key = FALLBACK_KEY[precision]
    current = keep_precision.get(key) or {}
    applied = {k: dict(v) for k, v in keep_precision.items() if v}
    applied[key] = {"nodes": list(dict.fromkeys(list(current.get("nodes") or []) + list(chosen))),
                    "op_types": list(current.get("op_types") or [])}
    return applied


def fallback_overlay(model: str, precision: str, keep_precision: Mapping[str, Any],
                     chosen: Sequence[str], backend: str) -> Dict[str, Any]:
    """`models.<model>.keep_precision.<backend>.<key>` with the model's current list for this
    backend and the chosen nodes: the search ran on this backend's graph, and Snakemake merges
    config files key by key but replaces lists, so the file carries the whole list (and only
    the key this cell changes)."""
    key = FALLBACK_KEY[precision]
    applied = applied_keep_precision(keep_precision, precision, chosen)
    return {"models": {model: {"keep_precision": {backend: {key: applied[key]}}}}}


def write_overlay(path: Path, overlay: Mapping[str, Any], header: Sequence[str]) -> None:
    """The overlay as YAML with `header` as comments, written atomically."""
    import yaml

    from .io import atomic_path

    text = "".join(f"# {line}\n" for line in header)
    text += yaml.safe_dump(dict(overlay), sort_keys=False, default_flow_style=False, width=1000)
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def engine_gate_errors(validations: Sequence[Mapping[str, Any]],
                       tolerances: Mapping[str, float]) -> Dict[str, float]:
    """The worst gate errors of the cell's engines (one validation JSON per batch profile)."""
    worst: Dict[str, float] = {}
    for validation in validations:
        for key, value in gate_errors(validation, tolerances).items():
            worst[key] = max(worst.get(key, 0.0), value)
    return worst


def precision_stage_graph(model: str, precision: str, backend: str, patched: Path,
                          keep_precision: Mapping[str, Any], workdir: Path,
                          calibration: Optional[Mapping[str, np.ndarray]] = None,
                          calibration_options: Optional[Mapping[str, Any]] = None,
                          int8_form: str = "u8s8"):
    """The cell's graph as the precision stage makes it with `keep_precision`: what the cell gets
    once the fallback is applied (int8 reuses the cached calibration ranges)."""
    from .io import load_onnx
    from .precision import make_precision

    output = Path(workdir) / f"{precision}-applied.onnx"
    with _quiet_root_logger():
        make_precision(model, precision, Path(patched), output,
                       Path(workdir) / f"{precision}-applied.json", backend,
                       calibration=calibration, calibration_options=calibration_options,
                       int8_form=int8_form, keep_precision=keep_precision)
    return load_onnx(output)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """Only errors from the precision stage while the search makes its graphs: it logs each one,
    and ONNX Runtime's quantiser repeats its advice to pre-process the graph for each (on the
    root logger)."""
    root = logging.getLogger()
    saved = root.level
    root.setLevel(logging.ERROR)  # loggers without a level of their own (trtflow's) follow it
    try:
        yield
    finally:
        root.setLevel(saved)
