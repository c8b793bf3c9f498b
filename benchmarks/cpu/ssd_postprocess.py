#!/usr/bin/env python3
"""torchvision SSDlite's post-processing on ONNX Runtime, side by side in one process with PyTorch
eager on this CPU: its per-class loop (exported unrolled) vs the detection adapter's one-TopK form
(trtflow.detection.batch_ssd_postprocess), each with torchvision's batched_nms as exported (one
NMS over class-shifted boxes) and as the `multiclass_nms` patch pass rewrites it (ONNX's NMS
per class).

    python3 benchmarks/cpu/ssd_postprocess.py [--runs 30] [--threads 2]

The model is ssdlite320_mobilenet_v3_large (91 classes), random weights with the classification
bias spread (std 2) so that scores differ and a realistic share of candidates passes the score
threshold; both graphs come from the same module and weights. Prints a markdown table."""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    from trtflow.detection import deploy
    from trtflow.patch import PatchContext, apply_passes

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--background", type=float, default=6.0,
                   help="background logit offset: how sure the head is that an anchor is no object")
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    base = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None).eval()
    image = torch.rand(1, 3, 320, 320)
    _like_trained(base, image[0], args.background)
    variants = {}
    for name in ("per-class loop (torchvision)", "one TopK (adapter)"):
        detector = copy.deepcopy(base)
        module = deploy(detector, "ssd", [3, 320, 320], ["labels", "boxes", "scores"], 100)
        if name.startswith("per-class"):  # undo the adapter's rewrite: torchvision's own method
            del detector.postprocess_detections
        variants[name] = module.eval()
    # the default passes of an ONNX Runtime run up to the rewrite, and the clean-up after it
    PASSES = ["inline_empty_guards", "fold_constants", "fold_known_dims", "multiclass_nms",
              "cleanup", "toposort"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        reference = None
        for name, module in variants.items():
            path = Path(tmp) / "ssd.onnx"
            with torch.no_grad():
                out = module(image)
                torch.onnx.export(module, (image,), str(path), input_names=["images"],
                                  output_names=["labels", "boxes", "scores"], opset_version=17,
                                  dynamo=False)
                eager_ms = _median_ms(lambda: module(image), args.runs)
            reference = out if reference is None else reference
            for nms in ("never", "always"):
                graph, reports = apply_passes(onnx.load(str(path)), PASSES,
                                              PatchContext("ssd", "onnxruntime", {"multiclass_nms": nms}))
                options = ort.SessionOptions()
                options.intra_op_num_threads = args.threads
                session = ort.InferenceSession(graph.SerializeToString(), options,
                                               providers=["CPUExecutionProvider"])
                feed = {"images": image.numpy()}
                got = session.run(None, feed)
                same = _same_detections(got, [t.numpy() for t in reference])
                ops = Counter(n.op_type for n in _all_nodes(graph.graph))
                rows.append((name, "per class (multiclass_nms)" if nms == "always" else "class-shifted boxes",
                             len(graph.graph.node), ops["TopK"], ops["NonZero"], eager_ms,
                             _median_ms(lambda: session.run(None, feed), args.runs),
                             int((got[2] > 0).sum()), same))
    print(f"threads {args.threads}, {args.runs} runs, median ms; torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}")
    print("| post-processing | NMS | ONNX nodes | TopK | NonZero | PyTorch eager ms | ONNX Runtime ms | "
          "eager / ORT | detections | same as PyTorch's loop |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, nms, nodes, topk, nonzero, eager_ms, ort_ms, found, same in rows:
        print(f"| {name} | {nms} | {nodes} | {topk} | {nonzero} | {eager_ms:.2f} | {ort_ms:.2f} | "
              f"{eager_ms / ort_ms:.2f} | {found} | {same} |")


def _same_detections(got, expected) -> str:
    """ONNX Runtime's detections vs PyTorch's loop: labels equal, boxes and scores to 1e-4."""
    import numpy as np

    labels, boxes, scores = got
    if not np.array_equal(labels, expected[0]):
        return f"no: {int((labels != expected[0]).sum())} labels differ"
    if not (np.allclose(boxes, expected[1], atol=1e-3) and np.allclose(scores, expected[2], atol=1e-4)):
        return f"no: boxes / scores differ by {np.abs(boxes - expected[1]).max():.2g} / {np.abs(scores - expected[2]).max():.2g}"
    return "yes"


def _all_nodes(graph):
    """Nodes of the graph and of its subgraphs (an If's branches)."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.g.node:
                yield from _all_nodes(attribute.g)


def _like_trained(ssd, image, background: float) -> None:
    """Scores shaped like a trained SSD's: activations of unit scale (a random backbone's fade to
    1e-14), class logits that differ per anchor (std 3), and the background ahead by
    `background`, so that most anchors are background and a few classes per anchor pass the
    0.001 score threshold (random logits alone would put ~27,000 candidates into NMS)."""
    import torch

    from trtflow.detection import _normalise_batch_norms

    _normalise_batch_norms(ssd, lambda: ssd([image]))
    heads = [m for m in ssd.head.classification_head.modules()
             if isinstance(m, torch.nn.Conv2d) and m.out_channels % 91 == 0]
    seen = {}
    hooks = [h.register_forward_hook(lambda m, i, o: seen.__setitem__(m, o)) for h in heads]
    with torch.no_grad():
        for head in heads:
            torch.nn.init.normal_(head.weight)
            torch.nn.init.zeros_(head.bias)
        ssd([image])
        for head in heads:
            head.weight.mul_(3.0 / float(seen[head].std()))
            head.bias.view(-1, 91)[:, 0] = background
    for hook in hooks:
        hook.remove()


def _median_ms(call, runs: int) -> float:
    for _ in range(3):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


if __name__ == "__main__":
    main()
