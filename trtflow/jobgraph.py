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
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

from snakemake.exceptions import WildcardError
from snakemake.io import apply_wildcards
from snakemake.iocontainers import Wildcards

from .errors import TrtflowError
from .io import longest_sibling_name, sha256_file
from .provenance import code_digest, digest

# params that are not settings of what a job computes: where it runs (the interpreter, the
# script's path: its code is digested instead), the provenance machinery itself, and how a user
# reruns the workflow (the printed commands carry this run's config file paths: the same results
# made from another folder, or by a cluster job, must have the same provenance)
NOT_SETTINGS = ("provenance", "python", "timer_python", "workflow_env", "script", "producers",
                "rerun")
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

    def files_of(self, wildcards: Mapping[str, str]) -> Iterator[Tuple[str, str]]:
        """(rule name, path) of every output, log and benchmark file of every rule, for one set
        of wildcard values (templates that need other wildcards are skipped)."""
        for rule in self.workflow.rules:
            templates = [*rule.output, *rule.log, *([rule.benchmark] if rule.benchmark else [])]
            for template in templates:
                try:
                    yield rule.name, apply_wildcards(str(template), dict(wildcards))
                except WildcardError:
                    continue

    def check_file_names(self, cells: Iterable[Any], name_max: Optional[int] = None) -> None:
        """Every file the rules make for these cells, and what is written beside it (a temporary
        file, a corrupt-marker), fits the file system's limit on one name: a too-long model or
        profile name fails here, when the workflow starts, not in a job (`File name too long`)."""
        name_max = name_max or _name_max(".")
        seen = set()
        for cell in cells:
            wildcards = {"model": cell.model, "precision": cell.precision,
                         "profile": cell.batch_profile}
            for rule_name, path in self.files_of(wildcards):
                *folders, name = Path(path).parts
                # a file is written under a longer temporary name; a folder is made as it is
                for part, size in [*((f, len(f.encode())) for f in folders),
                                   (name, longest_sibling_name(name))]:
                    if (part, size) in seen:
                        continue
                    seen.add((part, size))
                    if size > name_max:
                        raise TrtflowError(
                            f"rule {rule_name} would write {path}, and the name '{part}' (as "
                            f"written: {size} bytes) is longer than this file system allows "
                            f"({name_max})",
                            model=cell.model, fix=_shorter_name_fix(part, cell))

    def jobs_of(self, cells: Iterable[Any]) -> Iterator[Tuple[Any, Dict[str, str]]]:
        """(rule, wildcards) of every job the rules can make for these cells, once each."""
        seen = set()
        for cell in cells:
            values = {"model": cell.model, "precision": cell.precision,
                      "profile": cell.batch_profile}
            for rule in self.workflow.rules:
                names = set(rule.wildcard_names)
                if not names <= set(values):
                    continue
                wildcards = {name: values[name] for name in sorted(names)}
                key = (rule.name, tuple(wildcards.items()))
                if key not in seen:
                    seen.add(key)
                    yield rule, wildcards

    def derived_from(self, paths: Iterable[str], cells: Iterable[Any]) -> List[str]:
        """Every output made, directly or further down, from the files `paths` (in the jobs of
        these cells): what must be made again when those files are."""
        consumers: Dict[str, List[str]] = {}
        for rule, wildcards in self.jobs_of(cells):
            outputs = [apply_wildcards(str(f), wildcards) for f in rule.output]
            for path in self._inputs(rule, Wildcards(fromdict=wildcards)):
                consumers.setdefault(os.path.normpath(path), []).extend(outputs)
        derived: List[str] = []
        pending = [os.path.normpath(p) for p in paths]
        while pending:
            for output in consumers.get(pending.pop(), []):
                if output not in derived:
                    derived.append(output)
                    pending.append(os.path.normpath(output))
        return derived

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


def _shorter_name_fix(part: str, cell: Any) -> str:
    """Which configured name to shorten: the cell's names in the too-long part, else results_dir."""
    names = [f"the model name '{cell.model}'" if cell.model in part else "",
             f"the batch profile name '{cell.batch_profile}'" if cell.batch_profile in part else ""]
    named = " and ".join(n for n in names if n)
    return f"shorten {named}" if named else f"shorten the folder '{part[:40]}...' of results_dir"


def _name_max(directory: str, default: int = 255) -> int:
    """The longest file name (bytes) the file system of `directory` takes."""
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return default
