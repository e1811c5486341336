"""What the workflow declares as inputs and records as lineage (DESIGN principle 8)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tuneatlas.cli import main
from tuneatlas.data.prepare import local_source_files
from tuneatlas.errors import DataError
from tuneatlas.io import read_parquet_meta, stable_hash, write_parquet, write_yaml
from tuneatlas.studies.registry import input_spec_hashes


def test_local_source_files_of_files_dir_and_facts(tmp_path):
    cfg = {"source": "file", "task": "sst2", "files": {"train": "a.tsv", "validation": "~/b.tsv"}}
    files = local_source_files("d", cfg)
    assert list(files) == ["files.train", "files.validation"]
    assert files["files.validation"].is_absolute()  # ~ expanded, as prepare reads it
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n")
    (tmp_path / "dev.csv").write_text("sentence,label\n")
    (tmp_path / "notes.txt.bak").write_text("")
    files = local_source_files("d", {"source": "file", "task": "sst2", "dir": str(tmp_path)})
    assert files == {"dir/valid": tmp_path / "dev.csv", "dir/train": tmp_path / "train.tsv"}
    with pytest.raises(DataError, match=r"datasets\.d\.dir: .* is not a directory"):
        local_source_files("d", {"source": "file", "task": "sst2", "dir": str(tmp_path / "x")})
    assert local_source_files("d", {"source": "synthetic", "task": "sst2"}) == {}
    hub = {"source": "hub", "task": "wiki", "facts": "facts.tsv"}
    assert list(local_source_files("d", hub)) == ["facts"]


def test_input_spec_hashes_prefer_the_eval_metadata(tmp_path):
    spec = {"run": "r2", "lr": 1e-3}
    write_parquet(pd.DataFrame({"x": [1]}), tmp_path / "runs/r1/eval.parquet", {"spec_hash": "a"})
    write_yaml(spec, tmp_path / "runs/r2/spec.yaml")
    target = {"runs": ["r1"], "embeddings": ["r2"], "subsets": ["r2"], "params": {}}
    assert input_spec_hashes(target, tmp_path) == {"r1": "a", "r2": stable_hash(spec)}
    assert input_spec_hashes({"runs": ["r3"]}, tmp_path) == {"r3": "unknown"}


def test_table_metadata_takes_the_config_hash_from_the_environment(tmp_path, monkeypatch):
    import tuneatlas.studies.registry as registry

    monkeypatch.setattr(registry, "build_table", lambda a, s, r: pd.DataFrame({"x": [1]}))
    monkeypatch.setenv("TUNEATLAS_CONFIG_HASH", "0123456789ab")
    spec = {"runs": [], "embeddings": [], "params": {"study": "s1"}}
    out = tmp_path / "t.parquet"
    main(
        [
            "table",
            "S1.T1",
            "--spec",
            json.dumps(spec),
            "--results",
            str(tmp_path),
            "--out",
            str(out),
        ]
    )
    meta = read_parquet_meta(out)
    assert meta["config_hash"] == "0123456789ab"
    assert meta["spec_hash"] == stable_hash(spec)
    assert json.loads(meta["input_spec_hashes"]) == {}
