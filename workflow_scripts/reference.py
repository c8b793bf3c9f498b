#!/usr/bin/env python3
"""Reference stage: the validation inputs and PyTorch's outputs for them, as one .npz.

The engine-side scripts (which may run without torch) read inputs and reference outputs from it.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the trtflow package beside us
from trtflow import cli  # noqa: E402


def imagenet_labels():
    import torchvision

    return torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]


def main(args) -> None:
    import numpy as np
    import torch

    from trtflow.data import input_set
    from trtflow.export import EXPORT_BATCH, check_forward
    from trtflow.io import save_npz
    from trtflow.models import eval_wrapper, load_trained_model
    from trtflow.runners.base import infer_in_chunks
    from trtflow.runners.torch import TorchRunner

    torch.manual_seed(0)
    # the reference is true fp32: no TF32 in cuDNN convolutions or matmuls on the GPU
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    module = eval_wrapper(load_trained_model(args.model, args.spec, args.weights))
    inputs, names = input_set(args.model, args.spec["inputs"], args.num_samples, "validation")
    static_batch = args.spec.get("static_batch")
    # the batch the export traces: a model that takes one sample per call fails here, with the
    # fix, instead of in the batched run below
    check_batch = static_batch or EXPORT_BATCH
    check_forward(module, tuple(torch.from_numpy(v[:check_batch]) for v in inputs.values()),
                  args.model, args.spec["inputs"], args.spec["outputs"])
    runner = TorchRunner(module, args.spec["outputs"], device=args.device).load()
    outputs = infer_in_chunks(runner, inputs, static_batch, static_batch or 1)
    arrays = {f"input:{k}": v for k, v in inputs.items()}
    arrays.update({f"output:{k}": v for k, v in outputs.items()})
    arrays["__samples__"] = np.array(names)
    arrays["__provenance__"] = np.array(args.provenance)
    if args.spec.get("labels") == "imagenet":
        arrays["__labels__"] = np.array(imagenet_labels())
    save_npz(args.output, arrays)


if __name__ == "__main__":
    p = cli.parser(__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--spec", required=True, type=cli.json_arg, help="the model's config entry")
    p.add_argument("--weights", required=True)
    p.add_argument("--device", required=True, help="cpu or cuda")
    p.add_argument("--num-samples", type=int, required=True)
    p.add_argument("--output", required=True, help=".npz with input:*, output:* arrays")
    cli.run(main, p)
