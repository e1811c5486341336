"""Config validation: defaults filled, every bad key named before any job starts."""

from __future__ import annotations

import copy
import subprocess
import sys
import time

import pytest
import yaml

from tuneatlas.config import config_hash, load_config, validate_config
from tuneatlas.errors import ConfigError


@pytest.fixture
def toy(repo):
    return yaml.safe_load((repo / "config.yaml").read_text())


def test_both_shipped_configs_validate(repo):
    for name in ("config.yaml", "paper.yaml"):
        config = load_config(repo / name)
        assert config["studies"]["s1"]["subsets"]["top_k"] == 5  # default or explicit


def test_defaults_are_filled_without_touching_the_input(toy):
    raw = copy.deepcopy(toy)
    config = validate_config(toy)
    assert toy == raw
    assert config["studies"]["s1"]["frozen"] is True
    assert config["studies"]["s1"]["layers"] == {"pairs_per_layer": None}
    assert config["studies"]["s3"]["stay_T"] == 4


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda c: c["studies"]["s1"]["train"].__setitem__("lr", -1.0), "studies.s1.train.lr"),
        (lambda c: c["train"].__setitem__("batch_size", "32"), "train.batch_size"),
        (lambda c: c["studies"]["s1"]["datasets"].append("nope"), "studies.s1.datasets.5"),
        (lambda c: c["studies"]["s1"].__setitem__("model", "gpt5"), "studies.s1.model"),
        (lambda c: c["train"].__setitem__("learning_rate", 1e-3), "train.learning_rate"),
        (lambda c: c["studies"]["s1"].__setitem__("seeds", []), "studies.s1.seeds"),
        (lambda c: c["train"].__setitem__("schedule", "step"), "train.schedule"),
        (lambda c: c["train"].__setitem__("precision", "fp16"), "train.precision"),
        (
            lambda c: c["studies"]["s2"]["fisher"].__setitem__("precision", "float32"),
            "studies.s2.fisher.precision",
        ),
        (lambda c: c["models"]["bert-toy"].pop("hidden_size"), "models.bert-toy"),
        (lambda c: c["models"]["bert-toy"]["corpus"].append("wiki"), "models.bert-toy.corpus.6"),
    ],
)
def test_bad_config_names_the_key(toy, mutate, key):
    mutate(toy)
    with pytest.raises(ConfigError) as err:
        validate_config(toy)
    assert f"'{key}'" in str(err.value)


def test_bad_config_fails_fast_from_the_command_line(repo, tmp_path, toy):
    toy["studies"]["s1"]["train"]["lr"] = -5e-5
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(toy))
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "tuneatlas", "validate", str(bad)], capture_output=True, text=True
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 1
    assert "'studies.s1.train.lr'" in proc.stderr
    assert elapsed < 5


def test_config_hash_is_stable_and_sensitive(toy):
    a = validate_config(toy)
    b = validate_config(copy.deepcopy(toy))
    assert config_hash(a) == config_hash(b)
    toy["seed"] = 1
    assert config_hash(validate_config(toy)) != config_hash(a)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("studies.s1.tasks", "studies.s1.datasets"),
        ("studies.s1.cross_tasks", "studies.s1.cross_datasets"),
        ("studies.s1.no_dropout_tasks", "studies.s1.no_dropout_datasets"),
        ("studies.s1.subsets.large_tasks", "studies.s1.subsets.large_datasets"),
        ("studies.s2.task", "studies.s2.dataset"),
        ("studies.s5.task", "studies.s5.dataset"),
    ],
)
def test_a_renamed_key_fails_naming_its_new_name(toy, old, new):
    from tuneatlas.errors import error_lines

    raw = copy.deepcopy(toy)
    *parents, leaf = old.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = ["sst2"] if leaf.endswith("tasks") else "sst2"
    with pytest.raises(ConfigError) as err:
        validate_config(raw)
    assert error_lines(err.value) == [
        f"ERROR tuneatlas: config key '{old}' was renamed to '{new}': rename it in the config"
    ]
