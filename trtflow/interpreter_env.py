"""The workflow's own interpreter environment, kept across a Python wrapper.

A TensorRT Python is often a wrapper (NGC and Jetson set-ups, our GPU machine's `/tmp/trtpy`)
that sets PYTHONHOME, PYTHONPATH and LD_LIBRARY_PATH for its own interpreter. A child it starts
under the PyTorch Python (the side-by-side timer) inherits them, and a Python 3.12 given a
Python 3.9 PYTHONHOME dies before its first line ("Fatal Python error ... <no Python frame>",
H200, 2026-12-04). So the job's shell keeps its own values under saved names before it runs the
wrapper, and such a child is started with them put back. Standard library only.
"""
from __future__ import annotations

import os
from typing import Dict, Mapping, Optional

# what interpreter wrappers and activations change
INTERPRETER_VARIABLES = ("PYTHONHOME", "PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONSAFEPATH",
                         "PYTHONUSERBASE", "LD_LIBRARY_PATH", "LD_PRELOAD", "VIRTUAL_ENV",
                         "CONDA_PREFIX", "PATH")
SAVED_PREFIX = "TRTFLOW_WORKFLOW_"
UNSET = "__trtflow_unset__"


def shell_snapshot() -> str:
    """Shell assignments that keep the job's values of INTERPRETER_VARIABLES under saved names.

    Expanded by the job's shell when the job runs, so no value lands in the rule's params (an
    environment that differs between runs reruns nothing)."""
    return " ".join(f'{SAVED_PREFIX}{name}="${{{name}-{UNSET}}}"' for name in INTERPRETER_VARIABLES)


def workflow_environment(environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """`environ` (this process's) with the workflow's saved values put back, and unset where the
    workflow had them unset; as it is where nothing was saved."""
    environ = dict(os.environ if environ is None else environ)
    for name in INTERPRETER_VARIABLES:
        saved = environ.pop(SAVED_PREFIX + name, None)
        if saved is None:
            continue
        if saved == UNSET:
            environ.pop(name, None)
        else:
            environ[name] = saved
    return environ
