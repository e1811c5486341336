"""Study S5 (Monju): cluster-specialised members, distance-weighted ensembles, error bars.

S5.T1 reads the members' `predictions.parquet` on the evaluation split and the clustering's
distances of those inputs to the centres (results/clusters/<id>/), and reports every member,
every ensemble and the oracle with a 95% bootstrap interval over the test examples and a paired
comparison with the seed ensemble: the bootstrap interval of the accuracy difference (the same
resamples for both) and an exact McNemar test. The paper's 94.04 vs 94.18 is a few sentences.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tuneatlas.analysis.clusters import read_assignments
from tuneatlas.analysis.ensemble import (
    bootstrap_ci,
    bootstrap_indices,
    cbtm_weights,
    combine,
    mcnemar_exact,
    monju_weights,
    oracle_correct,
)
from tuneatlas.analysis.predict import PREDICTIONS_FILE, logits_of
from tuneatlas.studies import plots

SEED_ENSEMBLE = "ensemble-seeds"
CBTM_STYLE = "ensemble-cbtm-style"  # our construction, not c-BTM itself


def _member_predictions(
    results: Path, members: list[dict[str, Any]], split: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(idx [N], labels [N], logits [M, N, C]) of the members on `split`, checked aligned."""
    idx = labels = None
    logits = []
    for m in members:
        path = results / "runs" / m["run"] / PREDICTIONS_FILE
        df = pd.read_parquet(path)
        df = df[df["split"] == split].sort_values("row")
        if df.empty:
            raise ValueError(f"{path}: no {split!r} rows; the ensemble split must be evaluated")
        if idx is None:
            idx, labels = df["idx"].to_numpy(), df["label"].to_numpy()
        elif not np.array_equal(idx, df["idx"].to_numpy()):
            raise ValueError(
                f"{path}: its {split} examples differ from {members[0]['run']}'s; every member"
                " must be evaluated on the same split (re-run their training)"
            )
        logits.append(logits_of(df))
    return idx, labels, np.stack(logits)


def _distances(results: Path, clustering: str, split: str, idx: np.ndarray) -> tuple:
    assignments, info = read_assignments(results / "clusters" / clustering)
    rows = assignments[assignments["split"] == split].sort_values("row")
    if not np.array_equal(rows["idx"].to_numpy(), idx):
        raise ValueError(
            f"clustering {clustering}: its {split} examples differ from the members'; re-run it"
        )
    d = rows[[f"d_{c}" for c in info["clusters"]]].to_numpy(np.float64)
    return d, info


def table_t1(spec: dict[str, Any], results: Path) -> pd.DataFrame:
    p = spec["params"]
    split = p["eval_split"]
    seed_members = [m for m in p["members"] if m["kind"] == "seed"]
    cluster_members = [m for m in p["members"] if m["kind"] == "cluster"]
    idx, labels, seed_logits = _member_predictions(results, seed_members, split)
    idx_c, _, cluster_logits = _member_predictions(results, cluster_members, split)
    if not np.array_equal(idx, idx_c):
        raise ValueError("seed and cluster members were evaluated on different examples")
    d, info = _distances(results, p["clustering"], split, idx)
    # cluster member i (plan order) missed cluster info["clusters"].index(excluded): put the
    # members in the column order of the distance matrix
    order = [
        next(i for i, m in enumerate(cluster_members) if m["excluded"] == c)
        for c in info["clusters"]
    ]
    by_cluster = cluster_logits[order]
    n_seed = len(seed_members)

    correct: dict[str, np.ndarray] = {}
    rows: list[dict[str, Any]] = []
    total = int(sum(info["train_sizes"].values()))

    def add(model: str, kind: str, members: str, seen: int | None, ok: np.ndarray) -> None:
        correct[model] = ok
        rows.append({"model": model, "kind": kind, "members": members, "train_examples": seen})

    for m, lg in zip(seed_members, seed_logits, strict=True):
        add(m["run"], "member-seed", "all clusters", total, lg.argmax(1) == labels)
    for m, lg in zip(cluster_members, cluster_logits, strict=True):
        seen = sum(info["train_sizes"][c] for c in m["clusters"])
        add(m["run"], "member-cluster", ",".join(m["clusters"]), seen, lg.argmax(1) == labels)
    space = p["combine"]
    equal = np.full((len(idx), n_seed), 1.0 / n_seed)
    ensembles = {
        SEED_ENSEMBLE: (seed_logits, equal, "seed members, equal weights"),
        "ensemble-monju": (by_cluster, monju_weights(d), "cluster members, d_i / sum d"),
        # our own construction beside Monju, not c-BTM itself: c-BTM weights experts that each
        # saw ONE cluster; these members saw k - 1 (tuneatlas.analysis.ensemble.cbtm_weights)
        CBTM_STYLE: (
            by_cluster,
            cbtm_weights(d, p["temperature"]),
            f"ours, not c-BTM: cluster members, (1 - softmax(-d/{p['temperature']:g}))/(k-1)",
        ),
    }
    spread: dict[str, dict[str, float]] = {}
    for name, (lg, w, how) in ensembles.items():
        pred = combine(lg, w, space).argmax(1)
        add(name, "ensemble", how, None, pred == labels)
        spread[name] = weight_spread(w, pred, combine(lg, np.full_like(w, 1 / w.shape[1]), space))
    add(
        "oracle-seeds",
        "oracle",
        "any seed member right",
        None,
        oracle_correct(seed_logits.argmax(2), labels),
    )
    add(
        "oracle-clusters",
        "oracle",
        "any cluster member right",
        None,
        oracle_correct(cluster_logits.argmax(2), labels),
    )

    boot = bootstrap_indices(len(idx), p["bootstrap"], p["bootstrap_seed"])
    base = correct[SEED_ENSEMBLE]
    for row in rows:
        ok = correct[row["model"]]
        row.update(metric="accuracy", split=split, n=len(idx), value=float(ok.mean()))
        row["ci_low"], row["ci_high"] = bootstrap_ci(ok, boot)
        diff = ok.astype(np.float64) - base
        row["delta_vs_seed"] = float(diff.mean())
        row["delta_ci_low"], row["delta_ci_high"] = bootstrap_ci(diff, boot)
        row["p_value"] = np.nan if row["model"] == SEED_ENSEMBLE else mcnemar_exact(ok, base)
        row.update(spread.get(row["model"], dict.fromkeys(SPREAD_COLUMNS, np.nan)))
    df = pd.DataFrame(rows)
    df["train_examples"] = df["train_examples"].astype("Int64")  # ensembles: <NA>
    return df


# how far an ensemble's per-input weights are from equal ones, and whether that changes a
# prediction: on real SST-2 with MiniLM distances Monju's weights spanned only 0.27-0.37 and its
# predictions equalled the plain average of its members on every test input
SPREAD_COLUMNS = ("weight_min", "weight_max", "weight_max_dev_uniform", "same_as_uniform")


def weight_spread(w: np.ndarray, pred: np.ndarray, uniform_scores: np.ndarray) -> dict[str, float]:
    """Range of the weights [N, M], their largest distance from 1 / M, and the share of inputs
    whose prediction equals that of the same members averaged with equal weights."""
    return {
        "weight_min": float(w.min()),
        "weight_max": float(w.max()),
        "weight_max_dev_uniform": float(np.abs(w - 1.0 / w.shape[1]).max()),
        "same_as_uniform": float((pred == uniform_scores.argmax(1)).mean()),
    }


_KIND_COLOURS = {
    "member-seed": "#4c72b0",
    "member-cluster": "#55a868",
    "ensemble": "#c44e52",
    "oracle": "#8c8c8c",
}


def plot_t1(df: pd.DataFrame, outputs: list[Path]) -> None:
    fig, axes = plots.subplots(width=7.0, height=0.45 * len(df) + 1.5)
    ax = axes[0, 0]
    y = np.arange(len(df))[::-1]
    for yi, (_, row) in zip(y, df.iterrows(), strict=True):
        colour = _KIND_COLOURS.get(row["kind"], "black")
        ax.errorbar(
            row["value"],
            yi,
            xerr=[[row["value"] - row["ci_low"]], [row["ci_high"] - row["value"]]],
            fmt="o",
            color=colour,
            capsize=3,
        )
        note = f"{row['value']:.3f}"
        if row["kind"] == "ensemble" and np.isfinite(row["p_value"]):
            note += f"  Δ {row['delta_vs_seed']:+.3f}, p={row['p_value']:.2g}"
        ax.annotate(
            note,
            (row["ci_high"], yi),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=7,
        )
    seed_value = df.loc[df["model"] == SEED_ENSEMBLE, "value"]
    if len(seed_value):
        ax.axvline(
            float(seed_value.iloc[0]),
            ls="--",
            lw=1,
            color="#c44e52",
            alpha=0.6,
            label=f"seed ensemble ({SEED_ENSEMBLE}), the baseline",
        )
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False)
    ax.set_yticks(y, [f"{m} ({k})" for m, k in zip(df["model"], df["kind"], strict=True)])
    split = df["split"].iloc[0]
    ax.set(
        title=f"S5.T1 - members and ensembles, {split} accuracy (95% bootstrap CI,"
        f" n = {int(df['n'].iloc[0])})",
        xlabel=f"{split} accuracy",
    )
    ax.margins(x=0.25)
    plots.save(fig, outputs[0])


TABLES = {"S5.T1": table_t1}
FIGURES = {"S5.T1": plot_t1}
