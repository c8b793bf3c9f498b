#!/usr/bin/env python3
"""Build each ONNX graph make.py wrote (fp32, level 0) and run it on make.py's feed: one line
per graph, RESULT <name> OK <same keep as torchvision> <first rows> or ERR <TensorRT's error>.
Runs under the TensorRT Python with the project root on TRTPY_PATH (make.py says how)."""
import sys
from pathlib import Path

import numpy as np

from trtflow.runners.tensorrt import TensorRTRunner, build_engine


def main(root: Path) -> None:
    feed = dict(np.load(root / "feed.npz"))
    expected = np.load(root / "expected.npy").tolist()
    for onnx_path in sorted(root.glob("[A-Z]_*.onnx")):
        engine, sidecar = root / f"{onnx_path.stem}.engine", root / f"{onnx_path.stem}.json"
        try:
            build_engine(onnx_path, engine, sidecar, model="nms", precision="fp32",
                         batch_profile={"min": 1, "opt": 400, "max": 400}, profile_name="p",
                         options={"optimization_level": 0})
            with TensorRTRunner(engine, sidecar) as runner:
                keep = runner.infer(feed)["keep"].tolist()
            print("RESULT", onnx_path.stem, "OK", keep == expected, keep[:6], flush=True)
        except Exception as exc:  # noqa: BLE001 - the error is the result
            print("RESULT", onnx_path.stem, "ERR", str(exc)[:600].replace("\n", " | "), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/nms_probe"))
