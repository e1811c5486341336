"""Read and validate a tuneatlas config: strict YAML, JSON Schema (with defaults) and the
cross-references the schema cannot express.

The schema and the references between entries are checked here, before any job starts, with
a message naming the key, e.g. ``config key 'studies.s1.train.lr': -1 is not > 0``; each
dataset entry against the dataset vocabulary (its task, source keys, files) and what needs the
files and directories the config names are `tuneatlas.preflight`'s. This module imports
nothing of the package above the ground layer.
"""

from __future__ import annotations

import copy
import io
import os
import re
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators

from tuneatlas.errors import ConfigError
from tuneatlas.io import stable_hash

# shipped inside the package (pyproject package-data), so an installed tuneatlas finds it
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"

# YAML 1.1 (PyYAML) reads `1e-3` as a string: a float needs a dot and a signed exponent.
_YAML_STRING_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


# ---------------------------------------------------------------------------------------------
# YAML: duplicate keys are errors, with their line


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise ConfigError(
                f"duplicate key {key!r} ({key_node.start_mark.name}:{line}, first at line"
                f" {seen[key]}): YAML keeps only the last value; delete one of them"
            )
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: str | os.PathLike) -> Any:
    """Parse a YAML config file, refusing duplicate keys (ConfigError naming file and line)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"config file not found ({path}): check the path") from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"config file is not UTF-8 text ({path}, byte {err.start}): save it as UTF-8"
        ) from None
    stream = io.StringIO(text)
    stream.name = str(path)  # type: ignore[attr-defined] - PyYAML reads it for its marks
    try:
        return yaml.load(stream, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None


def float_hint(value: Any) -> str:
    """The fix for a number that YAML read as a string (`lr: 1e-3`), else ""."""
    if isinstance(value, str) and _YAML_STRING_FLOAT.match(value.strip()):
        mantissa, exponent = re.split("[eE]", value.strip())
        if "." not in mantissa:
            mantissa += ".0"
        sign = "" if exponent.startswith(("-", "+")) else "+"
        return (
            f"; YAML reads {value} as a string (a float needs a dot and a signed exponent):"
            f" write {mantissa}e{sign}{exponent}"
        )
    return ""


# ---------------------------------------------------------------------------------------------
# Schema and cross-references


def _with_defaults(validator_class):
    """A validator that fills `default` values into the instance before validating it."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


DefaultFillingValidator = _with_defaults(Draft202012Validator)


@cache
def load_schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _key(path: Iterable[Any]) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


# Keys that held dataset ids under a task-like name; an old config fails naming the new key.
RENAMED_KEYS: dict[str, str] = {
    "studies.s1.tasks": "studies.s1.datasets",
    "studies.s1.cross_tasks": "studies.s1.cross_datasets",
    "studies.s1.no_dropout_tasks": "studies.s1.no_dropout_datasets",
    "studies.s1.subsets.large_tasks": "studies.s1.subsets.large_datasets",
    "studies.s2.task": "studies.s2.dataset",
    "studies.s5.task": "studies.s5.dataset",
}


def _check_renamed_keys(raw: Mapping[str, Any]) -> None:
    """A config written before a key was renamed fails with one line per old key."""
    lines = []
    for old, new in RENAMED_KEYS.items():
        *parents, leaf = old.split(".")
        node: Any = raw
        for part in parents:
            node = node.get(part) if isinstance(node, Mapping) else None
        if isinstance(node, Mapping) and leaf in node:
            lines.append(f"config key '{old}' was renamed to '{new}': rename it in the config")
    if len(lines) == 1:
        raise ConfigError(lines[0])
    if lines:
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines))


def _allowed(schema: Mapping[str, Any]) -> str:
    """What a key with alternatives accepts: its description, which says it in words (the bare
    'not valid under any of the given schemas' names no alternative)."""
    words = " ".join(str(schema.get("description", "")).split())
    return f"; allowed: {words}" if words else ""


def validate_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Return a validated copy of `raw` with defaults filled in; raise ConfigError otherwise."""
    _check_renamed_keys(raw)
    config = copy.deepcopy(dict(raw))
    validator = DefaultFillingValidator(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = []
        for err in errors:
            path = list(err.absolute_path)
            if err.validator == "additionalProperties":
                # name the unknown key itself, not its parent
                extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
                path = path + [extra[0]] if len(extra) == 1 else path
                lines.append(f"config key '{_key(path)}': unknown key ({err.message})")
            else:
                hint = float_hint(err.instance) if err.validator in ("type", "oneOf") else ""
                if not hint and err.validator in ("oneOf", "anyOf"):
                    hint = _allowed(err.schema)
                lines.append(f"config key '{_key(path)}': {err.message}{hint}")
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines))
    _check_ids(config)
    _declare_tasks(config)
    _check_references(config)
    return config


def _declare_tasks(config: dict[str, Any]) -> None:
    """Register the config's `tasks:` so every dataset, study and job can name them."""
    from tuneatlas.data.tasks import declare

    try:
        declare(config.get("tasks"))
    except ValueError as err:
        raise ConfigError(f"config key {err}") from None


# Dataset and model ids become directory names under results/ and arguments of job commands:
# a letter or digit first, then letters, digits, '_', '.', '-', and never '..' (a path step).
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def unsafe_id(value: str) -> str | None:
    """Why `value` cannot be an id (a dataset, model or run), or None when it can."""
    if not SAFE_ID.match(value):
        return (
            "an id must start with a letter or digit and hold only letters, digits,"
            " '_', '.' and '-'"
        )
    if ".." in value:
        return "an id must not contain '..'"
    return None


def _check_ids(config: dict[str, Any]) -> None:
    """Every dataset and model id is safe as a directory name and a shell word."""
    problems = []
    for section in ("datasets", "models"):
        for name in config[section]:
            why = unsafe_id(str(name))
            if why:
                problems.append(
                    f"config key '{section}.{name}': unsafe id {str(name)!r}: {why};"
                    " rename it (e.g. 'my-data_2')"
                )
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def _check_references(config: dict[str, Any]) -> None:
    """Cross-references the schema cannot express: ids point at defined entries. (What a
    dataset entry says of its data - its task, source keys, streaming budget - is checked by
    `tuneatlas.data.validate.check_source`, which `tuneatlas.preflight` runs on every entry.)"""
    problems: list[str] = []
    datasets, models = config["datasets"], config["models"]
    for name, model in models.items():
        if "revision" in model and model["source"] != "hub":
            problems.append(
                f"config key 'models.{name}.revision': only a hub model has a revision"
                f" (source is {model['source']!r})"
            )
        for i, corpus in enumerate(model.get("corpus", [])):
            if corpus not in datasets:
                problems.append(
                    f"config key 'models.{name}.corpus.{i}': unknown dataset {corpus!r}"
                )

    def need(kind: str, mapping: Mapping[str, Any], key: str, value: Any) -> None:
        if value is not None and value not in mapping:
            problems.append(
                f"config key '{key}': unknown {kind} {value!r}; "
                f"defined: {', '.join(sorted(mapping))}"
            )

    studies = config["studies"]
    for study, section in studies.items():
        for field in ("model",):
            if field in section:
                need("model", models, f"studies.{study}.{field}", section[field])
        for field in ("dataset", "preliminary_dataset", "corpus"):
            if field in section:
                need("dataset", datasets, f"studies.{study}.{field}", section[field])
        for field in ("datasets", "cross_datasets", "no_dropout_datasets"):
            for i, value in enumerate(section.get(field) or []):
                need("dataset", datasets, f"studies.{study}.{field}.{i}", value)
    stsb = (studies.get("s2") or {}).get("simcse", {}).get("stsb")
    need("dataset", datasets, "studies.s2.simcse.stsb", stsb)
    if stsb in datasets and datasets[stsb].get("task") != "stsb":
        problems.append(
            f"config key 'studies.s2.simcse.stsb': dataset {stsb!r} has task"
            f" {datasets[stsb].get('task')!r}; name a dataset of task stsb (its valid split is"
            " the STS-B dev set)"
        )
    s1 = studies.get("s1")
    if s1:
        for field in ("cross_datasets", "no_dropout_datasets"):
            for i, value in enumerate(s1.get(field) or []):
                if value not in s1["datasets"]:
                    problems.append(
                        f"config key 'studies.s1.{field}.{i}': {value!r} is not in"
                        " studies.s1.datasets"
                    )
    if (
        config["bundles"].get("s4", {}).get("pretrain", 1) > 1
        and (studies.get("s4") or {}).get("gpus", 1) > 1
    ):
        problems.append(
            "config key 'bundles.s4.pretrain': a pre-training run on several GPUs"
            " (studies.s4.gpus) is a torchrun job of its own; bundle it only on one GPU"
        )
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read a YAML config file, apply `overrides` (top-level keys), validate."""
    path = Path(path)
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    raw.update(overrides or {})
    return validate_config(raw)


def config_hash(config: Mapping[str, Any]) -> str:
    """Short, key-order-independent hash of a validated config (stored in every table)."""
    return stable_hash(config)
