"""REPRO: our numbers beside the papers' (repro.parquet) and the papers' claims checked
(findings.parquet), with their figures.

`repro_table` matches every published value (tuneatlas.studies.published) to the rows of our
artifact table its `setting` names; `findings_table` runs the checks of
tuneatlas.studies.findings. Both take whatever artifact tables exist: only the studies whose
tables are there are compared, and the others are named as missing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

from tuneatlas.catalogue import ARTIFACTS, REPRO_TABLES, RESULTS
from tuneatlas.io import read_parquet_meta, write_parquet
from tuneatlas.studies import plots
from tuneatlas.studies.findings import FAILS, HOLDS, findings_rows

if TYPE_CHECKING:
    from tuneatlas.studies.published import PublishedValue

STUDIES = ("s1", "s2", "s3", "s4", "s5")
MATCH, DIFFERS, NOT_COMPARABLE = "match", "differs", "not comparable"
REPRO_COLUMNS = [
    "study",
    "artifact",
    "id",
    "source",
    "setting",
    "quantity",
    "paper",
    "paper_std",
    "ours",
    "ours_low",
    "ours_high",
    "delta",
    "verdict",
    "reason",
]
FINDINGS_COLUMNS = ["study", "finding", "claim", "evidence", "verdict", "reason"]
# With one run there is no interval: a match is |ours - paper| <= the paper's std where it
# gives one, else one point on the fraction scale (the papers round to 0.1 points, and S1's
# five seeds spread over about one point) - relative for quantities far from 1 (erank, RI).
SINGLE_RUN_TOLERANCE = 0.01
# the range a mean's interval is clipped to, by quantity
_BOUNDS = {
    "accuracy": (0.0, 1.0),
    "f1": (0.0, 1.0),
    "macro_f1": (0.0, 1.0),
    "share": (0.0, 1.0),
    "mcc": (-1.0, 1.0),
    "pearson": (-1.0, 1.0),
    "spearman": (-1.0, 1.0),
    "ari": (-1.0, 1.0),
}


def load_tables(results: Path, studies: Iterable[str] = STUDIES) -> dict[str, pd.DataFrame]:
    """The artifact tables of `studies` that exist under `results`/tables, by artifact id."""
    wanted = set(studies)
    return {
        a.id: pd.read_parquet(results / Path(a.table).relative_to(RESULTS))
        for a in ARTIFACTS.values()
        if a.study.lower() in wanted and (results / Path(a.table).relative_to(RESULTS)).exists()
    }


def present_studies(tables: Mapping[str, pd.DataFrame]) -> list[str]:
    """The studies (s1 ... s5) that have at least one table in `tables`."""
    return sorted({ARTIFACTS[a].study.lower() for a in tables})


def missing_studies(tables: Mapping[str, pd.DataFrame], studies: Iterable[str]) -> list[str]:
    present = set(present_studies(tables))
    return [s for s in studies if s not in present]


def setting_text(setting: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting.items())


def select(df: pd.DataFrame, setting: Mapping[str, Any]) -> pd.DataFrame:
    """The rows of `df` whose columns equal `setting` (floats compared with a tolerance)."""
    keep = pd.Series(True, index=df.index)
    for key, want in setting.items():
        column = df[key]
        if isinstance(want, float) and pd.api.types.is_numeric_dtype(column):
            keep &= np.isclose(column.astype(float), want, rtol=1e-6, atol=0.0)
        else:
            keep &= column.astype(str) == str(want)
    return df[keep]


def mean_interval(values: np.ndarray, quantity: str) -> tuple[float, float | None, float | None]:
    """Mean and 95% t-interval over `values` (None, None for a single value), clipped to the
    quantity's range."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, None, None
    half = float(stats.t.ppf(0.975, len(values) - 1) * stats.sem(values))
    low, high = _BOUNDS.get(quantity, (-np.inf, np.inf))
    return mean, max(mean - half, low), min(mean + half, high)


def value_verdict(
    paper: float,
    paper_std: float | None,
    ours: float,
    low: float | None,
    high: float | None,
) -> str:
    """`match` when the paper's value lies in our interval widened by its std (one run:
    |delta| within the tolerance), else `differs`."""
    spread = paper_std or 0.0
    if low is not None and high is not None:
        return MATCH if low - spread <= paper <= high + spread else DIFFERS
    tolerance = paper_std if paper_std else SINGLE_RUN_TOLERANCE * max(1.0, abs(paper))
    return MATCH if abs(ours - paper) <= tolerance else DIFFERS


def compare_value(
    entry: PublishedValue, table: pd.DataFrame, not_comparable: str | None
) -> dict[str, Any]:
    """One repro.parquet row: `entry` against the rows of `table` its setting selects."""
    row: dict[str, Any] = {
        "study": entry.study,
        "artifact": entry.artifact,
        "id": entry.id,
        "source": entry.source,
        "setting": setting_text(entry.setting),
        "quantity": entry.quantity,
        "paper": entry.value,
        "paper_std": entry.std,
        "ours": None,
        "ours_low": None,
        "ours_high": None,
        "delta": None,
    }
    unknown = [k for k in (*entry.setting, entry.column) if k not in table.columns]
    rows = pd.DataFrame() if unknown else select(table, entry.setting)[entry.column].dropna()
    if rows.empty:
        why = f"no column {unknown}" if unknown else "no row"
        reason = f"{entry.artifact} has {why} for {row['setting']}"
        return row | {"verdict": NOT_COMPARABLE, "reason": reason}
    ours, low, high = mean_interval(rows.to_numpy(dtype=float), entry.quantity)
    row |= {"ours": ours, "ours_low": low, "ours_high": high, "delta": ours - entry.value}
    if not_comparable:
        return row | {"verdict": NOT_COMPARABLE, "reason": not_comparable}
    result = value_verdict(entry.value, entry.std, ours, low, high)
    reason = f"mean of {len(rows)} rows" + ("" if low is not None else ", one run: tolerance")
    return row | {"verdict": result, "reason": reason}


def repro_table(
    tables: Mapping[str, pd.DataFrame],
    published: Mapping[str, Sequence[PublishedValue]],
    comparable: Mapping[str, str | None],
) -> pd.DataFrame:
    """repro.parquet: every published value of a study whose tables we have, beside ours.

    `comparable` maps a study to None when our run is at the paper's scale, else to the reason
    it is not (e.g. "toy scale: model bert-tiny is built"); a study absent from it is not
    compared.
    """
    rows = [
        compare_value(entry, tables[entry.artifact], comparable[study])
        for study in present_studies(tables)
        if study in comparable
        for entry in published.get(study, ())
        if entry.artifact in tables
    ]
    return pd.DataFrame(rows, columns=REPRO_COLUMNS)


def findings_table(
    tables: Mapping[str, pd.DataFrame], studies: Iterable[str] | None = None
) -> pd.DataFrame:
    """findings.parquet: the claims of the studies whose tables we have (default: any)."""
    present = set(present_studies(tables))
    wanted = present if studies is None else present & set(studies)
    return pd.DataFrame(findings_rows(tables, wanted), columns=FINDINGS_COLUMNS)


def repro_metadata(tables: Mapping[str, pd.DataFrame], studies: Iterable[str]) -> dict[str, str]:
    """What the REPRO tables were computed from: the studies compared and those missing."""
    studies = list(studies)
    return {
        "studies": json.dumps([s for s in studies if s not in missing_studies(tables, studies)]),
        "missing_studies": json.dumps(missing_studies(tables, studies)),
        "artifacts": json.dumps(sorted(tables)),
    }


# --- figures --------------------------------------------------------------------------------
VERDICT_COLOURS = {
    MATCH: "#55a868",
    HOLDS: "#55a868",
    DIFFERS: "#c44e52",
    FAILS: "#c44e52",
    NOT_COMPARABLE: "#8c8c8c",
    "not testable here": "#8c8c8c",
}


def plot_repro(df: pd.DataFrame, out: Path) -> None:
    """Per study: the paper's value (x) vs ours (y) with our interval, on the y = x line."""
    studies = list(dict.fromkeys(df["study"])) or ["(no study)"]
    fig, axes = plots.subplots(ncols=len(studies), width=3.2, height=3.2, layout="constrained")
    for ax, study in zip(axes[0], studies, strict=True):
        part = df[(df["study"] == study) & df["ours"].notna()]
        ax.set_title(f"{study}: {len(part)} values", fontsize=9)
        ax.set(xlabel="paper", ylabel="ours")
        if part.empty:
            ax.text(0.5, 0.5, "no comparable values", ha="center", transform=ax.transAxes)
            continue
        ours = part["ours"].astype(float)
        low = part["ours_low"].astype(float).fillna(ours)
        high = part["ours_high"].astype(float).fillna(ours)
        colours = [VERDICT_COLOURS[v] for v in part["verdict"]]
        ax.errorbar(part["paper"], ours, yerr=[ours - low, high - ours], fmt="none", ecolor="grey")
        ax.scatter(part["paper"], ours, c=colours, s=18, zorder=3)
        lo = min(part["paper"].min(), low.min())
        hi = max(part["paper"].max(), high.max())
        ax.plot([lo, hi], [lo, hi], ls="--", lw=1, color="black")
    fig.suptitle("Paper vs ours (green match, red differs, grey not comparable)", fontsize=10)
    plots.save(fig, out)


def plot_findings(df: pd.DataFrame, out: Path) -> None:
    """One line per finding: a coloured verdict box, the finding's id and our evidence."""
    n = max(len(df), 1)
    fig, ax = plots.subplots(width=11, height=0.45 * n + 0.8)
    ax = ax[0, 0]
    ax.set_axis_off()
    ax.set(xlim=(0, 1), ylim=(n, -0.5))
    for i, row in enumerate(df.itertuples()):
        ax.text(
            0.0,
            i,
            f" {row.verdict} ",
            va="center",
            fontsize=8,
            color="white",
            bbox={"facecolor": VERDICT_COLOURS[row.verdict], "edgecolor": "none"},
        )
        ax.text(0.15, i, row.finding, va="center", fontsize=8, weight="bold")
        words = row.evidence or row.reason
        ax.text(0.26, i, words[:110] + ("..." if len(words) > 110 else ""), va="center", fontsize=7)
    if df.empty:
        ax.text(0.5, 0, "no study's tables exist yet", ha="center")
    ax.set_title("Do the papers' claims hold in this run?", fontsize=10, loc="left")
    plots.save(fig, out)


# --- compare: the REPRO outcome of an existing results/ -------------------------------------
UNKNOWN_SCALE = "scale unknown: no repro.parquet and no --config to say whether the run is toy"


def write_repro_tables(
    tables: Mapping[str, pd.DataFrame],
    published: Mapping[str, Sequence[PublishedValue]],
    comparable: Mapping[str, str | None],
    outputs: Sequence[Path],
    meta: Mapping[str, str],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """repro.parquet and findings.parquet of the studies in `comparable`, with `meta` and the
    studies compared / missing as provenance."""
    repro = repro_table(tables, published, comparable)
    findings = findings_table(tables, comparable)
    extra = repro_metadata(tables, comparable)
    write_parquet(repro, outputs[0], {**meta, **extra})
    write_parquet(findings, outputs[1], {**meta, **extra})
    return repro, findings


def read_or_compute(
    results: Path,
    published: Callable[[], Mapping[str, Sequence[PublishedValue]]],
    comparable: Mapping[str, str | None] | None,
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(repro, findings, missing studies) of `results`: read from its REPRO tables when they
    exist, else computed from whichever artifact tables are there."""
    repro_file, findings_file = (results / Path(p).relative_to(RESULTS) for p in REPRO_TABLES)
    if repro_file.exists() and findings_file.exists():
        missing = json.loads(read_parquet_meta(repro_file).get("missing_studies", "[]"))
        return pd.read_parquet(repro_file), pd.read_parquet(findings_file), missing
    studies = list(comparable) if comparable is not None else list(STUDIES)
    tables = load_tables(results, studies)
    if comparable is None:
        comparable = dict.fromkeys(STUDIES, UNKNOWN_SCALE)
    repro = repro_table(tables, published(), comparable)
    return repro, findings_table(tables, studies), missing_studies(tables, studies)


def summary(repro: pd.DataFrame, findings: pd.DataFrame, missing: list[str]) -> dict[str, Any]:
    """The REPRO outcome as one JSON-able object: findings, value verdicts per study, and the
    studies without tables."""
    counts = repro.groupby(["study", "verdict"]).size().unstack(fill_value=0)
    return {
        "findings": findings[["study", "finding", "verdict", "evidence", "reason"]].to_dict(
            "records"
        ),
        "values": {s: {v: int(n) for v, n in row.items()} for s, row in counts.iterrows()},
        "missing_studies": list(missing),
    }


def summary_text(result: Mapping[str, Any]) -> str:
    """`summary` as terminal lines: one per finding, one per study's value verdicts."""
    lines = ["Findings (the papers' claims in this run):"]
    for f in result["findings"]:
        lines.append(f"  {f['verdict']:<18} {f['finding']:<12} {f['evidence'] or f['reason']}")
    if not result["findings"]:
        lines.append("  (no study's tables exist)")
    lines.append("Published values (match / differs / not comparable):")
    for study, counts in result["values"].items():
        lines.append(
            f"  {study}: {counts.get(MATCH, 0)} / {counts.get(DIFFERS, 0)} / "
            f"{counts.get(NOT_COMPARABLE, 0)}"
        )
    if result["missing_studies"]:
        lines.append("Missing (no tables yet): " + ", ".join(result["missing_studies"]))
    return "\n".join(lines)
