#!/usr/bin/env python3
"""Graphs for the int8_float probe (issue 21): a small network with what made TensorRT 8.6's int8
engines slower than fp16 on detectors and transformers. A convolution stem (quantised), a
transformer block (its MatMul/Gemm kept fp16 by keep_precision, as config/hard_models.yaml keeps
RT-DETR's) and box decoding (Exp, Clip, Mul, Add on a head's output, as an RPN's), written as the
fp16 graph, the int8 graph on the fp32 graph (int8_float builder and fp16_layers) and on the fp16
graph (fp16_graph). On the GPU machine:
    python3 benchmarks/gpu/int8_float_probe/make.py /tmp/int8_float_probe
    TRTPY_PATH=$PWD $TRT_PYTHON benchmarks/gpu/int8_float_probe/build.py /tmp/int8_float_probe
"""
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402

from trtflow.patch import PatchContext, apply_passes  # noqa: E402
from trtflow.precision import make_precision  # noqa: E402

SIZE, BATCH = 256, 8
KEEP_FP16 = {"fp16": {"op_types": ["MatMul", "Gemm"]}}


class Probe(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers, channels = [], 3
        for width in (32, 64, 128, 128):
            layers += [torch.nn.Conv2d(channels, width, 3, 2, 1), torch.nn.BatchNorm2d(width),
                       torch.nn.ReLU()]
            channels = width
        self.stem = torch.nn.Sequential(*layers)
        self.block = torch.nn.TransformerEncoderLayer(128, 4, 256, dropout=0.0, batch_first=True)
        self.head = torch.nn.Conv2d(128, 12, 1)
        side = SIZE // 16
        centre = (torch.arange(side, dtype=torch.float32) + 0.5) * 16
        self.register_buffer("cx", centre.repeat(side))
        self.register_buffer("cy", centre.repeat_interleave(side))

    def forward(self, images):
        features = self.stem(images)
        b, c, h, w = features.shape
        tokens = self.block(features.flatten(2).transpose(1, 2))
        deltas = self.head(tokens.transpose(1, 2).reshape(b, c, h, w)).reshape(b, 3, 4, h * w)
        dx, dy, dw, dh = deltas.unbind(2)
        limit = math.log(1000.0 / 16)
        half_w = torch.exp(dw.clamp(max=limit)) * 16 * 0.5
        half_h = torch.exp(dh.clamp(max=limit)) * 16 * 0.5
        x, y = self.cx + dx * 16, self.cy + dy * 16
        return torch.stack([x - half_w, y - half_h, x + half_w, y + half_h], dim=-1)


def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    module = Probe().eval()
    example = torch.randn(BATCH, 3, SIZE, SIZE)
    exported = folder / "exported.onnx"
    torch.onnx.export(module, (example,), str(exported), input_names=["images"],
                      output_names=["boxes"], dynamic_axes={"images": {0: "batch"}, "boxes": {0: "batch"}},
                      opset_version=17, dynamo=False)
    patched, _ = apply_passes(onnx.load(str(exported)), ["fold_constants", "cleanup", "toposort",
                                                         "infer_shapes"],
                              PatchContext("probe", "tensorrt", {}, "8.6.0"))
    onnx.save(patched, str(folder / "patched.onnx"))
    calibration = {"images": np.random.default_rng(0).standard_normal((16, 3, SIZE, SIZE)).astype(np.float32)}
    options = {"method": "minmax", "percentile": 99.99, "cache_dir": str(folder / "ranges")}
    make_precision("probe", "fp16", folder / "patched.onnx", folder / "fp16.onnx",
                   folder / "fp16.json", "tensorrt")
    for form, name in (("builder", "int8-fp32-graph"), ("fp16_graph", "int8-fp16-graph")):
        make_precision("probe", "int8", folder / "patched.onnx", folder / f"{name}.onnx",
                       folder / f"{name}.json", "tensorrt", calibration, options,
                       keep_precision=KEEP_FP16, int8_float=form)
    np.savez(folder / "feed.npz", images=example.numpy())
    print("made", sorted(p.name for p in folder.glob("*.onnx")))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
