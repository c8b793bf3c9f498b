#!/usr/bin/env python3
"""Weights stage: fetch and check one model's weights, save a plain state_dict."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the trtflow package beside us
from trtflow import cli  # noqa: E402


def main(args) -> None:
    from trtflow.io import stamp_provenance
    from trtflow.weights import prepare_weights

    prepare_weights(args.model, args.spec, Path(args.cache), Path(args.output), Path(args.metadata))
    stamp_provenance(args.metadata, args.provenance)


if __name__ == "__main__":
    p = cli.parser(__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--spec", required=True, type=cli.json_arg, help="the model's config entry")
    p.add_argument("--cache", required=True, help="weights cache folder (searched by sha256)")
    p.add_argument("--output", required=True, help="state_dict .pt to write")
    p.add_argument("--metadata", required=True, help="JSON sidecar to write")
    cli.run(main, p)
