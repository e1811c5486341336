"""The catalogue of bad input and faults: every case a user can cause fails before any job, or
inside the job, with one line naming the key / file / row and the fix (README "When things go
wrong" lists the same cases). Config cases call the validation function directly (no snakemake
start per case); `test_bad_config_schedules_nothing` shows the workflow refuses the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import require_or_skip
from tuneatlas.config import load_config, validate_config
from tuneatlas.data.prepare import load_raw_splits
from tuneatlas.errors import ConfigError, DataError, error_lines
from tuneatlas.plan import make_plan
from tuneatlas.preflight import preflight

REPO = Path(__file__).resolve().parents[2]

TRAIN = "sentence\tlabel\n" + "".join(f"word{i} good\t{i % 2}\n" for i in range(12))
DEV = "sentence\tlabel\n" + "".join(f"word{i} bad\t{i % 2}\n" for i in range(4))
MODEL_CONFIG = {"model_type": "bert", "hidden_size": 32, "max_position_embeddings": 64}


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    (tmp_path / "train.tsv").write_text(TRAIN)
    (tmp_path / "dev.tsv").write_text(DEV)
    local = tmp_path / "local-model"
    local.mkdir()
    (local / "config.json").write_text(json.dumps(MODEL_CONFIG))
    return {"train": tmp_path / "train.tsv", "dev": tmp_path / "dev.tsv", "local": local}


@pytest.fixture
def base(files) -> dict[str, Any]:
    """A small valid config touching every checked part: synthetic, file and imbalanced data,
    a built and a local model, S1 with keep_best, S3."""
    return {
        "seed": 0,
        "device": "cpu",
        "offline": True,
        "datasets": {
            "syn": {
                "source": "synthetic",
                "task": "sst2",
                "sizes": {"train": 200, "validation": 50},
            },
            "f": {
                "source": "file",
                "task": "sst2",
                "files": {"train": str(files["train"]), "validation": str(files["dev"])},
            },
            "imb": {
                "source": "synthetic",
                "task": "livedoor",
                "sizes": {"train": 900, "test": 270},
                "imbalance": {
                    "group_sizes": [60, 20, 5],
                    "classes_per_group": 3,
                    "test_per_class": 10,
                },
            },
        },
        "models": {
            "tiny": {
                "source": "build",
                "hidden_size": 32,
                "num_layers": 1,
                "num_heads": 2,
                "intermediate_size": 32,
                "vocab_size": 200,
                "max_position_embeddings": 64,
                "corpus": ["syn"],
            },
            "loc": {"source": "local", "name": str(files["local"])},
        },
        "train": {"max_length": 32},
        "studies": {
            "s1": {
                "model": "tiny",
                "datasets": ["syn", "f"],
                "seeds": [42],
                "train": {"keep_best": True},
            },
            "s3": {"model": "tiny", "dataset": "imb"},
        },
    }


def check(raw: dict[str, Any]) -> None:
    """What `tuneatlas validate` and the Snakefile run: schema, references, plan, preflight."""
    config = validate_config(raw)
    preflight(config, make_plan(config))


def test_the_base_config_is_valid(base):
    check(base)


def _set(path: str, value: Any) -> Callable[[dict, dict], None]:
    def mutate(c: dict, files: dict) -> None:
        *parents, last = path.split(".")
        node = c
        for p in parents:
            node = node[p]
        node[last] = value(files) if callable(value) else value

    return mutate


def _drop(path: str) -> Callable[[dict, dict], None]:
    def mutate(c: dict, files: dict) -> None:
        *parents, last = path.split(".")
        node = c
        for p in parents:
            node = node[p]
        del node[last]

    return mutate


def _write(which: str, content: bytes) -> Callable[[dict, dict], None]:
    return lambda c, files: files[which].write_bytes(content)


def _both(*mutations: Callable[[dict, dict], None]) -> Callable[[dict, dict], None]:
    def mutate(c: dict, files: dict) -> None:
        for m in mutations:
            m(c, files)

    return mutate


def _model_json(**extra: Any) -> Callable[[dict, dict], None]:
    return lambda c, files: (files["local"] / "config.json").write_text(
        json.dumps({**MODEL_CONFIG, **extra})
    )


S4_SMALL = {"num_layers": 4, "hidden_size": 32, "intermediate_size": 40, "num_heads": 2}


def _s4(**section: Any) -> Callable[[dict, dict], None]:
    """An S4 study over a small pre-training corpus; `section` overrides its keys."""

    def mutate(c: dict, files: dict) -> None:
        c["datasets"]["corpus"] = {
            "source": "synthetic",
            "task": "pretrain",
            "sizes": {"train": 50},
        }
        c["studies"]["s4"] = {
            "corpus": "corpus",
            "vocab_size": 300,
            "sizes": {"small": S4_SMALL},
            "ratios": [50],
            "positions": ["first"],
            "steps": 2,
            "batch_size": 4,
            **section,
        }

    return mutate


_hub_model = {"source": "hub", "name": "google-bert/bert-base-uncased"}
_hub_data = {"source": "hub", "task": "sst2"}

# (case id, mutation of the base config / its files, strings the message must contain)
CONFIG_CASES: list[tuple[str, Callable[[dict, dict], None], list[str]]] = [
    # schema: types, ranges, enums, unknown keys
    ("lr-yaml-string", _set("train.lr", "1e-3"), ["'train.lr'", "write 1.0e-3"]),
    ("lr-negative", _set("studies.s1.train.lr", -1.0), ["'studies.s1.train.lr'"]),
    ("batch-size-string", _set("train.batch_size", "32"), ["'train.batch_size'"]),
    ("unknown-train-key", _set("train.learning_rate", 1e-3), ["'train.learning_rate'", "unknown"]),
    ("unknown-top-key", _set("lrate", 1), ["'lrate'", "unknown key"]),
    ("schedule-enum", _set("train.schedule", "step"), ["'train.schedule'"]),
    ("precision-enum", _set("train.precision", "fp16"), ["'train.precision'"]),
    ("checkpoint-every", _set("train.checkpoint_every", "5 min"), ["'train.checkpoint_every'"]),
    (
        "checkpoint-every-negative",
        _set("train.checkpoint_every", -1),
        ["'train.checkpoint_every'", "allowed: When to write", '"none"', '"30min"'],
    ),
    ("warmup-negative", _set("train.warmup_epochs", -0.1), ["'train.warmup_epochs'"]),
    ("seeds-empty", _set("studies.s1.seeds", []), ["'studies.s1.seeds'"]),
    ("seeds-duplicate", _set("studies.s1.seeds", [1, 1]), ["'studies.s1.seeds'"]),
    ("device-enum", _set("device", "gpu"), ["'device'"]),
    ("model-no-hidden", _drop("models.tiny.hidden_size"), ["'models.tiny'", "hidden_size"]),
    ("resplit-two", _set("datasets.syn.resplit", [8, 2]), ["'datasets.syn.resplit'"]),
    # references
    ("unknown-task", _set("datasets.syn.task", "imagenet"), ["datasets.syn.task:", "known tasks"]),
    ("unknown-dataset", _set("studies.s1.datasets", ["syn", "nope"]), ["'studies.s1.datasets.1'"]),
    ("unknown-model", _set("studies.s1.model", "gpt5"), ["'studies.s1.model'", "defined: loc"]),
    ("unknown-corpus", _set("models.tiny.corpus", ["wiki"]), ["'models.tiny.corpus.0'"]),
    (
        "cross-not-dataset",
        _set("studies.s1.cross_datasets", ["imb"]),
        ["'studies.s1.cross_datasets.0'"],
    ),
    ("revision-built", _set("models.tiny.revision", "main"), ["'models.tiny.revision'"]),
    # ids become directory names and job arguments: a path step or a space is refused
    (
        "dataset-id-path",
        lambda c, f: c["datasets"].update({"../x": c["datasets"]["syn"]}),
        ["config key 'datasets.../x'", "unsafe id '../x'", "rename it"],
    ),
    (
        "dataset-id-space",
        lambda c, f: c["datasets"].update({"a b": c["datasets"]["syn"]}),
        ["config key 'datasets.a b'", "unsafe id 'a b'", "letters, digits"],
    ),
    (
        "model-id-dots",
        lambda c, f: c["models"].update({"x..y": c["models"]["tiny"]}),
        ["config key 'models.x..y'", "must not contain '..'"],
    ),
    # architecture arithmetic, value ranges the schema allows but the code cannot use
    ("heads-divide", _set("models.tiny.num_heads", 3), ["models.tiny.num_heads", "num_heads: 2"]),
    ("corpus-empty", _set("models.tiny.corpus", []), ["models.tiny.corpus", "at least one"]),
    ("model-dropout-1", _set("models.tiny.dropout", 1.0), ["models.tiny.dropout", "[0, 1)"]),
    ("train-dropout-1", _set("train.dropout", 1.0), ["train.dropout", "[0, 1)"]),
    ("s1-dropout-1", _set("studies.s1.train.dropout", 1), ["studies.s1.train.dropout"]),
    ("max-length-built", _set("train.max_length", 128), ["train.max_length", "<= 64", "'tiny'"]),
    (
        "max-length-study",
        _set("studies.s1.train.max_length", 100),
        ["studies.s1.train.max_length", "<= 64"],
    ),
    (
        "max-length-local",
        _both(_set("studies.s1.model", "loc"), _model_json(max_position_embeddings=16)),
        ["train.max_length", "16 positions", "'loc'"],
    ),
    # model directories and the hub
    ("local-missing", _set("models.loc.name", "/no/such/model"), ["models.loc.name", "not found"]),
    (
        "local-no-config",
        lambda c, f: (f["local"] / "config.json").unlink(),
        ["models.loc.name", "no readable config.json"],
    ),
    ("local-bad-json", lambda c, f: (f["local"] / "config.json").write_text("{"), ["models.loc"]),
    (
        "local-custom-code",
        _model_json(auto_map={"AutoModel": "modeling_x.X"}),
        ["models.loc.trust_remote_code", "auto_map"],
    ),
    ("hub-model-offline", _set("models.hub", _hub_model), ["models.hub.name", "offline: true"]),
    ("hub-data-offline", _set("datasets.hub", _hub_data), ["datasets.hub.source", "offline"]),
    (
        "streaming-no-budget",
        _both(_set("offline", False), _set("datasets.hub", {**_hub_data, "streaming": True})),
        ["datasets.hub.max_rows", "streaming"],
    ),
    # sources: keys, paths, split names
    ("file-missing", _set("datasets.f.files.train", "/no/train.tsv"), ["datasets.f.files.train"]),
    ("file-neither", _drop("datasets.f.files"), ["datasets.f", "exactly one of 'files'"]),
    ("file-both", _set("datasets.f.dir", "/tmp"), ["datasets.f", "exactly one of 'files'"]),
    ("sizes-on-file", _set("datasets.f.sizes", {"train": 5}), ["datasets.f", "'sizes'"]),
    (
        "dir-missing",
        _both(_drop("datasets.f.files"), _set("datasets.f.dir", "/no/dir")),
        ["datasets.f.dir"],
    ),
    (
        "split-name",
        _set("datasets.syn.sizes", {"train": 9, "dev2": 3}),
        ["datasets.syn.sizes", "'dev2'"],
    ),
    (
        "file-extension",
        _set("datasets.f.files.train", "/tmp/x.xls"),
        ["datasets.f.files.train", ".xls"],
    ),
    # data files seen at validation time
    (
        "header-only-resplit",
        _both(_set("datasets.f.resplit", [8, 1, 1]), _write("train", b"sentence\tlabel\n")),
        ["datasets.f.files.train", "header but no rows", "resplit"],
    ),
    (
        "header-only",
        _write("dev", b"sentence\tlabel\n"),
        ["datasets.f.files.validation", "no rows"],
    ),
    ("empty-file", _write("train", b""), ["datasets.f.files.train", "empty file"]),
    (
        "cr-only-header-only",  # CR line ends are read as lines (not one duplicate-column header)
        _write("dev", b"sentence\tlabel\r"),
        ["datasets.f.files.validation", "no rows"],
    ),
    (
        "duplicate-column",
        _write("train", b"sentence\tlabel\tlabel\nx\t0\t1\n"),
        ["datasets.f.files.train", "duplicate column", "'label'", ":1"],
    ),
    (
        "not-utf8",
        _write("dev", "sentence\tlabel\ncaf\u00e9\t1\n".encode("latin-1")),
        ["datasets.f.files.validation", "not UTF-8", "dev.tsv"],
    ),
    # imbalance arithmetic, splits a setting needs
    (
        "imbalance-groups",
        _set("datasets.imb.imbalance.classes_per_group", 2),
        ["datasets.imb.imbalance"],
    ),
    (
        "imbalance-train-rows",
        _set("datasets.imb.imbalance.group_sizes", [300, 20, 5]),
        ["datasets.imb.imbalance.group_sizes", "975 rows"],
    ),
    (
        "imbalance-test-rows",
        _set("datasets.imb.imbalance.test_per_class", 31),
        ["datasets.imb.imbalance.test_per_class", "at most 30"],
    ),
    (
        "keep-best-no-valid",
        _set("studies.s3.train", {"keep_best": True}),
        ["studies.s3.train.keep_best", "validation split"],
    ),
    ("cuda-missing", _set("device", "cuda"), ["(device)", "device: auto"]),
    # S4: a grid the code cannot build faithfully, a tokenizer that names nothing
    (
        "s4-not-parameter-matched",
        _s4(),  # 4 layers, hidden 32, FFN 40, default width_multiple 64 (the probe's case)
        ["'studies.s4.sizes.small'", "first_50 has 48,096", "51,232 (-6.1%)", "width_multiple"],
    ),
    (
        "s4-ratio-expands-nothing",
        _s4(ratios=[10], sizes={"small": {**S4_SMALL, "num_layers": 2}}, width_multiple=1),
        ["'studies.s4.ratios'", "size 'small' (2 layers)", "expands floor(20/100) = 0"],
    ),
    (
        "s4-one-document-corpus",
        _both(_s4(width_multiple=1), _set("datasets.corpus.sizes", {"train": 1})),
        ["'studies.s4.corpus'", "'corpus' has 1 training row(s), 2 needed"],
    ),
    (
        "s4-tokenizer-unknown",
        _s4(tokenizer="gpt9", width_multiple=1),
        ["'studies.s4.tokenizer'", "'gpt9' is neither 'build' nor a model id"],
    ),
]


@pytest.mark.parametrize(
    ("mutate", "expected"), [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES]
)
def test_bad_config_is_refused_naming_the_key(base, files, monkeypatch, mutate, expected):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a GPU machine
    mutate(base, files)
    with pytest.raises(ConfigError) as err:
        check(base)
    message = str(err.value)
    for part in expected:
        assert part in message, f"{part!r} not in: {message}"
    for line in error_lines(err.value):
        assert line.startswith("ERROR tuneatlas: ") and "\n" not in line


# ---------------------------------------------------------------------------------------------
# config files: duplicate keys, the YAML float hint, encodings


YAML_CASES = [
    ("dup-top", "seed: 0\nseed: 1\n", ["duplicate key 'seed'", "bad.yaml:2", "line 1"]),
    ("dup-nested", "train:\n  lr: 1.0e-3\n  lr: 5.0e-2\n", ["'lr'", "bad.yaml:3", "line 2"]),
    ("dup-flow", "train: {lr: 1.0e-3, lr: 2.0e-3}\n", ["duplicate key 'lr'", "bad.yaml:1"]),
    ("float-hint", "train:\n  lr: 1e-3\n", ["'train.lr'", "write 1.0e-3"]),
    ("float-hint-plus", "train:\n  eps: 1E8\n", ["'train.eps'", "write 1.0e+8"]),
    ("not-yaml", "train: [\n", ["not valid YAML"]),
    ("not-mapping", "- 1\n- 2\n", ["expected a mapping"]),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in YAML_CASES], ids=[c[0] for c in YAML_CASES]
)
def test_bad_config_file_is_refused_with_its_line(base, tmp_path, text, expected):
    rest = {k: v for k, v in base.items() if k not in ("seed", "train")}
    path = tmp_path / "bad.yaml"
    path.write_text(text if text.startswith("- ") else text + yaml.safe_dump(rest))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    for part in expected:
        assert part in str(err.value), str(err.value)


def test_config_file_with_a_bom_and_missing_file(base, tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump(base).encode())
    assert load_config(path)["seed"] == 0
    with pytest.raises(ConfigError, match=r"config file not found \(.*nope\.yaml\)"):
        load_config(tmp_path / "nope.yaml")


# ---------------------------------------------------------------------------------------------
# data files, read by the prepare job (the parts validation cannot see in a file's head)


def _rows(n: int = 3) -> list[dict[str, Any]]:
    return [{"sentence": f"word{i} good", "label": i % 2} for i in range(n)]


BOM = b"\xef\xbb\xbf"
JSONL = "".join(json.dumps(r) + "\n" for r in _rows()).encode()
CSV = ("sentence,label\n" + "".join(f"{r['sentence']},{r['label']}\n" for r in _rows())).encode()
TSV = ("sentence\tlabel\n" + "".join(f"{r['sentence']}\t{r['label']}\n" for r in _rows())).encode()

# (case id, file name, content, None = accepted (3 rows) or strings the error must contain)
DATA_CASES: list[tuple[str, str, bytes, list[str] | None]] = [
    ("jsonl-bom", "d.jsonl", BOM + JSONL, None),
    ("jsonl-array-bom", "d.json", BOM + json.dumps(_rows()).encode(), None),
    ("csv-bom", "d.csv", BOM + CSV, None),
    ("tsv-bom", "d.tsv", BOM + TSV, None),
    ("jsonl-crlf", "d.jsonl", JSONL.replace(b"\n", b"\r\n"), None),
    (
        "csv-duplicate-column",
        "d.csv",
        b"sentence,label,label\nx,0,1\n",
        ["d.csv", "line 1", "duplicate", "'label'"],
    ),
    (
        "tsv-duplicate-column",
        "d.tsv",
        b"sentence\tsentence\tlabel\nx\ty\t0\n",
        ["d.tsv", "line 1", "'sentence'"],
    ),
    (
        "jsonl-duplicate-field",
        "d.jsonl",
        JSONL + b'{"sentence": "a", "label": 0, "label": 1}\n',
        ["d.jsonl", "line 4", "duplicate field"],
    ),
    ("csv-not-utf8", "d.csv", b"sentence,label\ncaf\xe9,1\n", ["d.csv", "not UTF-8", "byte 18"]),
    (
        "jsonl-not-utf8",
        "d.jsonl",
        b'{"sentence": "caf\xe9", "label": 1}\n',
        ["d.jsonl", "not UTF-8"],
    ),
    ("tsv-not-utf8", "d.tsv", b"sentence\tlabel\ncaf\xe9\t1\n", ["d.tsv", "not UTF-8"]),
    ("csv-empty", "d.csv", b"", ["d.csv", "empty file"]),
    ("jsonl-empty", "d.jsonl", b"", ["d.jsonl", "empty file"]),
    ("tsv-empty", "d.tsv", b"", ["d.tsv", "empty file"]),
    ("csv-blank-lines", "d.csv", b"\n\n", ["d.csv", "no header line"]),
    ("csv-header-only", "d.csv", b"sentence,label\n", ["d.csv", "no data rows"]),
    ("tsv-header-only", "d.tsv", b"sentence\tlabel\n", ["d.tsv", "no data rows"]),
    ("jsonl-blank-only", "d.jsonl", b"\n \n", ["d.jsonl", "no data rows"]),
    ("jsonl-bad-line", "d.jsonl", JSONL + b"{oops\n", ["d.jsonl", "line 4", "invalid JSON"]),
    ("jsonl-not-object", "d.jsonl", JSONL + b"[1, 2]\n", ["d.jsonl", "line 4", "JSON object"]),
    ("jsonl-array-bad", "d.json", b'[{"sentence": "a"}, 3', ["d.json", "JSON array"]),
    ("tsv-stray-tab", "d.tsv", TSV + b"a\tb\t0\n", ["d.tsv", "line 5", "tab"]),
    ("csv-empty-text", "d.csv", CSV + b",1\n", ["d.csv", "row 4", "empty text"]),
    (
        "jsonl-label-range",
        "d.jsonl",
        JSONL + b'{"sentence": "a", "label": 7}\n',
        ["d.jsonl", "line 4"],
    ),
    ("jsonl-missing-column", "d.jsonl", b'{"text": "a", "label": 0}\n', ["d.jsonl", "'sentence'"]),
    ("unknown-extension", "d.xls", CSV, ["d.xls", "'.xls'"]),
]


@pytest.mark.parametrize(
    ("name", "content", "expected"), [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES]
)
def test_data_file_is_read_or_refused_naming_file_and_row(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    cfg = {"source": "file", "task": "sst2", "files": {"train": str(path)}}
    if expected is None:
        frames = load_raw_splits("d", cfg, seed=0)
        assert list(frames["train"]["text_a"]) == [r["sentence"] for r in _rows()]
        assert list(frames["train"]["label"]) == [0, 1, 0]
        return
    with pytest.raises(DataError) as err:
        load_raw_splits("d", cfg, seed=0)
    for part in expected:
        assert part in str(err.value), str(err.value)


def test_parquet_without_rows_or_with_duplicate_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    empty = tmp_path / "empty.parquet"
    pd.DataFrame(
        {"sentence": pd.Series([], dtype=str), "label": pd.Series([], dtype=int)}
    ).to_parquet(empty)
    twice = tmp_path / "twice.parquet"
    pq.write_table(
        pa.table(
            [pa.array(["a"]), pa.array([0]), pa.array([1])], names=["sentence", "label", "label"]
        ),
        twice,
    )
    for path, what in ((empty, "no data rows"), (twice, "duplicate column")):
        with pytest.raises(DataError, match=what):
            load_raw_splits(
                "d", {"source": "file", "task": "sst2", "files": {"train": str(path)}}, 0
            )


# ---------------------------------------------------------------------------------------------
# faults: disk full, one-line errors and the debug switch, CUDA, custom code, permissions


def _tuneatlas(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tuneatlas", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def test_cli_error_is_one_line_and_debug_shows_the_traceback(base, tmp_path):
    base["train"]["lr"] = "1e-3"
    base["models"]["tiny"]["num_heads"] = 3
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(base))
    proc = _tuneatlas("validate", str(path))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines == [line for line in lines if line.startswith("ERROR tuneatlas: ")], proc.stderr
    assert any("'train.lr'" in line and "1.0e-3" in line for line in lines)
    assert "Traceback" not in proc.stderr
    # schema errors come first; the preflight ones show once the schema passes
    base["train"]["lr"] = 1.0e-3
    path.write_text(yaml.safe_dump(base))
    proc = _tuneatlas("validate", str(path))
    assert proc.stderr.strip().splitlines() == [
        line for line in proc.stderr.strip().splitlines() if "models.tiny.num_heads" in line
    ]
    debug = _tuneatlas("validate", str(path), env={"TUNEATLAS_DEBUG": "1"})
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr


def test_unexpected_errors_are_one_line_too(tmp_path):
    proc = _tuneatlas("table", "s1.t1", "--spec", "{}", "--out", str(tmp_path / "t.parquet"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line == "ERROR tuneatlas: 'runs' [KeyError; set TUNEATLAS_DEBUG=1 for the traceback]"


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs when running as root; else a simulated ENOSPC (see `full_disk`)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        require_or_skip(
            "tmpfs", "mounting a tmpfs needs root; test_disk_full_simulated covers the path"
        )
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode:
        require_or_skip("tmpfs", f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=True)  # torch may hold a map


def test_disk_full_keeps_the_previous_checkpoint_and_says_so(small_disk):
    import torch

    from tuneatlas.engine.checkpoint import CKPT_FILE, save_checkpoint

    ckpt = small_disk / "run" / "checkpoint"
    save_checkpoint(ckpt, {"step": 1, "w": torch.zeros(1000)})
    with pytest.raises(OSError) as err:
        save_checkpoint(ckpt, {"step": 2, "w": torch.zeros(200_000)})  # 800 kB > 256 KiB
    (line,) = error_lines(err.value)
    assert line.startswith(f"ERROR tuneatlas: no space left on device: {ckpt / CKPT_FILE};")
    assert "the previous checkpoint is intact" in line
    kept = torch.load(ckpt / CKPT_FILE, weights_only=True)
    assert kept["step"] == 1 and sorted(p.name for p in ckpt.iterdir()) == [CKPT_FILE]


def test_disk_full_in_a_prepare_job_is_one_line(small_disk):
    spec = json.dumps({"source": "synthetic", "task": "sst2", "sizes": {"train": 20000}})
    proc = _tuneatlas(
        "prepare", "--name", "sst2", "--spec", spec, "--out", str(small_disk / "sst2")
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"ERROR tuneatlas: no space left on device: {small_disk / 'sst2' / 'train.parquet'};"
        )
    )
    assert list((small_disk / "sst2").iterdir()) == []  # no truncated file left behind


def test_disk_full_simulated(tmp_path, monkeypatch):
    """The same path without root: torch's zip writer fails as it does on a full disk."""
    import torch

    from tuneatlas.engine.checkpoint import CKPT_FILE, save_checkpoint

    ckpt = tmp_path / "checkpoint"
    save_checkpoint(ckpt, {"step": 1})

    def full(obj, f, *a, **k):
        Path(f).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError) as err:
        save_checkpoint(ckpt, {"step": 2})
    assert error_lines(err.value)[0].startswith(
        f"ERROR tuneatlas: no space left on device: {ckpt / CKPT_FILE}"
    )
    monkeypatch.undo()
    assert torch.load(ckpt / CKPT_FILE, weights_only=True)["step"] == 1


def test_cuda_without_cuda_fails_in_the_job_with_one_line(monkeypatch):
    import torch

    from tuneatlas.engine.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"CUDA is not available.*'device'.*device: auto"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_a_tokenizer_without_end_of_text_is_refused_when_packing(tmp_path):
    """A BERT tokenizer has no end-of-text token: it maps one to [UNK], so packing must refuse
    rather than separate documents by [UNK] (the probe's case (b))."""
    from transformers import BertTokenizerFast

    from tuneatlas.data.tokens import pack

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]) + "\n")
    bert = BertTokenizerFast(vocab_file=str(vocab))
    assert bert.convert_tokens_to_ids("<|endoftext|>") == bert.unk_token_id  # the trap
    with pytest.raises(ValueError) as err:
        pack(["a b", "b a", "a a"], bert, tmp_path)
    (line,) = error_lines(err.value)
    assert "no end-of-text token" in line and "studies.s4.tokenizer" in line
    assert not list(tmp_path.glob("*.bin"))


def _custom_code_model(src: Path, out: Path) -> None:
    """A local model whose config.json names its own classes (auto_map), as hub repos with
    custom code do."""
    import shutil

    shutil.copytree(src, out)
    (out / "configuration_tiny.py").write_text(
        "from transformers import BertConfig\n\n\nclass TinyConfig(BertConfig):\n"
        '    model_type = "tiny-custom"\n'
    )
    (out / "modeling_tiny.py").write_text(
        "from transformers import BertModel\n\nfrom .configuration_tiny import TinyConfig\n\n\n"
        "class TinyModel(BertModel):\n    config_class = TinyConfig\n"
    )
    config = json.loads((out / "config.json").read_text())
    config["model_type"] = "tiny-custom"
    config["auto_map"] = {
        "AutoConfig": "configuration_tiny.TinyConfig",
        "AutoModel": "modeling_tiny.TinyModel",
    }
    (out / "config.json").write_text(json.dumps(config))


def test_trust_remote_code_reaches_fine_tuning_and_permissions_follow_the_umask(tmp_path):
    from tests.factories import train_spec
    from tuneatlas.data.tasks import get_task
    from tuneatlas.engine.recipes.mlm import build_bert
    from tuneatlas.models.classifier import SequenceClassifier, build_classifier
    from tuneatlas.models.hub import fetch_model

    tiny = {
        "hidden_size": 32,
        "num_layers": 1,
        "num_heads": 2,
        "intermediate_size": 32,
        "vocab_size": 120,
        "max_position_embeddings": 32,
    }
    texts = [f"word{i} good bad" for i in range(60)]
    build_bert(tiny, texts, tmp_path / "built", seed=0)
    _custom_code_model(tmp_path / "built", tmp_path / "custom")
    fetched = fetch_model(
        str(tmp_path / "custom"), tmp_path / "models" / "custom", trust_remote_code=True
    )
    spec = train_spec(model="custom", trust_remote_code=True)  # the config's grant
    model = build_classifier(spec, get_task("sst2"), fetched, None)
    assert type(model.encoder).__name__ == "TinyModel" and model.trust_remote_code
    model.save(tmp_path / "run" / "model")
    again = SequenceClassifier.load(tmp_path / "run" / "model", trust_remote_code=True)
    assert type(again.encoder).__name__ == "TinyModel"
    # the directories' JSON says trust_remote_code: true, the config does not: refused
    for refused in (
        lambda: build_classifier(train_spec(model="custom"), get_task("sst2"), fetched, None),
        lambda: SequenceClassifier.load(tmp_path / "run" / "model"),
    ):
        with pytest.raises(ConfigError) as err:
            refused()
        (line,) = error_lines(err.value)
        assert "records trust_remote_code: true but the config does not grant it" in line
        assert "models.<id>.trust_remote_code" in line
    umask = os.umask(0)
    os.umask(umask)
    for directory in (tmp_path / "built", fetched, tmp_path / "run" / "model"):
        assert directory.stat().st_mode & 0o777 == 0o777 & ~umask, directory
        weights = directory / "model.safetensors"
        assert weights.stat().st_mode & 0o777 == 0o666 & ~umask, weights


def test_atomic_dir_follows_a_strict_umask_too(tmp_path, monkeypatch):
    from tuneatlas import io

    monkeypatch.setattr(io, "_UMASK", 0o077)
    with io.atomic_dir(tmp_path / "out") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "f").write_text("x")
        (tmp / "run.sh").write_text("#!/bin/sh\n")
        (tmp / "run.sh").chmod(0o755)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "out" / "sub" / "f").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "out" / "run.sh").stat().st_mode & 0o777 == 0o700


def test_bad_config_schedules_nothing(base, files, tmp_path):
    """The workflow runs the same checks before scheduling: a header-only train file with
    resplit, and a duplicate key, stop a dry run with the message and no job."""
    from tests.support import snakemake

    base["datasets"]["f"]["resplit"] = [8, 1, 1]
    files["train"].write_text("sentence\tlabel\n")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(base))
    proc = snakemake(tmp_path / "work", "--configfile", str(path), "-n", check=False)
    assert proc.returncode != 0
    assert "datasets.f.files.train" in proc.stdout and "header but no rows" in proc.stdout
    assert "Job stats" not in proc.stdout and "rule " not in proc.stdout
    files["train"].write_text(TRAIN)
    path.write_text(yaml.safe_dump(base).replace("seed: 0\n", "seed: 0\nseed: 1\n"))
    proc = snakemake(tmp_path / "work", "--configfile", str(path), "-n", check=False)
    assert proc.returncode != 0 and "duplicate key 'seed'" in proc.stdout
    assert "Job stats" not in proc.stdout


def test_counts_of_the_catalogue():
    """The README's table and the issue ask for at least 40 config and 20 data-file cases."""
    assert len(CONFIG_CASES) + len(YAML_CASES) >= 40 and len(CONFIG_CASES) >= 40
    assert len(DATA_CASES) >= 20
    assert len({c[0] for c in CONFIG_CASES}) == len(CONFIG_CASES)
    assert np.all([bool(c[2]) for c in CONFIG_CASES])


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("lrs", [2.0e-3, 2.04e-3], "optim.lr 0.002 vs 0.00204 differ but print alike"),
        (
            "simcse",
            {"dropouts": [0.1, 0.1000001], "lr": 1.0e-3, "batch_size": 32, "max_length": 24},
            "dropout 0.1 vs 0.1000001 differ but print alike",
        ),
    ],
    ids=["s2-lrs", "s2-dropouts"],
)
def test_grid_values_that_print_alike_say_which_values_collide(key, value, expected):
    """Two grid values that give one run id: the message names the values and the way out."""
    raw = yaml.safe_load((REPO / "tests/workflow/tiny.yaml").read_text())
    raw["studies"]["s2"][key] = value
    raw["studies"]["s2"]["fisher"]["lrs"] = [2.0e-3]
    with pytest.raises(ConfigError) as err:
        check(raw)
    (line,) = error_lines(err.value)
    assert "(studies.s2)" in line and expected in line and "differ in the digits" in line


def test_a_cr_only_tsv_passes_validation_and_loads(base, files):
    """Classic Mac line ends (CR alone): validation reads the lines as the reader does."""
    files["train"].write_bytes(TRAIN.replace("\n", "\r").encode())
    check(base)
    train = load_raw_splits("f", base["datasets"]["f"], seed=0)["train"]
    assert len(train) == 12 and list(train.columns[:2]) != ["0\rthe"]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda c: c["datasets"]["sentences"].update(sizes={"train": 1}),
            "config key 'studies.s2.corpus': dataset 'sentences' has 1 training row(s), 2 needed",
        ),
        (
            lambda c: c["studies"]["s2"]["fisher"].update(batch_size=2000),
            "config key 'studies.s2.fisher.batch_size': dataset 'sst2' has 1200 training row(s),"
            " 2000 needed",
        ),
    ],
    ids=["s2-one-sentence-corpus", "s2-fisher-batch-over-train"],
)
def test_s2_row_counts_a_job_would_find_too_small_fail_at_validation(mutate, expected):
    raw = yaml.safe_load((REPO / "tests/workflow/tiny.yaml").read_text())
    mutate(raw)
    with pytest.raises(ConfigError) as err:
        check(raw)
    assert expected in str(err.value)


def test_a_damaged_parquet_output_says_to_delete_it_and_rerun(tmp_path):
    path = tmp_path / "eval.parquet"
    path.write_bytes(b"PAR1 cut short")
    with pytest.raises(ValueError) as err:
        pd.read_parquet(path)
    (line,) = error_lines(err.value)
    assert str(path) in line and "Delete that file and rerun the same command" in line
