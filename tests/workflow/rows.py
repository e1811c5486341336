"""Table rows checked against the run files they summarise (S1.T1/T4/T5/TA2, S4.T2): each value
is looked up in the run's own `eval.parquet` / `lm_eval/<run>.parquet` and the relative
improvement recomputed, independently of `tuneatlas.studies`."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest


def _eval(results: Path, run: str, split: str, metric: str) -> float:
    ev = pd.read_parquet(results / "runs" / run / "eval.parquet")
    hit = ev[(ev["split"] == split) & (ev["metric"] == metric)]
    assert len(hit) == 1, f"{run}: {split}/{metric} rows: {len(hit)}"
    return float(hit["value"].item())


def _check(table: pd.DataFrame, run_of, results: Path, name: str) -> int:
    assert len(table) > 0, name
    for row in table.itertuples(index=False):
        own = _eval(results, run_of(row), row.split, row.metric)
        assert row.value == own, f"{name} row {row}: the run's {run_of(row)} eval says {own}"
    return len(table)


def check_s1_rows(results: Path) -> int:
    """Every row of S1.T1, S1.T4, S1.T5 and S1.TA2 is its run's own final score."""
    tables = {t: pd.read_parquet(results / "tables" / f"{t}.parquet") for t in
              ("s1_t1", "s1_t4", "s1_t5", "s1_ta2")}  # fmt: skip
    suffix = {"cls": "", "maxnorm": "-maxnorm", "unfrozen_1fc": "", "frozen_2fc": "-frozen"}
    n = _check(
        tables["s1_t1"], lambda r: f"s1-{r.task}{suffix[r.pooling]}-s{r.seed}", results, "T1"
    )
    n += _check(
        tables["s1_t4"], lambda r: f"s1-{r.task}{suffix[r.setting]}-s{r.seed}", results, "T4"
    )
    n += _check(
        tables["s1_ta2"], lambda r: f"s1-{r.task}{suffix[r.pooling]}-s{r.seed}", results, "TA2"
    )

    def cross(r) -> str:  # task_a fine-tuned first, then task_b, scored on task_b
        return f"s1-{r.task_a}-s{r.seed}" if r.task_a == r.task_b else (
            f"s1-{r.task_a}-then-{r.task_b}-s{r.seed}"
        )  # fmt: skip

    return n + _check(tables["s1_t5"], cross, results, "T5")


def check_s4_t2_rows(results: Path) -> int:
    """Every S4.T2 score is the run's lm-eval value; RI = (score - base) / base x 100 against
    the baseline of the size, sign flipped for perplexities (lower is better)."""
    t2 = pd.read_parquet(results / "tables" / "s4_t2.parquet")
    assert len(t2) > 0

    def score(size: str, variant: str, task: str, metric: str) -> float:
        ev = pd.read_parquet(results / "lm_eval" / f"s4-{size}-{variant}.parquet")
        hit = ev[(ev["task"] == task) & (ev["metric"] == metric)]
        return float(hit["value"].iloc[0])

    for r in t2.itertuples(index=False):
        own = score(r.size, r.variant, r.task, r.metric)
        assert r.score == own, f"S4.T2 row {r}: lm_eval/s4-{r.size}-{r.variant} says {own}"
        base = score(r.size, "baseline", r.task, r.metric)
        if base == 0:
            continue  # RI undefined (a toy zsRE baseline scores 0): the table's own rule
        sign = -1.0 if "perplexity" in r.metric else 1.0
        assert r.ri == pytest.approx(sign * (own - base) / base * 100, rel=1e-9), r
    return len(t2)
