"""PyTorch runner: the reference outputs and the eager / torch.compile baselines."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from .base import Runner, host_timing, timing_loop


class TorchRunner(Runner):
    """Runs a torch.nn.Module on `device` in fp32 or fp16, eager or compiled.

    Inputs are staged on the device before timing, as the engines' are, so the numbers compare
    compute with compute.
    """

    def __init__(self, module, output_names: Sequence[str], device: str = "cpu",
                 precision: str = "fp32", compile: bool = False) -> None:
        self.module = module
        self.output_names = list(output_names)
        self.device = device
        self.precision = precision
        self.compile = compile
        self.name = f"torch-{'compile' if compile else 'eager'}-{precision}"

    def load(self) -> "TorchRunner":
        import torch

        module = self.module.to(self.device).eval()
        if self.precision == "fp16":
            module = module.half()
        self._forward = torch.compile(module) if self.compile else module
        return self

    def _to_device(self, feed: Mapping[str, np.ndarray]) -> List[Any]:
        import torch

        tensors = []
        for array in feed.values():
            tensor = torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
            if tensor.is_floating_point():
                tensor = tensor.half() if self.precision == "fp16" else tensor.float()
            tensors.append(tensor)
        return tensors

    def _run(self, tensors: List[Any]):
        import torch

        with torch.inference_mode():
            return self._forward(*tensors)

    def infer(self, feed: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        outputs = self._run(self._to_device(feed))
        return {name: out.detach().float().cpu().numpy() if out.is_floating_point()
                else out.detach().cpu().numpy() for name, out in zip(self.output_names, outputs)}

    def time(self, feed: Mapping[str, np.ndarray], warmup: int, iterations: int,
             max_seconds: float, mode: Optional[str] = None) -> List[float]:
        import torch

        tensors = self._to_device(feed)
        if self.device == "cpu":
            return host_timing(lambda: self._run(tensors), warmup, iterations, max_seconds)
        return cuda_event_timing(lambda: self._run(tensors), warmup, iterations, max_seconds,
                                 torch.cuda)


def cuda_event_timing(call, warmup: int, iterations: int, max_seconds: float, cuda) -> List[float]:
    """Per-iteration GPU time between CUDA events on the current stream."""
    def one() -> float:
        start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    return timing_loop(one, warmup, iterations, max_seconds)
