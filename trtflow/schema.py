"""The config schema (config/schema.yaml), read once per process: the one source of every
default, read by trtflow.config and by the modules whose defaults live there."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Dict

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "config" / "schema.yaml"


@functools.lru_cache(maxsize=None)
def load_schema(schema_path: Path = SCHEMA_PATH) -> Dict[str, Any]:
    """The schema, read once per process (every validate job's gates come from it; callers only
    read it)."""
    import yaml

    return yaml.safe_load(schema_path.read_text())
