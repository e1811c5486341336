"""Atomic writers and provenance metadata."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from tuneatlas.io import (
    atomic_path,
    load_tensors,
    provenance,
    read_parquet_meta,
    remove_interrupted_writes,
    save_tensors,
    stable_hash,
    write_parquet,
)


def test_parquet_round_trip_keeps_provenance(tmp_path):
    df = pd.DataFrame({"task": ["sst2", "cola"], "value": [0.9, 0.5]})
    path = write_parquet(df, tmp_path / "t.parquet", provenance("abc123", artifact="S1.T1"))
    pd.testing.assert_frame_equal(pd.read_parquet(path), df)
    meta = read_parquet_meta(path)
    assert meta["config_hash"] == "abc123" and meta["artifact"] == "S1.T1"
    assert meta["version"] == __import__("tuneatlas").__version__
    assert meta["git_commit"]


def test_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("finished result")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half writ")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "finished result"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_writes_cut_short_by_a_kill_are_swept_and_nothing_else(tmp_path):
    target = tmp_path / "state.pt"
    target.write_text("last good checkpoint")
    (tmp_path / "state.pt.bak").write_text("a user's file")
    (tmp_path / ".other.pt.abc").write_text("another file's write")
    killed = atomic_path(target, ".pt")
    tmp = killed.__enter__()  # never exited: what SIGKILL leaves behind
    tmp.write_text("half writ")
    remove_interrupted_writes(target)
    assert not tmp.exists()
    assert target.read_text() == "last good checkpoint"
    assert sorted(os.listdir(tmp_path)) == [".other.pt.abc", "state.pt", "state.pt.bak"]


def test_tensors_round_trip(tmp_path):
    arrays = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.array([1, 2], dtype=np.int64),
    }
    save_tensors(arrays, tmp_path / "x.safetensors")
    back = load_tensors(tmp_path / "x.safetensors")
    for key, value in arrays.items():
        np.testing.assert_array_equal(back[key], value)


def test_stable_hash_ignores_key_order():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
