"""Snakemake command lines that the workflow prints for the user to run next (the verdicts'
debug_precision hint, a fallback overlay's header): each must run as printed, with the config
of the run that printed it.

Snakemake 9's `--configfile` and `--config` take one or more values (nargs+), so a target after
them is read as one more config file: targets come first, then the options. A local run needs
`--cores` (Snakemake 9 stops without it): the printed commands take every core (`--cores
all`), not the run's number, which would make the job that prints them rerun when it changes."""
from __future__ import annotations

import shlex
from typing import Mapping, Sequence


def snakemake_command(targets: Sequence[str], rerun: Mapping[str, Sequence[str]],
                      overlays: Sequence[str] = ()) -> str:
    """`snakemake <targets> --cores all` with the run's config: `rerun` holds `configfiles`
    (the files given with --configfile; none for a run of the default config), `default_config` (the config files the run read, named
    when overlays must be layered over them) and `config` (the --config key=value overrides, as
    given). `overlays` are config files layered over the run's."""
    configfiles = list(rerun.get("configfiles") or [])
    if overlays:
        configfiles = (configfiles or list(rerun.get("default_config") or [])) + list(overlays)
    words = ["snakemake", *targets, "--cores", "all"]
    if configfiles:
        words += ["--configfile", *configfiles]
    if rerun.get("config"):
        words += ["--config", *rerun["config"]]
    return " ".join(shlex.quote(word) for word in words)
