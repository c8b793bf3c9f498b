"""trtflow.provenance: the import closure a stage's code digest covers, and digests."""
from __future__ import annotations

from pathlib import Path

from trtflow.provenance import digest, import_closure, module_source_digest

from conftest import REPO

def closure(script: Path):
    return {str(p.relative_to(REPO)) for p in import_closure(script, [REPO], ["trtflow"])}


def test_closure_follows_lazy_relative_and_by_name_imports() -> None:
    found = closure(REPO / "workflow_scripts" / "validate.py")
    # lazy import inside main(); relative imports inside the package; importlib by name (runners)
    assert {"workflow_scripts/validate.py", "trtflow/validate.py", "trtflow/cli.py",
            "trtflow/errors.py", "trtflow/runners/base.py", "trtflow/runners/tensorrt.py",
            "trtflow/runners/onnxruntime.py", "trtflow/cuda.py"} <= found
    assert "trtflow/summary.py" not in found


def test_closure_of_a_package_file_reaches_its_parent_packages(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    for name in ("pkg/__init__.py", "pkg/sub/__init__.py"):
        (tmp_path / name).write_text("")
    (tmp_path / "pkg" / "sub" / "leaf.py").write_text("from .. import other\nX = 'pkg.named'\n")
    (tmp_path / "pkg" / "other.py").write_text("import json\n")
    (tmp_path / "pkg" / "named.py").write_text("")
    entry = tmp_path / "main.py"
    entry.write_text("def f():\n    from pkg.sub import leaf\n")
    names = {str(p.relative_to(tmp_path)) for p in import_closure(entry, [tmp_path], ["pkg"])}
    assert names == {"main.py", "pkg/__init__.py", "pkg/sub/__init__.py", "pkg/sub/leaf.py",
                     "pkg/other.py", "pkg/named.py"}


def test_user_module_digest_changes_with_its_source(tmp_path: Path, monkeypatch) -> None:
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("SCALE = 1\n")
    (package / "factory.py").write_text("from .helpers import SCALE\ndef build():\n    return SCALE\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = module_source_digest("mypkg.factory")
    assert first
    (package / "helpers.py").write_text("SCALE = 2\n")  # an edit of what the factory imports
    assert module_source_digest("mypkg.factory") != first
    assert module_source_digest("no_such_module_here.factory") == ""


def test_digest_is_stable_and_key_order_free() -> None:
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2}) and len(digest({})) == 16
