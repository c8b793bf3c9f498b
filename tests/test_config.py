"""trtflow.config: schema validation messages, defaults, dotted overrides, the matrix."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict

import pytest

from conftest import resnet_entry, tiny_config, token_entry
from trtflow.config import (DEFAULT_OPSET, Cell, coerce_scalars, load_schema,
                            builtin_tolerances, matrix, model_opset, model_patch_options,
                            model_tolerances,
                            validate_config)
from trtflow.errors import TrtflowError


def one_model_config(**overrides: Any) -> Dict[str, Any]:
    config = tiny_config(models={"net": resnet_entry({"random": True})})
    config.update(overrides)
    return config


def config_error(config: Dict[str, Any]) -> TrtflowError:
    with pytest.raises(TrtflowError) as info:
        validate_config(config, "my-config.yaml")
    return info.value


# --- defaults and the returned config --------------------------------------------------------

def test_validate_config_fills_schema_defaults() -> None:
    """Absent blocks come back with the schema's defaults, nested ones included."""
    resolved = validate_config(one_model_config())
    assert resolved["export"] == {"opset": None, "exporter": "torchscript"}
    assert resolved["patch"]["passes"] == ["inline_empty_guards", "fold_constants",
                                           "fold_known_dims", "guard_empty_topk", "multiclass_nms",
                                           "efficient_nms", "cleanup",
                                           "toposort", "int64_inputs_to_int32",
                                           "decompose_layernorm", "pyramid_roialign",
                                           "roialign_to_gridsample",
                                           "infer_shapes"]
    assert resolved["patch"]["int64_inputs_to_int32"] == "auto"
    assert resolved["patch"]["decompose_layernorm"] == "auto"
    assert resolved["exclude"] == []
    assert resolved["tensorrt"]["python"] is None and resolved["tensorrt"]["workspace_mib"] == 4096
    # given values are kept, their siblings defaulted
    assert resolved["calibration"] == {"num_samples": 4, "method": "auto", "percentile": 99.99,
                                       "seed": 0, "images": None,
                                       "cache_dir": "resources/cache/calibration"}
    assert resolved["backend"] == "onnxruntime"
    net = resolved["models"]["net"]
    assert net["task"] == "classification" and net["labels"] == "none"
    assert net["architecture_kwargs"] == {}
    assert net["weights"] == {"random": True, "seed": 0}
    assert net["inputs"][0]["data"] == "synthetic"


def test_validate_config_leaves_its_argument_unchanged() -> None:
    config = one_model_config()
    before = copy.deepcopy(config)
    validate_config(config)
    assert config == before


def test_backend_defaults_to_auto_when_not_given() -> None:
    config = one_model_config()
    del config["backend"]
    assert validate_config(config)["backend"] == "auto"


# --- schema errors name the key path ---------------------------------------------------------

def test_wrong_type_error_names_the_key_path_and_the_config_file() -> None:
    config = one_model_config()
    config["batch_profiles"]["small"]["max"] = "four"
    error = config_error(config)
    text = str(error)
    assert text.startswith("file 'my-config.yaml': invalid config at 'batch_profiles.small.max'")
    assert "'four' is not of type 'integer'" in text
    assert error.path == "my-config.yaml"
    assert "batch_profiles.small.max" in error.fix and "schema.yaml" in error.fix


def test_error_path_shows_list_indices() -> None:
    config = one_model_config()
    config["models"]["net"]["inputs"][0]["dtype"] = "float64"
    assert "invalid config at 'models.net.inputs[0].dtype'" in str(config_error(config))


def test_unknown_key_lists_the_allowed_keys() -> None:
    config = one_model_config(precision=["fp32"])
    text = str(config_error(config))
    assert "invalid config at '(top level)'" in text
    assert "'precision' was unexpected" in text
    assert "allowed keys here: backend, batch_profiles, benchmark," in text
    assert "precisions" in text


def test_unknown_precision_is_refused() -> None:
    text = str(config_error(one_model_config(precisions=["fp32", "int4"])))
    assert "invalid config at 'precisions[1]'" in text and "'int4'" in text


def test_missing_required_top_level_key_is_reported() -> None:
    config = one_model_config()
    del config["precisions"]
    assert "'precisions' is a required property" in str(config_error(config))


def test_weights_naming_two_sources_says_exactly_one() -> None:
    config = one_model_config()
    config["models"]["net"]["weights"] = {"random": True, "path": "x.pt"}
    text = str(config_error(config))
    assert "invalid config at 'models.net.weights'" in text
    assert "weights must name exactly one of 'path', 'builtin' or 'random: true'" in text


@pytest.mark.parametrize("weights", [{"random": False}, {"random": False, "seed": 3}])
def test_weights_random_false_alone_names_no_source(weights) -> None:
    config = one_model_config()
    config["models"]["net"]["weights"] = weights
    assert "weights must name exactly one" in str(config_error(config))


def test_a_layered_config_replaces_random_weights_with_random_false(resnet18_checkpoint: Path) -> None:
    """--configfile base.yaml overlay.yaml merges key by key: the overlay's path arrives next to
    the base's random/seed, and random: false says the path wins."""
    config = one_model_config()
    config["models"]["net"]["weights"] = {"random": False, "seed": 0, "path": str(resnet18_checkpoint)}
    assert validate_config(config, "layered")["models"]["net"]["weights"]["path"] == str(resnet18_checkpoint)


def test_bad_sha256_format_is_refused() -> None:
    config = one_model_config()
    config["models"]["net"]["weights"] = {"random": True, "sha256": "abc"}
    assert "models.net.weights.sha256" in str(config_error(config))


# --- semantic checks -------------------------------------------------------------------------

def test_profile_needs_min_opt_max_in_order() -> None:
    config = one_model_config(batch_profiles={"odd": {"min": 4, "opt": 2, "max": 8}})
    error = config_error(config)
    assert "batch profile 'odd' needs min <= opt <= max" in str(error)
    assert error.fix == "edit batch_profiles.odd"


def test_unknown_architecture_suggests_the_close_builtin_name() -> None:
    config = one_model_config()
    config["models"]["net"]["architecture"] = "resnet_18"
    error = config_error(config)
    assert "model 'net'" in str(error) and "unknown architecture 'resnet_18'" in str(error)
    assert "did you mean 'resnet18'" in error.fix
    assert error.model == "net"


def test_repeated_input_names_are_refused() -> None:
    entry = token_entry({"random": True})
    entry["inputs"].append(dict(entry["inputs"][0]))
    error = config_error(tiny_config(models={"tok": entry}))
    assert "input names repeat: ['tokens', 'tokens']" in str(error) and error.model == "tok"


def test_exclusion_naming_an_unknown_model_is_refused() -> None:
    error = config_error(one_model_config(exclude=[{"model": "nett"}]))
    assert "exclude[0].model = 'nett' names no configured model" in str(error)
    assert error.fix == "use one of ['net']"


def test_exclusion_with_an_unknown_key_is_a_schema_error() -> None:
    text = str(config_error(one_model_config(exclude=[{"device": "cpu"}])))
    assert "invalid config at 'exclude[0]'" in text and "'device' was unexpected" in text


def test_missing_weights_file_stops_validation(tmp_path: Path) -> None:
    missing = tmp_path / "absent.pt"
    config = tiny_config(models={"net": resnet_entry({"path": str(missing)})})
    error = config_error(config)
    assert f"weights file not found: '{missing}'" in str(error) and error.model == "net"
    assert "weights: {random: true}" in error.fix


def test_an_excluded_model_needs_no_weights_file(tmp_path: Path, resnet18_checkpoint: Path) -> None:
    # an overlay that runs a subset of a models file: the models it leaves out may lack checkpoints
    config = tiny_config(models={"net": resnet_entry({"path": str(resnet18_checkpoint)}),
                                 "other": resnet_entry({"path": str(tmp_path / "absent.pt")})},
                         exclude=[{"model": "other"}])
    assert "other" in validate_config(config)["models"]
    config["exclude"] = [{"model": "other", "precision": "fp32"}]  # still runs in other precisions
    assert "weights file not found" in str(config_error(config))


def test_existing_weights_file_passes(resnet18_checkpoint: Path) -> None:
    config = tiny_config(models={"net": resnet_entry({"path": str(resnet18_checkpoint)})})
    assert validate_config(config)["models"]["net"]["weights"]["path"] == str(resnet18_checkpoint)


# --- names and keys are taken as written -----------------------------------------------------

def test_dots_in_kwargs_keys_are_kept_and_names_must_be_plain() -> None:
    """Snakemake refuses dotted `--config` keys, so no key is split at its dots: an
    architecture_kwargs key `head.bias` stays one key, and a model name must be a plain name."""
    config = one_model_config()
    config["models"]["net"]["architecture_kwargs"] = {"head.bias": True}
    assert validate_config(config)["models"]["net"]["architecture_kwargs"] == {"head.bias": True}
    for bad in ("my net", "a/b", "x;touch", "-dash", "v1.2"):
        renamed = one_model_config()
        renamed["models"] = {bad: renamed["models"]["net"]}
        with pytest.raises(TrtflowError, match="invalid config at 'models'"):
            validate_config(renamed)


# --- string scalars from `--config` ----------------------------------------------------------

def test_string_scalars_become_the_types_the_schema_asks_for() -> None:
    """Snakemake hands nested --config values over as strings (YAML BaseLoader)."""
    config = one_model_config(
        batch_profiles={"small": {"min": "1", "opt": "2", "max": "4"}},
        tensorrt={"optimization_level": "0", "tf32": "True", "python": "null"},
        export={"opset": "~"},
        benchmark={"max_seconds": "0.5", "iterations": "3"},
        validation={"tolerances": {"fp32": {"rel_l2": "1e-4"}}})
    config["models"]["net"]["weights"]["seed"] = "3"
    config["models"]["net"]["inputs"][0]["shape"] = ["3", "32", "32"]
    resolved = validate_config(config)
    assert resolved["batch_profiles"]["small"] == {"min": 1, "opt": 2, "max": 4}
    assert resolved["tensorrt"]["optimization_level"] == 0 and resolved["tensorrt"]["tf32"] is True
    assert resolved["tensorrt"]["python"] is None and resolved["export"]["opset"] is None
    assert resolved["benchmark"]["max_seconds"] == 0.5 and resolved["benchmark"]["iterations"] == 3
    assert resolved["validation"]["tolerances"]["fp32"]["rel_l2"] == 1e-4
    net = resolved["models"]["net"]  # reached through additionalProperties and $ref
    assert net["weights"]["seed"] == 3 and net["inputs"][0]["shape"] == [3, 32, 32]


def test_strings_the_schema_wants_as_strings_stay_strings() -> None:
    schema = load_schema()
    value = {"results_dir": "123", "python": "null", "models": {"m": {"architecture": "1",
                                                                      "outputs": ["2"]}}}
    coerced = coerce_scalars(value, schema, schema)
    assert coerced["results_dir"] == "123" and coerced["models"]["m"]["architecture"] == "1"
    assert coerced["models"]["m"]["outputs"] == ["2"]
    assert coerced["python"] is None  # type: [string, "null"]


def test_a_string_that_is_no_valid_scalar_is_still_refused() -> None:
    text = str(config_error(one_model_config(tensorrt={"tf32": "maybe"})))
    assert "invalid config at 'tensorrt.tf32'" in text and "'maybe' is not of type 'boolean'" in text


# --- matrix and per-model options ------------------------------------------------------------

def two_model_config(**overrides: Any) -> Dict[str, Any]:
    config = tiny_config(
        models={"net": resnet_entry({"random": True}), "tok": token_entry({"random": True})},
        precisions=["fp32", "fp16", "int8"],
        batch_profiles={"small": {"min": 1, "opt": 2, "max": 4},
                        "large": {"min": 8, "opt": 16, "max": 32}})
    config.update(overrides)
    return validate_config(config)


def test_matrix_is_models_times_precisions_times_profiles_in_order() -> None:
    cells = matrix(two_model_config())
    assert len(cells) == 12
    assert cells[0] == Cell("net", "fp32", "small")
    assert cells[1] == Cell("net", "fp32", "large")
    assert cells[-1] == Cell("tok", "int8", "large")
    assert len(set(cells)) == 12


def test_matrix_exclusions_match_on_the_keys_they_name() -> None:
    config = two_model_config(exclude=[{"model": "tok", "precision": "int8"},
                                       {"batch_profile": "large"}])
    cells = matrix(config)
    assert cells == [Cell("net", "fp32", "small"), Cell("net", "fp16", "small"),
                     Cell("net", "int8", "small"), Cell("tok", "fp32", "small"),
                     Cell("tok", "fp16", "small")]


def test_model_patch_options_apply_the_model_override() -> None:
    config = two_model_config()
    config["models"]["tok"]["patch"] = {"int64_inputs_to_int32": "never"}
    assert model_patch_options(config, "tok")["int64_inputs_to_int32"] == "never"
    assert model_patch_options(config, "tok")["passes"] == config["patch"]["passes"]
    assert model_patch_options(config, "net")["int64_inputs_to_int32"] == "auto"
    assert config["patch"]["int64_inputs_to_int32"] == "auto"  # the top level is not edited


def test_model_opset_prefers_model_then_export_then_default() -> None:
    config = two_model_config()
    assert model_opset(config, "net") == DEFAULT_OPSET == 17
    config["export"]["opset"] = 13
    assert model_opset(config, "net") == 13
    config["models"]["net"]["opset"] = 18
    assert model_opset(config, "net") == 18 and model_opset(config, "tok") == 13


BUILTIN = {"classification": {"int8": {"rel_l2": 0.25, "cosine_min": 0.97, "top1_agreement_min": 0.75},
                              "fp16": {"rel_l2": 0.01}},
           "detection": {"int8": {"detection_recall_min": 0.9}}}


def test_model_tolerances_merge_key_by_key_over_the_builtin_gates() -> None:
    config = two_model_config(validation={"tolerances": {"int8": {"cosine_min": 0.9}}})
    config["models"]["net"]["tolerances"] = {"int8": {"rel_l2": 0.35}}
    assert model_tolerances(config, "net", "int8", BUILTIN) == {
        "rel_l2": 0.35, "cosine_min": 0.9, "top1_agreement_min": 0.75}
    assert model_tolerances(config, "tok", "int8", BUILTIN) == {
        "rel_l2": 0.25, "cosine_min": 0.9, "top1_agreement_min": 0.75}
    assert model_tolerances(config, "net", "fp16", BUILTIN) == {"rel_l2": 0.01}
    config["models"]["net"]["task"] = "detection"  # the task picks the built-in gates
    assert model_tolerances(config, "net", "int8", BUILTIN) == {
        "detection_recall_min": 0.9, "cosine_min": 0.9, "rel_l2": 0.35}


def test_null_drops_a_gate_and_a_null_precision_drops_them_all() -> None:
    config = two_model_config(validation={"tolerances": {"int8": {"top1_agreement_min": None}}})
    config["models"]["net"]["tolerances"] = {"fp16": None}
    assert model_tolerances(config, "net", "int8", BUILTIN) == {"rel_l2": 0.25, "cosine_min": 0.97}
    assert model_tolerances(config, "net", "fp16", BUILTIN) == {}
    assert model_tolerances(config, "tok", "fp16", BUILTIN) == {"rel_l2": 0.01}


def test_builtin_gates_come_from_the_schema_for_every_task_and_precision() -> None:
    """Whatever config file is used (tolerances: {} or none), every cell has gates."""
    builtin = builtin_tolerances()
    for task in ("classification", "segmentation", "detection", "generic"):
        for precision in ("fp32", "fp16", "int8"):
            assert builtin[task][precision], (task, precision)
    config = validate_config(two_model_config())
    assert config["validation"]["tolerances"] == {}
    assert model_tolerances(config, "net", "fp32") == builtin["classification"]["fp32"]


def test_precision_null_and_gate_null_pass_the_schema_and_config_strings() -> None:
    resolved = validate_config(two_model_config(
        validation={"tolerances": {"fp16": "null", "int8": {"rel_l2": "null", "cosine_min": "0.9"}}}))
    assert resolved["validation"]["tolerances"] == {"fp16": None,
                                                   "int8": {"rel_l2": None, "cosine_min": 0.9}}


# --- per-model batch profiles and static batch ----------------------------------------------
def test_a_model_runs_only_in_its_own_batch_profiles() -> None:
    config = one_model_config(batch_profiles={"single": {"min": 1, "opt": 1, "max": 1},
                                              "small": {"min": 1, "opt": 2, "max": 4}})
    config["models"]["other"] = resnet_entry({"random": True}, batch_profiles=["single"],
                                             static_batch=1)
    cells = matrix(validate_config(config))
    assert {c.batch_profile for c in cells if c.model == "other"} == {"single"}
    assert {c.batch_profile for c in cells if c.model == "net"} == {"single", "small"}


def test_static_batch_in_a_profile_of_another_batch_is_refused() -> None:
    config = one_model_config()
    config["models"]["net"]["static_batch"] = 1  # the tiny profile is 1/2/4
    error = str(config_error(config))
    assert "static_batch 1 but runs in batch profile 'small'" in error
    assert "min: 1, opt: 1, max: 1" in error


def test_a_model_profile_list_naming_no_profile_is_refused() -> None:
    config = one_model_config()
    config["models"]["net"]["batch_profiles"] = ["tiny"]
    assert "names 'tiny', which is not a batch profile" in str(config_error(config))


# --- issue 24: a strict schema (integers, whole-string names, name lengths, results_dir) -------

@pytest.mark.parametrize("edit, where", [
    (lambda c: c["calibration"].update(num_samples=8.0), "calibration.num_samples"),
    (lambda c: c["batch_profiles"]["small"].update(max=4.0), "batch_profiles.small.max"),
    (lambda c: c["validation"].update(num_samples="4.0"), "validation.num_samples"),  # --config
])
def test_a_float_is_no_integer(edit, where: str) -> None:
    """Issue 24 case 3: 8.0 passed as an integer, then a job's `--num-samples` refused '4.0'."""
    config = one_model_config()
    edit(config)
    error = config_error(config)
    assert f"invalid config at '{where}'" in str(error) and "is not of type 'integer'" in str(error)


def test_an_integer_given_as_a_string_still_becomes_an_int() -> None:
    config = one_model_config()
    config["calibration"]["num_samples"] = "8"
    assert validate_config(config)["calibration"]["num_samples"] == 8


@pytest.mark.parametrize("edit, where", [
    (lambda c: c["models"].update({"net\n": c["models"].pop("net")}), "models"),
    (lambda c: c["batch_profiles"].update({"small\n": c["batch_profiles"].pop("small")}),
     "batch_profiles"),
    (lambda c: c.update(results_dir="r_nl\n"), "results_dir"),
    (lambda c: c["models"]["net"].update(outputs=["logits\n"]), "models.net.outputs[0]"),
    (lambda c: c["models"]["net"]["inputs"][0].update(name="input\n"), "models.net.inputs[0].name"),
    (lambda c: c["models"]["net"]["weights"].update(sha256="0" * 64 + "\n"), "models.net.weights.sha256"),
])
def test_a_name_with_a_trailing_newline_is_refused(edit, where: str) -> None:
    """Issue 24 case 4: `$` matched before a final newline, so `tiny\\n` passed the schema."""
    config = one_model_config()
    edit(config)
    assert f"invalid config at '{where}'" in str(config_error(config))


def _patterns(node: Any):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern":
                yield value
            else:
                yield from _patterns(value)
    elif isinstance(node, list):
        for value in node:
            yield from _patterns(value)


def test_every_schema_pattern_is_anchored_at_both_ends_of_the_string() -> None:
    """jsonschema applies `pattern` with re.search: only \\A...\\Z matches the whole string."""
    patterns = list(_patterns(load_schema()))
    assert len(patterns) >= 5
    for pattern in patterns:
        assert pattern.startswith("\\A") and pattern.endswith("\\Z"), pattern


def test_name_regex_is_the_unanchored_name_pattern() -> None:
    from trtflow.config import name_regex

    assert name_regex() == "[A-Za-z0-9][A-Za-z0-9_-]*"


@pytest.mark.parametrize("name", ["n" * 65, "n" * 230])
def test_a_model_name_longer_than_the_limit_is_refused(name: str) -> None:
    """Issue 24 case 5: a 230-character name ran 12 s, then died with `File name too long`."""
    config = one_model_config()
    config["models"] = {name: config["models"]["net"]}
    error = config_error(config)
    assert "invalid config at 'models'" in str(error) and "is too long" in str(error)


def test_a_name_of_the_longest_length_passes() -> None:
    config = one_model_config()
    name = "net_" + "".join(chr(ord("a") + i % 26) for i in range(60))
    config["models"] = {name: config["models"]["net"]}
    assert name in validate_config(config)["models"]


def test_a_periodic_name_snakemake_refuses_is_refused_here() -> None:
    """Issue 24 case 5: 200 `a`s gave Snakemake's PeriodicWildcardError."""
    config = one_model_config()
    config["models"] = {"net" + "a" * 40: config["models"]["net"]}
    error = config_error(config)
    assert "ends in 'aa' repeated 20 times or more, which Snakemake takes for a cyclic" in str(error)
    assert "fix: rename models.neta" in str(error)


def test_a_symlinked_results_dir_leading_outside_is_refused(tmp_path: Path, monkeypatch) -> None:
    """Issue 24 case 6: the check was lexical, so `results` a symlink to /etc planned writes
    into /etc."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "results").symlink_to("/etc")
    (workdir / "inside").symlink_to(workdir / "sub", target_is_directory=True)
    monkeypatch.chdir(workdir)
    error = config_error(one_model_config(results_dir="results"))
    assert "results_dir 'results' leads to /etc, outside the working directory" in str(error)
    assert "results_dir_outside_workdir: true" in error.fix
    # a symlink that stays inside, and the explicit opt-out, pass
    assert validate_config(one_model_config(results_dir="inside/r"))["results_dir"] == "inside/r"
    opted = validate_config(one_model_config(results_dir="results", results_dir_outside_workdir=True))
    assert opted["results_dir"] == "results"
