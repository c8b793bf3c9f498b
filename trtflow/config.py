"""Configuration: schema validation with clear messages, defaults, the checks a schema cannot
express (profile order, value ranges, the memory a profile needs), and the model x precision x
batch-profile matrix.

Used by the Snakefile at parse time, so it imports only yaml and jsonschema.
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .errors import TrtflowError
from .schema import SCHEMA_PATH, load_schema

# ONNX opset 17 is the newest every supported backend parses: ONNX Runtime, and TensorRT 8.6 to 11.
DEFAULT_OPSET = 17


@dataclass(frozen=True)
class Cell:
    """One cell of the matrix: a model at one precision and one batch profile."""

    model: str
    precision: str
    batch_profile: str


def _resolve_ref(schema: Dict[str, Any], root: Dict[str, Any]) -> Dict[str, Any]:
    if "$ref" not in schema:
        return schema
    target: Any = root
    for part in schema["$ref"].lstrip("#/").split("/"):
        target = target[part]
    return target


def coerce_scalars(value: Any, schema: Dict[str, Any], root: Dict[str, Any]) -> Any:
    """Turn strings into the integer/number/boolean the schema asks for.

    Snakemake reads `--config tensorrt="{optimization_level: 0}"` with YAML's BaseLoader, so
    nested values arrive as strings; without this, such overrides would fail validation."""
    schema = _resolve_ref(schema, root)
    branches = [_resolve_ref(b, root) for b in schema.get("oneOf", schema.get("anyOf", []))]
    if branches:  # a value that may be an object or null: coerce by the branch that fits
        if isinstance(value, str) and value.lower() in ("null", "none", "~") and any(
                b.get("type") == "null" for b in branches):
            return None
        objects = [b for b in branches if "properties" in b]
        if isinstance(value, dict) and objects:
            schema = objects[0]
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {k: coerce_scalars(v, properties.get(k, extra if isinstance(extra, dict) else {}),
                                  root) for k, v in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [coerce_scalars(v, schema["items"], root) for v in value]
    if isinstance(value, str):
        types = schema.get("type", [])
        types = [types] if isinstance(types, str) else types
        converters = {"integer": int, "number": float,
                      "boolean": lambda t: {"true": True, "false": False}[t.lower()]}
        if value.lower() in ("null", "none", "~") and "null" in types:
            return None
        for name in ("integer", "number", "boolean"):
            if name in types:
                try:
                    return converters[name](value)
                except (ValueError, KeyError):
                    pass
    return value


def name_regex(schema_path: Path = SCHEMA_PATH) -> str:
    """The schema's pattern of model and profile names, unanchored (a wildcard constraint)."""
    return load_schema(schema_path)["definitions"]["name"]["pattern"].removeprefix(
        r"\A").removesuffix(r"\Z")


def _is_integer(checker: Any, instance: Any) -> bool:
    """JSON Schema (draft 6 on) takes 8.0 for an integer; every consumer of these values (an
    argparse `type=int`, range(), a shape) does not, so an integer is an int here."""
    return isinstance(instance, int) and not isinstance(instance, bool)


def _validator_with_defaults(schema: Dict[str, Any]):
    """A Draft-7 validator that also fills in `default` values as it walks the config, and whose
    integers are ints (not 8.0)."""
    import jsonschema

    base = jsonschema.validators.extend(
        jsonschema.Draft7Validator,
        type_checker=jsonschema.Draft7Validator.TYPE_CHECKER.redefine("integer", _is_integer))
    validate_properties = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema_node):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema_node)

    extended = jsonschema.validators.extend(base, {"properties": set_defaults})
    return extended(schema)


def _format_path(parts) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def validate_config(config: Dict[str, Any], config_file: str = "config",
                    schema_path: Path = SCHEMA_PATH) -> Dict[str, Any]:
    """Validate against the JSON schema and fill defaults; raise one clear TrtflowError."""
    import jsonschema

    schema = load_schema(schema_path)
    # (keys are taken as they are: a dot in a model name or an architecture_kwargs key is no path)
    resolved = coerce_scalars(copy.deepcopy(config), schema, schema)
    validator = _validator_with_defaults(schema)
    errors = sorted(validator.iter_errors(resolved), key=lambda e: len(list(e.absolute_path)))
    if errors:
        # a weights object matching no source: say so, rather than best_match's guess of which
        # source the user meant
        weights_errors = [e for e in errors if e.validator == "oneOf"
                          and _format_path(e.absolute_path).endswith("weights")]
        error = weights_errors[0] if weights_errors else jsonschema.exceptions.best_match(errors)
        where = _format_path(error.absolute_path)
        message = error.message
        if error.validator == "additionalProperties":
            allowed = sorted(error.schema.get("properties", {}))
            message += f" (allowed keys here: {', '.join(allowed)})" if allowed else ""
        if error.validator == "oneOf" and where.endswith("weights"):
            message = "weights must name exactly one of 'path', 'builtin' or 'random: true'"
        raise TrtflowError(f"invalid config at '{where}': {message}", path=config_file,
                           fix=f"edit '{where}' (every key is described in {schema_path.name})")
    check_semantics(resolved, config_file)
    check_results_dir(resolved, config_file)
    check_weight_files(resolved, config_file)
    from .preprocess import resolve_model

    for entry in resolved.get("models", {}).values():  # every stage makes its inputs alike
        resolve_model(entry)
    return resolved


def check_results_dir(config: Dict[str, Any], config_file: str = "config",
                      workdir: Optional[Path] = None) -> None:
    """results_dir, with every symlink on it followed, stays inside the working directory (the
    schema's pattern sees only the text: `results` a symlink to /etc would write there), unless
    results_dir_outside_workdir says that is meant (results on a scratch disk)."""
    if config["results_dir_outside_workdir"]:
        return
    workdir = (workdir or Path.cwd()).resolve()
    target = (workdir / config["results_dir"]).resolve()
    if target != workdir and workdir not in target.parents:
        raise TrtflowError(
            f"results_dir '{config['results_dir']}' leads to {target}, outside the working "
            f"directory {workdir} (a symlink on the way)", path=config_file,
            fix="point results_dir at a folder inside the working directory, or set "
                "results_dir_outside_workdir: true if the results are meant to go there")


def check_semantics(config: Dict[str, Any], config_file: str = "config") -> None:
    """Checks the schema cannot express: profile ordering, names referenced by exclusions."""
    from .models import BUILTIN_ARCHITECTURES, check_architecture

    check_wildcard_values(config, config_file)
    for name, profile in config["batch_profiles"].items():
        if not profile["min"] <= profile["opt"] <= profile["max"]:
            raise TrtflowError(
                f"batch profile '{name}' needs min <= opt <= max, got {profile}", path=config_file,
                fix=f"edit batch_profiles.{name}")
    for model, spec in config["models"].items():
        factory = BUILTIN_ARCHITECTURES.get(spec["architecture"], spec["architecture"])
        if spec.get("static_batch") is None and factory.startswith(ONE_IMAGE_FACTORIES):
            spec["static_batch"] = 1  # the detection adapter runs one image per call
        check_architecture(model, spec["architecture"])
        names = [inp["name"] for inp in spec["inputs"]]
        if len(set(names)) != len(names):
            raise TrtflowError(f"input names repeat: {names}", model=model, path=config_file,
                               fix="give every input a unique name")
        for index, spec_input in enumerate(spec["inputs"]):
            low_high = spec_input.get("range")
            if low_high is not None and not low_high[0] < low_high[1]:
                raise TrtflowError(
                    f"models.{model}.inputs[{index}].range {low_high} needs low < high",
                    model=model, path=config_file, fix="write the range as [low, high]")
        check_model_profiles(config, model, config_file)
        check_memory(config, model, config_file)
    known = {"model": set(config["models"]), "precision": set(config["precisions"]),
             "batch_profile": set(config["batch_profiles"])}
    for index, rule in enumerate(config.get("exclude", [])):
        for key, value in rule.items():
            if value not in known[key]:
                raise TrtflowError(
                    f"exclude[{index}].{key} = '{value}' names no configured {key}",
                    path=config_file, fix=f"use one of {sorted(known[key])}")
    if not matrix(config):
        raise TrtflowError("the matrix has no cell: `exclude` removes every model x precision x "
                           "batch profile", path=config_file,
                           fix="remove an exclude entry, or add a model, precision or profile")


def check_wildcard_values(config: Dict[str, Any], config_file: str = "config") -> None:
    """Model and profile names become Snakemake wildcards, and Snakemake refuses a value ending in
    one substring repeated many times (its guard against infinite recursion: `aaaa...a`)."""
    try:
        from snakemake.io import PeriodicityDetector
    except ImportError:  # validated outside a workflow (a test, a tool): no wildcards
        return
    detector = PeriodicityDetector()
    for kind, key in (("model", "models"), ("batch profile", "batch_profiles")):
        for name in config[key]:
            repeated = detector.is_periodic(name)
            if repeated is not None:
                raise TrtflowError(
                    f"{kind} name '{name}' ends in '{repeated}' repeated "
                    f"{detector.min_repeat} times or more, which Snakemake takes for a cyclic "
                    "dependency", path=config_file, fix=f"rename {key}.{name}")


# bytes per element of each configured input dtype
DTYPE_BYTES = {"float32": 4, "float16": 2, "int32": 4, "int64": 8, "uint8": 1, "bool": 1}
# The reference and baseline jobs hold the largest batch's inputs several times over (the
# validation set, the batch built from it, the framework's own copy): a profile whose inputs alone
# take more than this share of the machine's memory cannot run.
MEMORY_SHARE = 0.25


def machine_memory() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(config: Dict[str, Any], model: str, config_file: str = "config",
                 memory: Optional[int] = None) -> None:
    """Refuse, at parse time, a batch profile whose largest batch of inputs would not fit: the
    baseline job would die allocating it (a `max: 100000` profile wants tens of GB)."""
    memory = machine_memory() if memory is None else memory
    if not memory:
        return
    spec = config["models"][model]
    per_sample = sum(DTYPE_BYTES[i["dtype"]] * math.prod(i["shape"]) for i in spec["inputs"])
    for name in model_profiles(config, model):
        batch = config["batch_profiles"][name]["max"]
        need = per_sample * batch
        if need > MEMORY_SHARE * memory:
            raise TrtflowError(
                f"batch profile '{name}' (max {batch}) needs {need / 2**30:.1f} GiB for one batch of "
                f"model '{model}''s inputs alone; this machine has {memory / 2**30:.1f} GiB, and the "
                f"reference and baseline jobs hold such a batch several times",
                model=model, path=config_file,
                fix=f"lower batch_profiles.{name}.max (at most "
                    f"{int(MEMORY_SHARE * memory // max(per_sample, 1))} here), or run this "
                    "profile on a machine with more memory")


def model_profiles(config: Dict[str, Any], model: str) -> List[str]:
    """The batch profiles a model runs in: its own list, else all of them."""
    return list(config["models"][model].get("batch_profiles") or config["batch_profiles"])


# factories whose models trtflow.detection adapts: one image per call, so a static batch of 1
ONE_IMAGE_FACTORIES = ("torchvision.models.detection:", "torchvision.models.detection.")


def check_model_profiles(config: Dict[str, Any], model: str, config_file: str = "config") -> None:
    """A model's profile list names existing profiles; a static-batch model runs only in
    profiles of exactly that batch (its graph cannot take any other)."""
    spec = config["models"][model]
    for name in spec.get("batch_profiles") or []:
        if name not in config["batch_profiles"]:
            raise TrtflowError(
                f"models.{model}.batch_profiles names '{name}', which is not a batch profile",
                model=model, path=config_file,
                fix=f"use one of {sorted(config['batch_profiles'])} or add '{name}' to batch_profiles")
    static = spec.get("static_batch")
    if static is None:
        return
    for name in model_profiles(config, model):
        profile = config["batch_profiles"][name]
        if not profile["min"] == profile["opt"] == profile["max"] == static:
            raise TrtflowError(
                f"models.{model} has static_batch {static} but runs in batch profile '{name}' "
                f"{profile}", model=model, path=config_file,
                fix=f"add a profile {{min: {static}, opt: {static}, max: {static}}} to "
                    f"batch_profiles and list only it in models.{model}.batch_profiles")


def check_weight_files(config: Dict[str, Any], config_file: str = "config") -> None:
    """A checkpoint path that does not exist stops the workflow before any job starts; a model
    the exclusions take out of the matrix needs none."""
    running = {cell.model for cell in matrix(config)}
    for model, spec in config["models"].items():
        path = spec["weights"].get("path")
        if model not in running:
            continue
        if path and not Path(path).is_file():
            raise TrtflowError(
                f"weights file not found: '{path}' (relative paths are taken from "
                f"{Path.cwd()})", model=model, path=config_file,
                fix=f"point models.{model}.weights.path at an existing checkpoint, or use "
                    "weights: {random: true} to try the workflow with random weights")


def matrix(config: Dict[str, Any]) -> List[Cell]:
    """All cells of models x precisions x (the model's) batch profiles, minus the exclusions."""
    cells = []
    for model in config["models"]:
        for precision in config["precisions"]:
            for profile in model_profiles(config, model):
                cell = Cell(model, precision, profile)
                if not any(_excluded(cell, rule) for rule in config.get("exclude", [])):
                    cells.append(cell)
    return cells


def _excluded(cell: Cell, rule: Dict[str, str]) -> bool:
    return all(getattr(cell, key) == value for key, value in rule.items())


def model_patch_options(config: Dict[str, Any], model: str) -> Dict[str, Any]:
    """Top-level patch options with the model's own overrides applied."""
    options = dict(config["patch"])
    options.update(config["models"][model].get("patch", {}))
    return options


def model_opset(config: Dict[str, Any], model: str) -> int:
    opset: Optional[int] = config["models"][model].get("opset") or config["export"]["opset"]
    return int(opset or DEFAULT_OPSET)


def section_defaults(section: str, schema_path: Path = SCHEMA_PATH) -> Dict[str, Any]:
    """The defaults of one top-level config block, from the schema (for code that runs outside
    a workflow run: the speed placement's own timings, tests)."""
    properties = load_schema(schema_path)["properties"][section]["properties"]
    return {key: spec["default"] for key, spec in properties.items() if "default" in spec}


def builtin_tolerances(schema_path: Path = SCHEMA_PATH) -> Dict[str, Dict[str, Dict[str, float]]]:
    """task -> precision -> gates that apply whatever config file is used (from the schema)."""
    return load_schema(schema_path)["definitions"]["builtin_tolerances"]["default"]


def model_tolerances(config: Dict[str, Any], model: str, precision: str,
                     builtin: Optional[Mapping[str, Any]] = None) -> Dict[str, float]:
    """The gates of one cell: the built-in ones for the model's task, then validation.tolerances,
    then the model's own, merged key by key. A key set to null drops that gate; a precision set
    to null drops all gates above it (an explicit opt-out: the cell is then 'unchecked')."""
    builtin = builtin_tolerances() if builtin is None else builtin
    task = config["models"][model].get("task", "classification")
    layers = [builtin.get(task, {}), config["validation"].get("tolerances") or {},
              config["models"][model].get("tolerances") or {}]
    tolerances: Dict[str, float] = {}
    for layer in layers:
        if precision not in layer:
            continue
        if layer[precision] is None:
            tolerances = {}
            continue
        for key, value in layer[precision].items():
            if value is None:
                tolerances.pop(key, None)
            else:
                tolerances[key] = value
    return tolerances


def backend_keep_precision(keep_precision: Mapping[str, Any], backend: str,
                           levels: Sequence[str] = ("fp16", "fp32")) -> Dict[str, Dict[str, List[str]]]:
    """A model's keep_precision lists for one backend: the common lists with the backend's own
    (keep_precision.<backend>) added, for the levels a precision reads."""
    merged: Dict[str, Dict[str, List[str]]] = {}
    for level in levels:
        parts = [keep_precision.get(level) or {}, (keep_precision.get(backend) or {}).get(level) or {}]
        if not any(parts):
            continue
        merged[level] = {key: list(dict.fromkeys(item for part in parts for item in part.get(key) or ()))
                         for key in ("nodes", "op_types")}
    return merged
