"""The numbers the five papers publish, as data: one YAML file per study in ``published/``.

Each file (``published/s1.yaml`` ... ``s5.yaml``, shipped as package data) lists the values a
paper reports for an artifact of `tuneatlas.catalogue.ARTIFACTS`, with the filter (`setting`) that
picks the matching rows of our artifact table and the column holding our number. `load_published`
reads and validates one study's file; every schema violation is a `ConfigError` naming the file,
the entry id and the key.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from tuneatlas.catalogue import ARTIFACTS
from tuneatlas.errors import ConfigError

STUDIES = ("s1", "s2", "s3", "s4", "s5")
_ID = re.compile(r"^[a-z0-9-]+$")
_TOP_KEYS = {"study": str, "paper": str, "seed_file": str, "values": list}
_REQUIRED = {"id": str, "artifact": str, "source": str, "setting": dict, "quantity": str}
_OPTIONAL = {"column", "value", "std", "n_seeds", "note"}
_KEYS = {*_REQUIRED, *_OPTIONAL}
# scores our tables hold as fractions (|x| <= 1): a larger value is a percentage left unconverted
FRACTION_QUANTITIES = ("accuracy", "mcc", "pearson", "macro_f1", "f1", "share")


@dataclass(frozen=True)
class PublishedValue:
    """One number a paper reports, with where our table holds the same quantity."""

    study: str
    id: str
    artifact: str
    source: str
    setting: dict[str, Any]
    quantity: str
    column: str
    value: float
    std: float | None
    n_seeds: int | None
    note: str | None
    paper: str
    seed_file: str


def _file_name(study: str) -> str:
    return f"published/{study}.yaml"


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _check_entry(where: str, entry: Any, seen: set[str]) -> str:
    """The entry's id once its keys, types and references hold; ConfigError otherwise."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: every entry of 'values' must be a mapping")
    eid = entry.get("id")
    if not isinstance(eid, str) or not _ID.match(eid):
        raise ConfigError(f"{where} (entry {eid!r}, key 'id'): give an id matching [a-z0-9-]+")
    at = f"{where} (entry {eid!r}"
    if eid in seen:
        raise ConfigError(f"{at}, key 'id'): the id is used twice; make it unique")
    unknown = sorted(set(entry) - set(_REQUIRED) - _OPTIONAL)
    if unknown:
        raise ConfigError(f"{at}, key {unknown[0]!r}): unknown key; use {sorted(_KEYS)}")
    for key, kind in [*_REQUIRED.items(), ("value", float)]:
        got = entry.get(key)
        ok = _finite(got) if kind is float else isinstance(got, kind) and got != ""
        if not ok:
            what = "a finite number" if kind is float else f"a non-empty {kind.__name__}"
            raise ConfigError(f"{at}, key {key!r}): required, must be {what}")
    if entry["artifact"] not in ARTIFACTS:
        raise ConfigError(f"{at}, key 'artifact'): {entry['artifact']!r} is not a catalogue id")
    if (
        entry["quantity"].split()[:1] in [[q] for q in FRACTION_QUANTITIES]
        and abs(entry["value"]) > 1
    ):
        raise ConfigError(
            f"{at}, key 'value'): {entry['value']} for {entry['quantity']!r} looks like a"
            " percentage; write the fraction"
        )
    columns = ARTIFACTS[entry["artifact"]].columns
    for key in entry["setting"]:
        if key not in columns:
            raise ConfigError(
                f"{at}, key 'setting.{key}'): not a column of {entry['artifact']} {list(columns)}"
            )
    if entry.get("column", "value") not in columns:
        raise ConfigError(f"{at}, key 'column'): not a column of {entry['artifact']}")
    if entry.get("std") is not None and not _finite(entry["std"]):
        raise ConfigError(f"{at}, key 'std'): must be a finite number or null")
    n_seeds = entry.get("n_seeds")
    if n_seeds is not None and (not isinstance(n_seeds, int) or isinstance(n_seeds, bool)):
        raise ConfigError(f"{at}, key 'n_seeds'): must be an integer or null")
    if entry.get("note") is not None and not isinstance(entry["note"], str):
        raise ConfigError(f"{at}, key 'note'): must be a string or null")
    return eid


def parse_published(study: str, doc: Any, where: str) -> list[PublishedValue]:
    """The validated values of one study's parsed YAML document (`where` names its file)."""
    if not isinstance(doc, dict):  # also an empty file
        raise ConfigError(f"{where}: the file must hold a mapping with keys {sorted(_TOP_KEYS)}")
    for key, kind in _TOP_KEYS.items():
        if not isinstance(doc.get(key), kind):
            raise ConfigError(f"{where} (key {key!r}): required, must be a {kind.__name__}")
    if doc["study"] != study:
        raise ConfigError(f"{where} (key 'study'): {doc['study']!r} differs from the file name")
    seen: set[str] = set()
    out = []
    for entry in doc["values"]:
        seen.add(_check_entry(where, entry, seen))
        out.append(
            PublishedValue(
                study=study,
                id=entry["id"],
                artifact=entry["artifact"],
                source=entry["source"],
                setting=dict(entry["setting"]),
                quantity=entry["quantity"],
                column=entry.get("column", "value"),
                value=float(entry["value"]),
                std=None if entry.get("std") is None else float(entry["std"]),
                n_seeds=entry.get("n_seeds"),
                note=entry.get("note"),
                paper=doc["paper"],
                seed_file=doc["seed_file"],
            )
        )
    return out


def load_published(study: str) -> list[PublishedValue]:
    """The published values of `study` (s1..s5); [] when the study has no file."""
    name = _file_name(study)
    path = resources.files("tuneatlas.studies").joinpath(name)
    if not path.is_file():
        return []
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: not valid YAML ({exc})".replace("\n", " ")) from exc
    return parse_published(study, doc, name)


def all_published() -> dict[str, list[PublishedValue]]:
    """Every study's published values, by study id (s1..s5)."""
    return {study: load_published(study) for study in STUDIES}
