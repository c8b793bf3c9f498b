"""Provenance: which source files a stage runs, and one digest of everything that made an artifact.

The workflow hashes each stage's code from the stage script's import closure (found by reading the
source, so nothing is imported), a user factory's module likewise, and chains the digests of every
job upstream (rules/common.smk). Standard library only: the Snakefile calls it at parse time.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any, Iterable, List, Optional, Set, Tuple

# A string constant naming a module of a package, e.g. "trtflow.runners.tensorrt" or
# "trtflow.zoo:rtdetr_r18": modules imported by name at run time (importlib) count as imports.
_MODULE_STRING = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)(?::[A-Za-z_]\w*)?$")


def digest(value: Any, length: int = 16) -> str:
    """A short sha256 of a JSON-able value (sorted keys), for provenance records."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_digest(paths: Iterable[Path]) -> str:
    """One sha256 over several files: each file's path (relative names) and contents."""
    hasher = hashlib.sha256()
    for path in paths:
        hasher.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return hasher.hexdigest()[:16]


def _module_path(name: str, roots: Tuple[Path, ...]) -> Optional[Path]:
    """The source file of module `name` under one of `roots` (package dirs' parents), if any."""
    parts = name.split(".")
    for root in roots:
        base = root.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> Set[str]:
    """Absolute module names a source file imports anywhere (also inside functions), including
    `from pkg import sub` submodules, relative imports and module names in string constants."""
    names: Set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".") if package else []
                base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = _MODULE_STRING.match(node.value)
            if match:
                names.add(match.group(1))
    return {n for n in names if n}


def _with_parents(name: str) -> List[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def import_closure(entry: Path, roots: Iterable[Path], packages: Iterable[str],
                   entry_module: str = "__main__") -> List[Path]:
    """Every source file of `packages` (top-level names) under `roots` that `entry` (the module
    `entry_module`, for its relative imports) reaches through imports, `entry` included, sorted.
    Read, not imported: nothing runs."""
    roots = tuple(Path(r).resolve() for r in roots)
    wanted = set(packages)
    seen: Set[Path] = set()
    todo: List[Tuple[Path, str]] = [(Path(entry).resolve(), entry_module)]
    while todo:
        path, module = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        for name in _imported_names(tree, module, path.name == "__init__.py"):
            if name.split(".")[0] not in wanted:
                continue
            for parent in _with_parents(name):  # importing a.b.c runs a and a.b too
                found = _module_path(parent, roots)
                if found is not None and found not in seen:
                    todo.append((found, parent))
    return sorted(seen)


@functools.lru_cache(maxsize=None)
def code_digest(entry: str, roots: Tuple[str, ...], packages: Tuple[str, ...]) -> str:
    """Digest of a script's import closure (cached: the Snakefile asks once per rule)."""
    return file_digest(import_closure(Path(entry), [Path(r) for r in roots], packages))


def module_source_digest(module: str) -> str:
    """Digest of a user module (`package.module` of `architecture: package.module:factory`) and
    the modules of its own top-level package it imports; '' when it cannot be found.

    find_spec imports the parent packages (their __init__), not the module itself."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return ""
    origin = Path(spec.origin).resolve()
    depth = module.count(".") + (1 if origin.name == "__init__.py" else 0)
    root = origin.parents[depth]
    return file_digest(import_closure(origin, [root], [module.split(".")[0]], module))


def loaded_sources(root: Path) -> List[str]:
    """Source files under `root` of the modules this process has imported (relative, sorted):
    what a stage really ran, to compare with its import closure."""
    root = Path(root).resolve()
    found = set()
    for module in list(sys.modules.values()):
        origin = getattr(module, "__file__", None)
        if origin and origin.endswith(".py"):
            path = Path(origin).resolve()
            if root in path.parents:
                found.add(str(path.relative_to(root)))
    return sorted(found)
