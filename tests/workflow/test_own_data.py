"""examples/own-data.yaml end to end: a CSV with string labels, a task declared in the config,
a model the workflow builds, S1's subset table (README "Use your own data and model")."""

from __future__ import annotations

import shutil

import pandas as pd

from tests.support import REPO, snakemake

EXAMPLE = REPO / "examples" / "own-data.yaml"
CSV = REPO / "examples" / "data" / "own-news.csv"


def test_own_data_example_runs_s1(tmp_path):
    (tmp_path / "examples" / "data").mkdir(parents=True)
    shutil.copy(CSV, tmp_path / "examples" / "data" / CSV.name)
    snakemake(
        tmp_path, "--configfile", str(EXAMPLE), "--cores", "2", "results/tables/s1_t2.parquet"
    )
    # string labels became the declared ids: sports 0, tech 1, food 2, counts as in the file
    raw = pd.read_csv(CSV)
    prepared = pd.concat(
        pd.read_parquet(tmp_path / "results" / "data" / "news" / f"{s}.parquet")
        for s in ("train", "valid", "test")
    )
    ids = {"sports": 0, "tech": 1, "food": 2}
    assert prepared["label"].value_counts().to_dict() == (
        raw["topic"].map(ids).value_counts().to_dict()
    )
    table = pd.read_parquet(tmp_path / "results" / "tables" / "s1_t2.parquet")
    assert set(table["task"]) == {"news"} and set(table["metric"]) == {"accuracy"}
    full = table[(table["mode"] == "all") & (table["split"] == "test")]["value"].item()
    majority = raw["topic"].value_counts().max() / len(raw)
    assert full > majority + 0.2  # the fine-tune learnt the topics, well above chance
