"""REPRO: each finding holds on a hand-made table and fails on a doctored one; the value
matcher's three verdicts; compare on a results/ with one study's tables."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tuneatlas.cli import main
from tuneatlas.config import load_config
from tuneatlas.io import read_parquet_meta, write_parquet
from tuneatlas.plan import make_plan
from tuneatlas.studies import findings as F
from tuneatlas.studies import repro


@dataclass(frozen=True)
class Value:
    """The fields of tuneatlas.studies.published.PublishedValue that REPRO reads (the
    contract's), so these tests carry their own published values."""

    study: str
    id: str
    artifact: str
    setting: dict[str, Any]
    value: float
    std: float | None = None
    source: str = "Table 1"
    quantity: str = "accuracy"
    column: str = "value"
    n_seeds: int | None = None
    note: str | None = None
    paper: str = "a paper"
    seed_file: str = "000.txt"
    extra: dict[str, Any] = field(default_factory=dict)


# --- hand-made tables where each claim holds -------------------------------------------------
def s1_t2(best: float = 0.93, everything: float = 0.935) -> pd.DataFrame:
    rows = [("all", 0, "all", everything), ("exhaustive", 1, "3,7", best)]
    return pd.DataFrame(
        [
            {"task": "sst2", "metric": "accuracy", "mode": m, "sample_size": 1, "rank": r}
            | {"dims": d, "split": "test", "value": v}
            for m, r, d, v in rows
        ]
    )


def s1_fl(scores=(0.5, 0.55, 0.6, 0.9, 0.92)) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "task": "sst2",
            "metric": "accuracy",
            "layer": range(len(scores)),
            "split": "valid",
            "stat": "best_valid",
            "value": scores,
        }
    )


def s1_t4(frozen: float = 0.78) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "task": "sst2",
            "metric": "accuracy",
            "setting": ["frozen_2fc", "unfrozen_1fc"],
            "split": "test",
            "seed": 42,
            "value": [frozen, 0.948],
        }
    )


def s2_t1(vanilla_low: int = 7, vanilla_high: int = 25, simcse_low: int = 0) -> pd.DataFrame:
    cells = [
        ("vanilla", 1e-5, vanilla_low),
        ("vanilla", 2e-5, vanilla_high),
        ("simcse-p0.1", 1e-5, simcse_low),
        ("simcse-p0.1", 2e-5, 14),
    ]
    return pd.DataFrame(
        [{"model": m, "lr": lr, "failures": f, "n_seeds": 30} for m, lr, f in cells]
    )


def s2_f4(failed_erank: float = 0.2) -> pd.DataFrame:
    rows = []
    for run, failed in (("a", True), ("b", False)):
        for step in (0, 10):
            for layer in range(4):
                value = failed_erank if failed and step == 10 else 0.8
                rows.append({"run": run, "step": step, "layer": layer, "value": value})
                rows[-1]["failed"] = failed
    return pd.DataFrame(rows)


def s3_t1(small_share: float = 0.2) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "D": [2.0, 2.0, 2.0],
            "label": [None, 0, 1],
            "group": [None, "400/class", "10/class"],
            "share": [0.5, 0.8, small_share],
        }
    )


def s3_f8(ari: float = 1.0) -> pd.DataFrame:
    return pd.DataFrame(
        {"method": ["trajectory", "final"], "point": [0, 0], "cluster": 0, "ari_between": ari}
    )


def s4_t1(top=("final_90", "middle_90", "middle_70")) -> pd.DataFrame:
    return pd.DataFrame(
        {"size": "285M", "rank": [1, 2, 3], "variant": list(top), "mean_ri": [3.4, 2.6, 2.1]}
    )


def s5_t1(monju: float = 0.9404) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "model": ["ensemble-seeds", "ensemble-monju"],
            "value": [0.9418, monju],
            "ci_low": [0.93, 0.92],
            "ci_high": [0.955, 0.95],
        }
    )


CASES = [
    # (check, artifact, table where the claim holds, doctored table where it fails)
    (F.s1_pair_matches_all, "S1.T2", s1_t2(), s1_t2(best=0.85)),
    (F.s1_layers_drop, "S1.FL", s1_fl(), s1_fl((0.9, 0.91, 0.9, 0.9, 0.91))),
    (F.s1_frozen_behind, "S1.T4", s1_t4(), s1_t4(frozen=0.94)),
    (F.s2_vanilla_fails_more_at_high_lr, "S2.T1", s2_t1(), s2_t1(vanilla_high=3)),
    (F.s2_simcse_fails_less, "S2.T1", s2_t1(), s2_t1(simcse_low=9)),
    (F.s2_failed_runs_lose_erank, "S2.F4", s2_f4(), s2_f4(failed_erank=0.79)),
    (F.s3_small_classes_stay_less, "S3.T1", s3_t1(), s3_t1(small_share=0.9)),
    (F.s3_trajectory_clusters_agree, "S3.F8", s3_f8(), s3_f8(ari=0.4)),
    (F.s4_top_variants, "S4.T1", s4_t1(), s4_t1(("first_90", "middle_90", "final_30"))),
    (F.s5_monju_within_seeds, "S5.T1", s5_t1(), s5_t1(monju=0.90)),
]


@pytest.mark.parametrize(
    "check, artifact, holds, doctored", CASES, ids=[c[0].__name__ for c in CASES]
)
def test_finding_holds_and_fails(check, artifact, holds, doctored):
    verdict, evidence, _ = check({artifact: holds})
    assert verdict == F.HOLDS, evidence
    verdict, evidence, _ = check({artifact: doctored})
    assert verdict == F.FAILS, evidence
    assert evidence  # our numbers in words


def test_every_finding_is_untestable_without_its_table():
    rows = F.findings_rows({})
    assert len(rows) == len(F.FINDINGS) and {r["study"] for r in rows} == set(repro.STUDIES)
    assert all(r["verdict"] == F.UNTESTABLE and "missing" in r["reason"] for r in rows)


def test_s1_pair_is_untestable_without_sst2():
    table = s1_t2().assign(task="mrpc")
    verdict, _, reason = F.s1_pair_matches_all({"S1.T2": table})
    assert verdict == F.UNTESTABLE and "SST-2" in reason


def test_s2_erank_needs_failed_and_successful_runs():
    table = s2_f4().assign(failed=False)
    verdict, _, reason = F.s2_failed_runs_lose_erank({"S2.F4": table})
    assert verdict == F.UNTESTABLE and "0 failed of 2" in reason


# --- the value matcher -----------------------------------------------------------------------
def t1_table() -> pd.DataFrame:
    """S1.T1 with three seeds on SST-2/CLS (mean 0.95) and one run on RTE/CLS (0.60)."""
    seeds = [{"task": "sst2", "pooling": "cls", "seed": s, "value": v} for s, v in
             [(0, 0.94), (1, 0.95), (2, 0.96)]]  # fmt: skip
    return pd.DataFrame([*seeds, {"task": "rte", "pooling": "cls", "seed": 0, "value": 0.60}])


PUBLISHED = {
    "s1": [
        Value("s1", "sst2-cls", "S1.T1", {"task": "sst2", "pooling": "cls"}, 0.948),
        Value("s1", "sst2-far", "S1.T1", {"task": "sst2", "pooling": "cls"}, 0.80),
        Value("s1", "rte-cls", "S1.T1", {"task": "rte", "pooling": "cls"}, 0.675),
        Value("s1", "rte-near", "S1.T1", {"task": "rte", "pooling": "cls"}, 0.595),
        Value("s1", "rte-std", "S1.T1", {"task": "rte", "pooling": "cls"}, 0.675, std=0.08),
        Value("s1", "cola-cls", "S1.T1", {"task": "cola", "pooling": "cls"}, 0.531),
    ],
    "s2": [Value("s2", "t1", "S2.T1", {"model": "vanilla"}, 0.646)],  # no S2 table here
}


def test_value_matcher_verdicts():
    df = repro.repro_table({"S1.T1": t1_table()}, PUBLISHED, {"s1": None})
    assert list(df.columns) == repro.REPRO_COLUMNS
    df = df.set_index("id")
    assert set(df["study"]) == {"s1"}  # S2 has no table: not compared
    sst2 = df.loc["sst2-cls"]
    assert sst2["ours"] == pytest.approx(0.95)
    assert sst2["ours_low"] < 0.948 < sst2["ours_high"] <= 1.0  # t-interval over seeds
    assert sst2["verdict"] == repro.MATCH and df.loc["sst2-far", "verdict"] == repro.DIFFERS
    # one run: no interval, |delta| against the tolerance or the paper's std
    assert pd.isna(df.loc["rte-cls", "ours_low"]) and df.loc["rte-cls", "verdict"] == "differs"
    assert df.loc["rte-near", "verdict"] == repro.MATCH
    assert df.loc["rte-std", "verdict"] == repro.MATCH
    assert df.loc["rte-cls", "delta"] == pytest.approx(0.60 - 0.675)
    assert df.loc["cola-cls", "verdict"] == repro.NOT_COMPARABLE
    assert "no row" in df.loc["cola-cls", "reason"]


def test_value_matcher_not_comparable_at_toy_scale():
    reason = "toy scale: model bert-tiny is built here"
    df = repro.repro_table({"S1.T1": t1_table()}, PUBLISHED, {"s1": reason})
    compared = df[df["ours"].notna()]
    assert (compared["verdict"] == repro.NOT_COMPARABLE).all()
    assert (compared["reason"] == reason).all()


def test_plan_says_toy_scale_from_the_config(repo):
    plan = make_plan(load_config(repo / "tests" / "workflow" / "tiny.yaml"))
    s1 = plan.repro["s1"]
    assert s1["not_comparable"].startswith("toy scale:") and "is built here" in s1["not_comparable"]
    assert "results/tables/s1_t2.parquet" in s1["tables"]
    assert "results/tables/findings.parquet" in plan.final_outputs()
    paper = make_plan(load_config(repo / "paper.yaml"))
    assert {s["not_comparable"] for s in paper.repro.values()} == {None}


# --- compare on partial results --------------------------------------------------------------
@pytest.fixture
def one_study_results(tmp_path, monkeypatch) -> Path:
    """A results/ holding only S1's tables, and published values served without the files."""
    tables = tmp_path / "tables"
    tables.mkdir()
    write_parquet(s1_t2(), tables / "s1_t2.parquet")
    write_parquet(t1_table(), tables / "s1_t1.parquet")
    fake = types.ModuleType("tuneatlas.studies.published")
    fake.all_published = lambda: PUBLISHED
    monkeypatch.setitem(sys.modules, "tuneatlas.studies.published", fake)
    return tmp_path


def test_compare_names_the_missing_studies(one_study_results, capsys):
    main(["compare", "--results", str(one_study_results)])
    out = capsys.readouterr().out
    assert "S1.pair" in out and "holds" in out
    assert "Missing (no tables yet): s2, s3, s4, s5" in out
    main(["compare", "--results", str(one_study_results), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["missing_studies"] == ["s2", "s3", "s4", "s5"]
    assert {f["study"] for f in result["findings"]} == {"s1"}
    # without a config the scale is unknown: nothing claims a match
    assert result["values"]["s1"] == {repro.NOT_COMPARABLE: 6}


def test_repro_tables_and_figures_from_one_study(one_study_results, tmp_path):
    out = [tmp_path / "repro.parquet", tmp_path / "findings.parquet"]
    spec = {"s1": {"tables": [], "not_comparable": None}, "s3": {"tables": []}}
    spec["s3"]["not_comparable"] = "toy scale: dataset topics is synthetic"
    main(["repro", "tables", "--spec", json.dumps(spec), "--results", str(one_study_results)]
         + ["--out", *map(str, out)])  # fmt: skip
    meta = read_parquet_meta(out[0])
    assert json.loads(meta["missing_studies"]) == ["s3"] and meta["git_commit"]
    findings = pd.read_parquet(out[1])
    assert set(findings["study"]) == {"s1"}
    assert list(findings.columns) == repro.FINDINGS_COLUMNS
    figures = [tmp_path / "repro.png", tmp_path / "findings.png"]
    main(["repro", "figures", "--table", *map(str, out), "--out", *map(str, figures)])
    assert all(f.stat().st_size > 0 for f in figures)
