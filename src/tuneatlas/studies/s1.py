"""Study S1 (redundancy of BERT across tokens, dimensions and layers): tables and figures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from tuneatlas.data.tasks import get_task
from tuneatlas.studies import plots


def run_spec(results: Path, run: str) -> dict[str, Any]:
    return yaml.safe_load((results / "runs" / run / "spec.yaml").read_text())


def run_scores(results: Path, runs: list[str]) -> pd.DataFrame:
    """Final valid/test scores of `runs` in the task's own metric, with the run's spec fields."""
    frames = []
    for run in runs:
        spec = run_spec(results, run)
        metric = get_task(spec["task"]).metric
        ev = pd.read_parquet(results / "runs" / run / "eval.parquet")
        ev = ev[ev["metric"] == metric].copy()
        ev["task"] = spec["dataset"]
        ev["seed"] = spec["seed"]
        ev["pooling"] = spec["pooling"]
        ev["init_from"] = spec.get("init_from")
        ev["frozen"] = spec["freeze_encoder"]
        frames.append(ev)
    return pd.concat(frames, ignore_index=True)


# --- S1.T1: CLS vs max-norm token ----------------------------------------------------------
def table_t1(spec: dict[str, Any], results: Path) -> pd.DataFrame:
    """Final scores of the runs (S1.T1: CLS and max-norm runs; S1.TA2: the runs of every seed)."""
    df = run_scores(results, spec["runs"])
    df = df[["task", "metric", "split", "pooling", "seed", "value"]]
    return df.sort_values(["task", "split", "pooling", "seed"], key=_task_key(spec)).reset_index(
        drop=True
    )


def _task_key(spec: dict[str, Any]):
    order = {t: i for i, t in enumerate(spec["params"]["datasets"])}
    return lambda col: col.map(order) if col.name == "task" else col


METRIC_NAMES = {
    "accuracy": "accuracy",
    "mcc": "MCC",
    "pearson": "Pearson r",
    "spearman": "Spearman rho",
    "macro_f1": "macro-F1",
    "f1": "F1",
}


def _name_metrics(ax: Any, test: pd.DataFrame) -> None:
    """Name each task's metric under its tick, and in the y label when all tasks share one
    (tasks differ: CoLA is scored by MCC, STS-B by Pearson's r, the rest by accuracy)."""
    metric = test.drop_duplicates("task").set_index("task")["metric"]
    names = {t: METRIC_NAMES.get(m, m) for t, m in metric.items()}
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    ax.set_xticks(ax.get_xticks(), [f"{t}\n({names.get(t, '?')})" for t in ticks])
    shared = set(names.values())
    ax.set_ylabel(
        f"test {shared.pop()}" if len(shared) == 1 else "test score (metric under each task)"
    )


def _plot_test_bars(df: pd.DataFrame, hue: str, title: str, outputs: list[Path]) -> None:
    import seaborn as sns

    test = df[df["split"] == "test"]
    fig, axes = plots.subplots(width=max(5.0, 1.1 * test["task"].nunique()))
    ax = axes[0, 0]
    sns.barplot(test, x="task", y="value", hue=hue, ax=ax)
    for container in ax.containers:
        ax.bar_label(container, fmt="%.3f", fontsize=7, padding=1)
    ax.set(title=title, xlabel="task")
    _name_metrics(ax, test)
    plots.save(fig, outputs[0])


def plot_t1(df: pd.DataFrame, outputs: list[Path]) -> None:
    _plot_test_bars(
        df, "pooling", "S1.T1 - head on the CLS vector vs the max-norm token (test)", outputs
    )


# --- S1.TA2: seed variance -------------------------------------------------------------------
def plot_ta2(df: pd.DataFrame, outputs: list[Path]) -> None:
    import seaborn as sns

    fig, axes = plots.subplots(width=max(5.0, 1.1 * df["task"].nunique()))
    ax = axes[0, 0]
    sns.stripplot(df, x="task", y="value", hue="split", dodge=True, size=7, alpha=0.8, ax=ax)
    sns.pointplot(
        df,
        x="task",
        y="value",
        hue="split",
        dodge=0.4,
        errorbar="sd",
        linestyles="none",
        markers="_",
        markersize=20,
        ax=ax,
        legend=False,
    )
    n_seeds = df["seed"].nunique()
    ax.set(
        title=f"S1.TA2 - all-dimension score over {n_seeds} seeds (bar = mean +- sd)",
        xlabel="task",
        ylabel="score (task metric)",
    )
    plots.save(fig, outputs[0])


# --- S1.T4: frozen encoder + 2 FC vs unfrozen + 1 FC ------------------------------------------
def table_t4(spec: dict[str, Any], results: Path) -> pd.DataFrame:
    df = run_scores(results, spec["runs"])
    df["setting"] = np.where(df["frozen"], "frozen_2fc", "unfrozen_1fc")
    df = df[["task", "metric", "setting", "split", "seed", "value"]]
    return df.sort_values(["task", "split", "setting"], key=_task_key(spec)).reset_index(drop=True)


def plot_t4(df: pd.DataFrame, outputs: list[Path]) -> None:
    title = "S1.T4 - frozen encoder + 2 FC layers vs fine-tuned encoder + 1 FC (test)"
    _plot_test_bars(df, "setting", title, outputs)


# --- S1.T5: cross fine-tuning ----------------------------------------------------------------
def table_t5(spec: dict[str, Any], results: Path) -> pd.DataFrame:
    df = run_scores(results, spec["runs"])
    init_task = {r: run_spec(results, r)["dataset"] for r in df["init_from"].dropna().unique()}
    df["task_b"] = df["task"]
    df["task_a"] = [
        init_task[i] if isinstance(i, str) else b
        for i, b in zip(df["init_from"], df["task"], strict=True)
    ]
    df = df[["task_a", "task_b", "metric", "split", "seed", "value"]]
    order = {t: i for i, t in enumerate(spec["params"]["cross_datasets"])}
    return df.sort_values(
        ["split", "task_a", "task_b"], key=lambda c: c.map(order) if c.name != "split" else c
    ).reset_index(drop=True)


def plot_t5(df: pd.DataFrame, outputs: list[Path]) -> None:
    import seaborn as sns

    test = df[df["split"] == "test"]
    order = list(dict.fromkeys(test["task_b"]))
    matrix = test.pivot(index="task_a", columns="task_b", values="value").reindex(
        index=order, columns=order
    )
    if len(order) == 1:  # a 1x1 matrix is one number: say so instead of a heatmap
        _plot_t5_single(test, outputs)
        return
    fig, axes = plots.subplots(width=1.0 * len(order) + 3, height=0.8 * len(order) + 2)
    ax = axes[0, 0]
    sns.heatmap(
        matrix, annot=True, fmt=".3f", cmap="viridis", ax=ax, cbar_kws={"label": "test score on B"}
    )
    ax.set(
        title="S1.T5 - fine-tune on A, then on B (diagonal = B directly)",
        xlabel="second task B",
        ylabel="first task A",
    )
    plots.save(fig, outputs[0])


def _plot_t5_single(test: pd.DataFrame, outputs: list[Path]) -> None:
    row = test.iloc[0]
    fig, axes = plots.subplots(width=5.0, height=3.0)
    ax = axes[0, 0]
    ax.bar([f"{row['task_a']} -> {row['task_b']}"], [row["value"]], width=0.4)
    ax.bar_label(ax.containers[0], fmt="%.3f", fontsize=8, padding=1)
    ax.set(
        title="S1.T5 - cross fine-tuning with one task: only the diagonal",
        ylabel=f"test {METRIC_NAMES.get(row['metric'], row['metric'])}",
    )
    ax.text(
        0.5,
        -0.3,
        "list two or more datasets in studies.s1.cross_datasets for the A-then-B matrix",
        transform=ax.transAxes,
        ha="center",
        fontsize=8,
    )
    plots.save(fig, outputs[0])


# --- dimension subsets (S1.T2, S1.TA1, S1.T3, S1.FA3, S1.FL) ------------------------------------
# The searches run once per run in the `subsets` rule (tuneatlas.analysis.subsets.scan); these
# builders only aggregate results/subsets/<run>/*.parquet.
class Scanned:
    """One run's subset scan with the fields of its spec the tables report."""

    def __init__(self, results: Path, run: str) -> None:
        from tuneatlas.analysis.subsets.scan_files import read_scan

        spec = run_spec(results, run)
        self.run, self.task = run, spec["dataset"]
        self.metric = get_task(spec["task"]).metric
        self.dropout = spec["dropout"]
        self.frames = read_scan(results, run)

    def __getitem__(self, stem: str) -> pd.DataFrame:
        return self.frames[stem]

    def all_dims_rows(self, **cols: Any) -> list[dict[str, Any]]:
        return [
            {**cols, "split": r.split, "dims": "all", "value": float(r.all_dims)}
            for r in self["summary"].itertuples()
        ]


def _scanned(spec: dict[str, Any], results: Path) -> Iterator[Scanned]:
    for run in spec["subsets"]:
        yield Scanned(results, run)


def _subset_table(spec: dict[str, Any], results: Path, size: int) -> pd.DataFrame:
    cfg = spec["params"]["subsets"]
    rows: list[dict[str, Any]] = []
    for scan in _scanned(spec, results):
        base = {"task": scan.task, "metric": scan.metric}
        rows += scan.all_dims_rows(**base, mode="all", rank=0, sample_size=1)
        top = scan["top"]
        top = top[(top["size"] == size) & (top["rank"] <= cfg["top_k"])]
        if size == 3 and not cfg["exhaustive_triples"]:
            top = top[top["mode"] != "exhaustive"]
        if size == 3 and top.empty:
            raise ValueError(f"run {scan.run}: its subset scan has no triples")
        rows += [
            {
                **base,
                "mode": r.mode,
                "sample_size": int(r.sample_size),
                "rank": int(r.rank),
                "dims": r.dims,
                "split": r.split,
                "value": float(r.value),
            }
            for r in top.itertuples()
        ]
    return pd.DataFrame(rows)[
        ["task", "metric", "mode", "sample_size", "rank", "dims", "split", "value"]
    ]


def table_t2(spec: dict[str, Any], results: Path) -> pd.DataFrame:
    return _subset_table(spec, results, 2)


def table_ta1(spec: dict[str, Any], results: Path) -> pd.DataFrame:
    """S1.TA1, with ``in_paper``: whether the paper has the row - the all-dimensions rows and
    the sampled triples, but for its large tasks (``subsets.large_datasets``) only the sizes of
    ``subsets.triple_sample_sizes_large`` (its 0.001% / 0.0001%); exhaustive rows are ours."""
    df = _subset_table(spec, results, 3)
    cfg = spec["params"]["subsets"]
    large = set(cfg.get("large_datasets") or ())
    paper_large = {int(n) for n in cfg.get("triple_sample_sizes_large") or ()}
    df["in_paper"] = [
        mode == "all" or (mode == "sampled" and (task not in large or int(n) in paper_large))
        for task, mode, n in zip(df["task"], df["mode"], df["sample_size"], strict=True)
    ]
    return df


def _plot_best_subsets(df: pd.DataFrame, outputs: list[Path], what: str, title: str) -> None:
    import seaborn as sns

    test = df[(df["split"] == "test") & (df["rank"] <= 1)].copy()
    test["setting"] = [
        "all dimensions"
        if m == "all"
        else f"best {what}, {m}"
        + ("" if m != "sampled" else f" ({n:,})" if what == "triple" else " (paper rate)")
        for m, n in zip(test["mode"], test["sample_size"], strict=True)
    ]
    fig, axes = plots.subplots(width=max(6.0, 1.6 * test["task"].nunique()))
    ax = axes[0, 0]
    sns.barplot(test, x="task", y="value", hue="setting", ax=ax)
    ax.set(title=title, xlabel="task")
    _name_metrics(ax, test)
    ax.legend(fontsize=7, title=None, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    plots.save(fig, outputs[0])


def plot_t2(df: pd.DataFrame, outputs: list[Path]) -> None:
    _plot_best_subsets(
        df, outputs, "pair", "S1.T2 - only two CLS dimensions feed the head (rank 1 on valid; test)"
    )


def plot_ta1(df: pd.DataFrame, outputs: list[Path]) -> None:
    _plot_best_subsets(
        df,
        outputs,
        "triple",
        "S1.TA1 - only three CLS dimensions feed the head (rank 1 on valid; test)",
    )


def table_t3(spec: dict[str, Any], results: Path) -> pd.DataFrame:
    """The top ``effective_top`` triples of the scan (all triples, or the largest sample when
    ``exhaustive_triples`` is false), their ablation and the best pair of effective dims."""
    n_top = spec["params"]["subsets"]["effective_top"]
    rows: list[dict[str, Any]] = []
    for scan in _scanned(spec, results):
        base = {"task": scan.task, "metric": scan.metric}
        for row in scan.all_dims_rows(**base):
            rows.append({**row, "kind": "all", "triple_rank": 0, "dropped_dim": -1})
        eff = scan["effective"]
        if eff.empty:
            raise ValueError(f"run {scan.run}: its subset scan has no triples (S1.T3)")
        top = scan["top"]
        top = top[(top["search"] == eff["search"].iloc[0]) & (top["rank"] <= n_top)]
        for r in top.itertuples():
            rows.append(
                {
                    **base,
                    "kind": "triple",
                    "triple_rank": int(r.rank),
                    "dims": r.dims,
                    "dropped_dim": -1,
                    "split": r.split,
                    "value": float(r.value),
                }
            )
        for r in eff.drop(columns="search").to_dict("records"):
            # ablation rows carry drop/effective, the effective pair its effective_dims
            rows.append({**base, **{k: v for k, v in r.items() if not pd.isna(v)}})
    columns = [
        "task",
        "metric",
        "kind",
        "triple_rank",
        "dims",
        "dropped_dim",
        "split",
        "value",
        "drop",
        "effective",
        "effective_dims",
    ]
    return pd.DataFrame(rows).reindex(columns=columns)


def plot_t3(df: pd.DataFrame, outputs: list[Path]) -> None:
    import seaborn as sns

    test = df[
        (df["split"] == "test") & df["kind"].isin(["all", "best_effective_pair"])
        | (df["split"] == "test") & (df["kind"] == "triple") & (df["triple_rank"] == 1)
    ]
    labels = {
        "all": "all dimensions",
        "triple": "best triple",
        "best_effective_pair": "best pair of effective dims",
    }
    test = test.assign(setting=test["kind"].map(labels))
    fig, axes = plots.subplots(width=max(6.0, 1.6 * test["task"].nunique()))
    ax = axes[0, 0]
    sns.barplot(test, x="task", y="value", hue="setting", hue_order=list(labels.values()), ax=ax)
    # the last hue level is the effective pair: label its bars with the dimension ids
    task_order = list(dict.fromkeys(test["task"]))
    pairs = test[test["kind"] == "best_effective_pair"].set_index("task").reindex(task_order)
    ax.bar_label(ax.containers[-1], labels=[f"[{d}]" for d in pairs["dims"]], fontsize=7, padding=1)
    ax.set(
        title="S1.T3 - pairs of effective dimensions from the top-10 triples (test)",
        xlabel="task",
    )
    _name_metrics(ax, test)
    ax.legend(fontsize=7, title=None, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    plots.save(fig, outputs[0])


def table_fa3(spec: dict[str, Any], results: Path) -> pd.DataFrame:
    bins = spec["params"]["subsets"]["histogram_bins"]
    rows = []
    for scan in _scanned(spec, results):
        hist = scan["histograms"]
        hist = hist[(hist["size"] == 2) & (hist["mode"] == "exhaustive")]
        for split in ("valid", "test"):
            part = hist[hist["split"] == split]
            if len(part) != bins:
                raise ValueError(
                    f"run {scan.run}: its scan has {len(part)} {split} pair-histogram bins, "
                    f"the table asks for {bins}"
                )
            for r in part.itertuples():
                rows.append(
                    {
                        "task": scan.task,
                        "metric": scan.metric,
                        "dropout": scan.dropout if scan.dropout is not None else np.nan,
                        "split": split,
                        "bin_left": float(r.bin_left),
                        "bin_right": float(r.bin_right),
                        "count": int(r.count),
                    }
                )
    return pd.DataFrame(rows)


def plot_fa3(df: pd.DataFrame, outputs: list[Path]) -> None:
    test = df[df["split"] == "test"]
    tasks = list(dict.fromkeys(test["task"]))
    fig, axes = plots.subplots(ncols=len(tasks), width=4.5)
    for ax, task in zip(axes[0], tasks, strict=True):
        sub = test[test["task"] == task]
        for dropout, hist in sub.groupby("dropout"):
            share = hist["count"] / hist["count"].sum()
            ax.stairs(
                share,
                np.r_[hist["bin_left"], hist["bin_right"].iloc[-1]],
                fill=True,
                alpha=0.45,
                label=f"dropout {dropout:g}",
            )
        ax.set(
            title=task,
            xlabel=f"pair score ({sub['metric'].iloc[0]}, test)",
            ylabel="share of all pairs",
        )
        ax.legend(fontsize=8)
    fig.suptitle("S1.FA3 - scores of all dimension pairs, fine-tuned with vs without dropout")
    fig.tight_layout()
    plots.save(fig, outputs[0])


def table_fl(spec: dict[str, Any], results: Path) -> pd.DataFrame:
    """Per-layer pair statistics of each run's scan, long: one ``stat`` per row. A layer whose
    pairs all tie has ``degenerate`` 1 and no ``max`` / ``best_valid`` (NaN)."""
    from math import comb

    n_pairs = spec["params"]["layers"]["pairs_per_layer"]
    frames = []
    for scan in _scanned(spec, results):
        per_layer = scan["layers"]
        if per_layer.empty:
            raise ValueError(f"run {scan.run}: its subset scan has no layer statistics (S1.FL)")
        n_dims = int(scan["summary"]["n_dims"].iloc[0])
        expected = comb(n_dims, 2) if n_pairs is None else n_pairs
        if set(per_layer["n_pairs"]) != {expected}:
            raise ValueError(
                f"run {scan.run}: its scan scored {sorted(set(per_layer['n_pairs']))} pairs per "
                f"layer, the table asks for {expected}"
            )
        stats = [
            c for c in per_layer.columns if c not in ("layer", "n_pairs", "best_dims", "best_test")
        ]
        long = per_layer.melt(id_vars=["layer"], value_vars=stats, var_name="stat")
        long["split"] = "valid"
        best_test = per_layer[["layer", "best_test"]].rename(columns={"best_test": "value"})
        best_test["stat"], best_test["split"] = "best_valid", "test"
        long = pd.concat([long, best_test], ignore_index=True)
        long["task"], long["metric"] = scan.task, scan.metric
        long["value"] = long["value"].astype(float)
        frames.append(long)
    df = pd.concat(frames, ignore_index=True)
    return (
        df[["task", "metric", "layer", "split", "stat", "value"]]
        .sort_values(["task", "split", "stat", "layer"], kind="stable")
        .reset_index(drop=True)
    )


def plot_fl(df: pd.DataFrame, outputs: list[Path]) -> None:
    valid = df[df["split"] == "valid"]
    tasks = list(dict.fromkeys(valid["task"]))
    fig, axes = plots.subplots(ncols=len(tasks), width=4.5)
    for ax, task in zip(axes[0], tasks, strict=True):
        sub = valid[valid["task"] == task].pivot(index="layer", columns="stat", values="value")
        ax.fill_between(sub.index, sub["q0.05"], sub["q0.95"], alpha=0.2, label="pairs, 5-95%")
        ax.plot(sub.index, sub["q0.5"], marker=".", label="pairs, median")
        ax.plot(sub.index, sub["max"], marker="^", label="best pair")
        ax.plot(sub.index, sub["all_dims"], ls="--", color="k", label="all dims")
        if "degenerate" in sub:
            # every pair ties there (no best pair): the tied score, drawn apart
            tied = sub[sub["degenerate"] > 0]
            if len(tied):
                ax.scatter(
                    tied.index,
                    tied["q0.5"],
                    marker="X",
                    s=70,
                    color="tab:red",
                    zorder=5,
                    label="degenerate: all pairs tie",
                )
        ax.set(
            title=task,
            xlabel="layer of the CLS vector (0 = embeddings)",
            ylabel="valid score (task metric)",
        )
        ax.legend(fontsize=7)
    fig.suptitle("S1.FL - the last layer's head reading two dimensions of each layer's CLS")
    fig.tight_layout()
    plots.save(fig, outputs[0])


TABLES = {
    "S1.T1": table_t1,
    "S1.TA2": table_t1,
    "S1.T4": table_t4,
    "S1.T5": table_t5,
    "S1.T2": table_t2,
    "S1.TA1": table_ta1,
    "S1.T3": table_t3,
    "S1.FA3": table_fa3,
    "S1.FL": table_fl,
}
FIGURES = {
    "S1.T1": plot_t1,
    "S1.TA2": plot_ta2,
    "S1.T4": plot_t4,
    "S1.T5": plot_t5,
    "S1.T2": plot_t2,
    "S1.TA1": plot_ta1,
    "S1.T3": plot_t3,
    "S1.FA3": plot_fa3,
    "S1.FL": plot_fl,
}
