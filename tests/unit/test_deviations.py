"""docs/deviations.md names real config keys: every `sN.…` / `train.…` key of its Key column
exists in the config schema, so the table cannot drift from the settings it points at."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def _schema_has(schema: dict, path: list[str]) -> bool:
    node = schema
    for part in path:
        if "$ref" in node:
            node = DEFS[node["$ref"].split("/")[-1]]
        props = node.get("properties", {})
        if part not in props:
            return False
        node = props[part]
    return True


SCHEMA = yaml.safe_load((REPO / "src/tuneatlas/schemas/config.schema.yaml").read_text())
DEFS = SCHEMA.get("$defs", {})


def test_every_key_of_the_deviations_table_is_a_config_key():
    rows = [
        line.split("|")
        for line in (REPO / "docs/deviations.md").read_text().splitlines()
        if re.match(r"\| \d+ \|", line)
    ]
    assert len(rows) >= 40
    studies = SCHEMA["properties"]["studies"]
    checked = 0
    for row in rows:
        for key in re.findall(r"`([a-z0-9_.]+)`", row[5]):
            parts = key.split(".")
            if re.fullmatch(r"s[1-5]", parts[0]):
                assert _schema_has(studies, parts), key
                checked += 1
            elif parts[0] == "train":
                assert _schema_has(SCHEMA["properties"]["train"], parts[1:]), key
                checked += 1
    assert checked >= 30
