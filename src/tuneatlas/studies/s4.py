"""Study S4 (where FFNs matter): relative improvements of the FFN layouts over their baseline.

Each task's score is its primary metric (`tuneatlas.analysis.lmeval.PRIMARY`: word perplexity
for Wikitext, accuracy for LAMBADA, length-normalised accuracy for HellaSwag, the token-match
rate of the zsRE probe). RI(m, T) = (score(m, T) - score(base, T)) / score(base, T) x 100, with
the sign flipped where lower is better (perplexity), so that RI > 0 always means better than
the baseline of the same size. The mean RI of a variant is over every evaluated task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tuneatlas.analysis.lmeval import PRIMARY
from tuneatlas.studies import plots

TOP = 5


def scores(spec: dict[str, Any], results: Path) -> pd.DataFrame:
    """Per (run, task): the primary score and the run's size, variant, position, ratio."""
    p = spec["params"]
    rows = []
    for run, info in p["runs"].items():
        ev = pd.read_parquet(results / "lm_eval" / f"{run}.parquet")
        for task in p["tasks"]:
            metric, higher = PRIMARY.get(task, ("acc", True))
            hit = ev[(ev["task"] == task) & (ev["metric"] == metric)]
            if hit.empty:
                raise ValueError(
                    f"{results}/lm_eval/{run}.parquet has no {metric} for task {task}; found"
                    f" {sorted(set(ev['task'] + ':' + ev['metric']))}"
                )
            rows.append(
                {**info, "run": run, "task": task, "metric": metric,
                 "score": float(hit["value"].iloc[0]), "higher_is_better": higher}
            )  # fmt: skip
    df = pd.DataFrame(rows)
    base = df[df["variant"] == "baseline"].set_index(["size", "task"])["score"]
    missing = sorted(set(df["size"]) - set(base.index.get_level_values(0)))
    if missing:
        raise ValueError(f"sizes {missing} have no baseline run: RI needs one")
    ref = base.reindex(pd.MultiIndex.from_frame(df[["size", "task"]])).to_numpy()
    sign = np.where(df["higher_is_better"], 1.0, -1.0)
    df["ri"] = sign * (df["score"] - ref) / ref * 100
    return df


def table_f3(spec: dict[str, Any], results: Path) -> pd.DataFrame:
    """Per (size, task, variant): score and RI, with the variant's position, ratio, params."""
    cols = ["size", "task", "metric", "variant", "position", "ratio", "score", "ri"]
    return scores(spec, results)[[*cols, "params", "rel_diff"]]


def table_t1(spec: dict[str, Any], results: Path) -> pd.DataFrame:
    """Per size: the top-5 variants by mean RI over the tasks."""
    df = scores(spec, results)
    df = df[df["variant"] != "baseline"]
    mean = df.groupby(["size", "variant"], sort=False)["ri"].mean().rename("mean_ri").reset_index()
    out = []
    for _, part in mean.groupby("size", sort=False):
        top = part.sort_values(["mean_ri", "variant"], ascending=[False, True]).head(TOP)
        out.append(top.assign(rank=np.arange(1, len(top) + 1)))
    return pd.concat(out, ignore_index=True)[["size", "rank", "variant", "mean_ri"]]


def table_t2(spec: dict[str, Any], results: Path) -> pd.DataFrame:
    """The largest size (the last of `sizes`): each variant's score and RI per task."""
    df = scores(spec, results)
    largest = df["size"].iloc[-1]
    part = df[df["size"] == largest]
    return part[["size", "variant", "task", "metric", "score", "ri"]].reset_index(drop=True)


def plot_f3(df: pd.DataFrame, outputs: list[Path]) -> None:
    sizes, tasks = list(dict.fromkeys(df["size"])), list(dict.fromkeys(df["task"]))
    fig, axes = plots.subplots(
        ncols=len(tasks), nrows=len(sizes), width=3.4, height=2.8, sharex=True, layout="constrained"
    )
    for i, size in enumerate(sizes):
        for j, task in enumerate(tasks):
            ax, cell = axes[i, j], df[(df["size"] == size) & (df["task"] == task)]
            for position, line in cell[cell["variant"] != "baseline"].groupby("position"):
                line = line.sort_values("ratio")
                ax.plot([*line["ratio"], 100], [*line["ri"], 0.0], "o-", ms=3, label=position)
            ax.axhline(0, color="grey", lw=0.8, ls="--")
            ax.set(title=f"{size} - {task}", xlabel="FFN-expanded layers (%)", ylabel="RI (%)")
    axes[0, -1].legend(fontsize=7, title="position", title_fontsize=7)
    fig.suptitle("S4.F3 - relative improvement over the baseline vs ratio (100% = baseline)")
    plots.save(fig, outputs[0])


def plot_t1(df: pd.DataFrame, outputs: list[Path]) -> None:
    import seaborn as sns

    sizes = list(dict.fromkeys(df["size"]))
    fig, axes = plots.subplots(ncols=len(sizes), width=4.2, height=2.6, layout="constrained")
    for ax, size in zip(axes[0], sizes, strict=True):
        part = df[df["size"] == size]
        y = np.arange(len(part))[::-1]
        colours = sns.color_palette("colorblind", len(part))
        ax.barh(y, part["mean_ri"], color=colours)
        ax.set_yticks(y, part["variant"])
        ax.axvline(0, color="grey", lw=0.8)
        ax.set(title=f"{size}: top {len(part)}", xlabel="mean RI over tasks (%)")
    fig.suptitle("S4.T1 - best FFN layouts per size")
    plots.save(fig, outputs[0])


def plot_t2(df: pd.DataFrame, outputs: list[Path]) -> None:
    import seaborn as sns

    grid = df.pivot(index="variant", columns="task", values="ri").reindex(
        list(dict.fromkeys(df["variant"]))
    )
    fig, axes = plots.subplots(
        width=1.2 * len(grid.columns) + 2.5, height=0.32 * len(grid) + 1.5, layout="constrained"
    )
    sns.heatmap(grid, annot=True, fmt=".1f", center=0, cmap="RdBu", ax=axes[0, 0],
                cbar_kws={"label": "RI (%)"})  # fmt: skip
    axes[0, 0].set(title=f"S4.T2 - {df['size'].iloc[0]}: RI per task", xlabel="", ylabel="")
    plots.save(fig, outputs[0])


TABLES = {"S4.F3": table_f3, "S4.T1": table_t1, "S4.T2": table_t2}
FIGURES = {"S4.F3": plot_f3, "S4.T1": plot_t1, "S4.T2": plot_t2}
