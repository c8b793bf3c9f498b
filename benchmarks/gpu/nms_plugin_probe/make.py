#!/usr/bin/env python3
"""The efficient_nms pass's test graph (tests/test_gpu.py) with four forms of "keep the plugin's
valid rows", and the native-NMS graph, for TensorRT 8.6's Myelin failure
(notes/trt_api.md section 14). On the GPU machine, after ../shared/gpu/setup.sh and
benchmarks/gpu/cuda_libs.sh:
    python3 benchmarks/gpu/nms_plugin_probe/make.py /tmp/nms_probe
    TRTPY_PATH=$PWD $TRT_PYTHON benchmarks/gpu/nms_plugin_probe/build.py /tmp/nms_probe
"""
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[3]), str(Path(__file__).resolve().parents[3] / "tests")]
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnx_graphsurgeon as gs  # noqa: E402
from test_patch import _batched_nms_graph, _detections, _torchvision_keep  # noqa: E402
from trtflow.patch import PatchContext, apply_passes  # noqa: E402

KEPT = 20
PASSES = ["inline_empty_guards", "fold_constants", "efficient_nms", "cleanup", "toposort",
          "int64_inputs_to_int32"]


def const(values) -> gs.Constant:
    const.count += 1
    return gs.Constant(f"probe_const_{const.count}", np.asarray(values))


const.count = 0


def ints(*values) -> gs.Constant:
    return const(np.array(values, np.int64))


def with_tail(patched, name: str, tail, out: Path) -> None:
    """`patched` with the nodes between the plugin's rows and the cut rows replaced by `tail`."""
    graph = gs.import_onnx(patched)
    (plugin,) = [n for n in graph.nodes if n.op == "EfficientNMS_ONNX_TRT"]
    rows = plugin.outputs[0]
    (cut_cast,) = [n for n in graph.nodes if n.op == "Cast" and "trtflow_fp32" in n.name
                   and n.inputs[0].inputs and n.inputs[0].inputs[0].op in ("Gather", "Slice")
                   and n.inputs[0].inputs[0].inputs[0] is rows]
    cut = gs.Variable("probe_cut", dtype=np.int32)
    cut_cast.inputs = [cut]
    index = gs.Variable("probe_box_index", dtype=np.int32)
    valid = gs.Variable("probe_valid", dtype=np.bool_)
    graph.nodes += [gs.Node("Gather", inputs=[rows, const(np.int64(2))], outputs=[index], attrs={"axis": 1}),
                    gs.Node("GreaterOrEqual", inputs=[index, const(np.int32(0))], outputs=[valid])]
    graph.nodes += tail(rows, valid, cut)
    graph.cleanup().toposort()
    onnx.save(gs.export_onnx(graph), str(out / f"{name}.onnx"))


def summed(to: int):
    def tail(rows, valid, cut):
        as_number = gs.Variable("probe_valid_n", dtype=np.float32 if to == 1 else np.int64)
        count = gs.Variable("probe_count", dtype=as_number.dtype)
        ends = gs.Variable("probe_ends", dtype=np.int64)
        return [gs.Node("Cast", inputs=[valid], outputs=[as_number], attrs={"to": to}),
                gs.Node("ReduceSum", inputs=[as_number, ints(0)], outputs=[count], attrs={"keepdims": 1}),
                gs.Node("Cast", inputs=[count], outputs=[ends], attrs={"to": 7}),
                gs.Node("Slice", inputs=[rows, ints(0), ends, ints(0)], outputs=[cut])]
    return tail


def nonzero_gather(rows, valid, cut):
    where = gs.Variable("probe_nonzero", dtype=np.int64)
    valid_rows = gs.Variable("probe_valid_rows", dtype=np.int64)
    return [gs.Node("NonZero", inputs=[valid], outputs=[where]),
            gs.Node("Squeeze", inputs=[where, ints(0)], outputs=[valid_rows]),
            gs.Node("Gather", inputs=[rows, valid_rows], outputs=[cut], attrs={"axis": 0})]


def nonzero_shape(rows, valid, cut):
    where = gs.Variable("probe_nonzero", dtype=np.int64)
    count = gs.Variable("probe_count", dtype=np.int64)
    return [gs.Node("NonZero", inputs=[valid], outputs=[where]),
            gs.Node("Shape", inputs=[where], outputs=[count], attrs={"start": 1, "end": 2}),
            gs.Node("Slice", inputs=[rows, ints(0), count, ints(0)], outputs=[cut])]


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    source = _batched_nms_graph(out / "nms.onnx", KEPT, padded=True)
    context = {policy: PatchContext("nms", "tensorrt", {"efficient_nms": policy}, backend_version="8.6.0")
               for policy in ("auto", "never")}
    patched, _ = apply_passes(source, PASSES, context["auto"])
    native, _ = apply_passes(source, PASSES, context["never"])
    onnx.save(native, str(out / "N_native_nms.onnx"))
    with_tail(patched, "A_reducesum_int", summed(7), out)
    with_tail(patched, "B_reducesum_float", summed(1), out)
    with_tail(patched, "C_nonzero_gather", nonzero_gather, out)
    with_tail(patched, "D_nonzero_shape_slice", nonzero_shape, out)
    feed = _detections(400, 91)
    np.savez(out / "feed.npz", boxes=feed["boxes"], scores=feed["scores"],
             classes=feed["classes"].astype(np.int32))
    np.save(out / "expected.npy", _torchvision_keep(feed, KEPT))
    print("\n".join(sorted(p.name for p in out.glob("*.onnx"))))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/nms_probe"))
