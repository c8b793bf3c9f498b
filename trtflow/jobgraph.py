"""The workflow's jobs as its Snakemake rules declare them: which rule makes a file, the
provenance of each job, and the logs of a job's whole chain.

Provenance is one digest per job of everything upstream that made its outputs: the rule's params
(the config values it reads), the code of its stage script (params.script: the script's import
closure, so no module it runs can be missed), and the digests of the jobs that made its inputs
(or a source file's contents, e.g. a checkpoint). It is derived from the rules' own inputs,
outputs and params, so no list has to mirror them. Used by rules/common.smk at parse time and
when Snakemake plans the jobs; imports snakemake (never needed by the stage scripts).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from snakemake.io import apply_wildcards
from snakemake.iocontainers import Wildcards

from .io import sha256_file
from .provenance import code_digest, digest

# params that are not settings of what a job computes: where it runs (the interpreter, the
# script's path: its code is digested instead), and the provenance machinery itself
NOT_SETTINGS = ("provenance", "python", "script", "producers")
WildcardItems = Tuple[Tuple[str, str], ...]


def input_function(item: Any) -> Optional[Callable]:
    """The function behind a rule's input item, if it is one: Snakemake keeps input functions
    as IOFile strings holding the function (flagged ones, unpack(), as an annotated string)."""
    if callable(item):
        return item
    held = getattr(item, "_file", item)
    if callable(held):
        return held
    return getattr(held, "callable", None)


class JobGraph:
    def __init__(self, workflow: Any, root: Path, package: str = "trtflow") -> None:
        self.workflow = workflow
        self.root = Path(root)
        self.package = package
        self._producers: Dict[str, Any] = {}
        self._records: Dict[Tuple[str, WildcardItems], Tuple[str, Tuple[str, ...]]] = {}
        self._sources: Dict[Tuple[str, int, int], str] = {}

    def producer(self, path: str) -> Optional[Any]:
        """The rule whose output `path` is (None for a source file such as a checkpoint)."""
        if path not in self._producers:
            self._producers[path] = next(
                (rule for rule in self.workflow.rules
                 if rule.name != "all" and rule.output and rule.is_producer(path)), None)
        return self._producers[path]

    def record(self, rule_name: str, wildcard_items: WildcardItems) -> Tuple[str, Tuple[str, ...]]:
        """(provenance digest, log files of the job and every job upstream, upstream first)."""
        key = (rule_name, wildcard_items)
        if key not in self._records:
            self._records[key] = self._make_record(rule_name, wildcard_items)
        return self._records[key]

    def record_of(self, path: str) -> Tuple[str, Tuple[str, ...]]:
        """The record of the job that makes `path`."""
        rule = self.producer(path)
        return self.record(rule.name, tuple(sorted(rule.get_wildcards(path).items())))

    def provenance_param(self, rule_name: str) -> Callable[[Any], str]:
        """params.provenance of the rule named `rule_name` (a rule's params cannot reach the rule
        object, so each names itself)."""
        return lambda wildcards: self.record(rule_name, tuple(sorted(wildcards.items())))[0]

    def producers_param(self, wildcards: Any, input: Any) -> Dict[str, str]:
        """params.producers: which rule writes each of a job's inputs, so that a stage script can
        name the stage of an input that does not decode (trtflow.io.read_artifact)."""
        return {path: self.producer(path).name for path in input if self.producer(path)}

    def _make_record(self, rule_name: str, wildcard_items: WildcardItems) -> Tuple[str, Tuple[str, ...]]:
        rule = self.workflow.get_rule(rule_name)
        wildcards = Wildcards(fromdict=dict(wildcard_items))
        upstream: List[List[str]] = []
        logs: List[str] = []
        for path in self._inputs(rule, wildcards):
            producer = self.producer(path)
            if producer is None:
                upstream.append(["file", path, self._source_digest(path)])
                continue
            digest_up, logs_up = self.record_of(path)
            upstream.append([producer.name, digest_up])
            logs += [log for log in logs_up if log not in logs]
        logs += [apply_wildcards(str(log), dict(wildcard_items)) for log in rule.log]
        settings = {name: (value(wildcards) if callable(value) else value)
                    for name, value in rule.params.items() if name not in NOT_SETTINGS}
        record = {"rule": rule_name, "code": self._code(rule), "settings": settings,
                  "upstream": upstream}
        return digest(record), tuple(logs)

    @staticmethod
    def _inputs(rule: Any, wildcards: Any) -> List[str]:
        paths: List[str] = []
        for item in rule.input:
            function = input_function(item)
            value = (function(wildcards) if function is not None
                     else apply_wildcards(str(item), dict(wildcards.items())))
            if isinstance(value, dict):  # unpack(): the function's named paths
                value = list(value.values())
            paths += [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
        return paths

    def _code(self, rule: Any) -> str:
        """Digest of the import closure of the stage script a rule runs (params.script)."""
        script = getattr(rule.params, "script", None)
        return code_digest(str(script), (str(self.root),), (self.package,)) if script else ""

    def _source_digest(self, path: str) -> str:
        if not os.path.exists(path):
            return "missing"
        stat = os.stat(path)
        key = (path, stat.st_size, stat.st_mtime_ns)
        if key not in self._sources:
            self._sources[key] = sha256_file(path)[:16]
        return self._sources[key]
