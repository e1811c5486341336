"""Study S4 (where FFNs matter): relative improvements of the FFN layouts over their baseline.

Each task's score is its primary metric (`tuneatlas.analysis.lmeval.primary`: the paper's
accuracy for LAMBADA and the multiple-choice tasks, word perplexity for Wikitext, the token-match
rate of the zsRE probe; studies.s4.metrics overrides it). RI(m, T) = (score(m, T) -
score(base, T)) / score(base, T) x 100, with the sign flipped where lower is better
(perplexity), so that RI > 0 always means better than the baseline of the same size.

Which tasks each artifact shows comes from the plan (studies.s4.artifacts): the paper's Table 1
and Fig. 3 average Wikitext, LAMBADA, HellaSwag and zsRE for 285M/570M, its Table 2/3 the eight
harness tasks for 2B. With `drop_below_chance` a task whose baseline of a size scores below
chance is dropped for that size (paper footnote 8): the tables keep the rows marked `dropped`
(T1 names them in its `dropped` column), the figures name them, and the table's metadata lists
them (`dropped_tasks`), with the corpus passes of any size whose budget repeats its corpus.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tuneatlas.analysis.lmeval import ACCURACY_METRICS, CHANCE, primary
from tuneatlas.studies import plots

TOP = 5


def scores(spec: dict[str, Any], results: Path) -> pd.DataFrame:
    """Per (run, task): the primary score, its RI, the run's size, variant, position, ratio, and
    whether the task is `dropped` for the size (its baseline below chance)."""
    p = spec["params"]
    rows = []
    for run, info in p["runs"].items():
        ev = pd.read_parquet(results / "lm_eval" / f"{run}.parquet")
        for task in p.get("size_tasks", {}).get(info["size"], p["tasks"]):
            metric, higher = primary(task, p.get("metrics"))
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
    chance = df["task"].map(CHANCE).where(df["metric"].isin(ACCURACY_METRICS))
    df["dropped"] = bool(p.get("drop_below_chance")) & (ref < chance).fillna(False)
    df.attrs = _meta(df, p)
    return df


def _meta(df: pd.DataFrame, p: dict[str, Any]) -> dict[str, Any]:
    """The table metadata: per size, each dropped task with its baseline and chance score, and
    the corpus passes of sizes whose budget repeats their corpus."""
    base = df[(df["variant"] == "baseline") & df["dropped"]]
    dropped: dict[str, dict[str, str]] = {}
    for row in base.itertuples():
        dropped.setdefault(row.size, {})[row.task] = (
            f"baseline {row.metric} {row.score:.4f} < chance {CHANCE[row.task]}"
        )
    return {"dropped_tasks": dropped, "passes": p.get("passes", {})}


def table_f3(spec: dict[str, Any], results: Path) -> pd.DataFrame:
    """Per (size, task, variant): score and RI, with the variant's position, ratio, params."""
    cols = ["size", "task", "metric", "variant", "position", "ratio", "score", "ri", "dropped"]
    df = scores(spec, results)
    return _keep_attrs(df[[*cols, "params", "rel_diff"]], df)


def table_t1(spec: dict[str, Any], results: Path) -> pd.DataFrame:
    """Per size: the top-5 variants by mean RI over the size's tasks that are not dropped; the
    `tasks` averaged and the `dropped` ones are named on every row."""
    df = scores(spec, results)
    kept = df[(df["variant"] != "baseline") & ~df["dropped"]]
    mean = (
        kept.groupby(["size", "variant"], sort=False)["ri"].mean().rename("mean_ri").reset_index()
    )
    out = []
    for size, part in mean.groupby("size", sort=False):
        top = part.sort_values(["mean_ri", "variant"], ascending=[False, True]).head(TOP)
        mine = df[df["size"] == size]
        top = top.assign(
            rank=np.arange(1, len(top) + 1),
            tasks=",".join(dict.fromkeys(mine.loc[~mine["dropped"], "task"])),
            dropped=",".join(dict.fromkeys(mine.loc[mine["dropped"], "task"])),
        )
        out.append(top)
    cols = ["size", "rank", "variant", "mean_ri", "tasks", "dropped"]
    return _keep_attrs(pd.concat(out, ignore_index=True)[cols], df)


def table_t2(spec: dict[str, Any], results: Path) -> pd.DataFrame:
    """The largest size (the last of `sizes`): each variant's score and RI per task."""
    df = scores(spec, results)
    largest = df["size"].iloc[-1]
    part = df[df["size"] == largest]
    cols = ["size", "variant", "task", "metric", "score", "ri", "dropped"]
    return _keep_attrs(part[cols].reset_index(drop=True), df)


def _keep_attrs(table: pd.DataFrame, source: pd.DataFrame) -> pd.DataFrame:
    table.attrs = dict(source.attrs)
    return table


def _dropped_note(df: pd.DataFrame) -> str:
    """'dropped (baseline below chance): 285M: arc_easy, ...' or '' when nothing is dropped."""
    gone = df[df["dropped"]].groupby("size", sort=False)["task"].unique()
    parts = [f"{size}: {', '.join(tasks)}" for size, tasks in gone.items()]
    return f"dropped (baseline below chance): {'; '.join(parts)}" if parts else ""


def plot_f3(df: pd.DataFrame, outputs: list[Path]) -> None:
    sizes, tasks = list(dict.fromkeys(df["size"])), list(dict.fromkeys(df["task"]))
    fig, axes = plots.subplots(
        ncols=len(tasks), nrows=len(sizes), width=3.4, height=2.8, sharex=True, layout="constrained"
    )
    for i, size in enumerate(sizes):
        for j, task in enumerate(tasks):
            ax, cell = axes[i, j], df[(df["size"] == size) & (df["task"] == task)]
            if not cell.empty and cell["dropped"].any():
                ax.set(title=f"{size} - {task}", xlabel="FFN-expanded layers (%)", ylabel="RI (%)")
                ax.text(
                    0.5,
                    0.5,
                    "dropped:\nbaseline below chance",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                )
                continue
            if not np.isfinite(cell["ri"].to_numpy(dtype=float)).any():
                _no_ri_note(ax, cell, f"{size} - {task}")
                continue
            for position, line in cell[cell["variant"] != "baseline"].groupby("position"):
                line = line.sort_values("ratio")
                ax.plot([*line["ratio"], 100], [*line["ri"], 0.0], "o-", ms=3, label=position)
            ax.axhline(0, color="grey", lw=0.8, ls="--")
            ax.set(title=f"{size} - {task}", xlabel="FFN-expanded layers (%)", ylabel="RI (%)")
    drawn = [ax for ax in axes.flat if ax.get_lines() and ax.get_legend_handles_labels()[0]]
    if drawn:  # the last panel with lines: a note panel has none
        drawn[-1].legend(fontsize=7, title="position", title_fontsize=7)
    note = _dropped_note(df)
    fig.suptitle(
        "S4.F3 - relative improvement over the baseline vs ratio (100% = baseline)"
        + (f"\n{note}" if note else "")
    )
    plots.save(fig, outputs[0])


def _no_ri_note(ax: Any, cell: pd.DataFrame, title: str) -> None:
    """An S4.F3 panel without a single finite RI: a note saying why instead of empty axes."""
    base = cell.loc[cell["variant"] == "baseline", "score"].to_numpy(dtype=float)
    if len(base) and base[0] == 0:
        why = "the baseline scores 0,\nso RI (a ratio to it) is undefined"
    elif not np.isfinite(cell["score"].to_numpy(dtype=float)).any():
        why = "no variant has a score\n(the task was not evaluated)"
    else:
        why = "no finite relative improvement\n(the baseline's score is missing)"
    ax.text(0.5, 0.5, why, ha="center", va="center", fontsize=8, transform=ax.transAxes)
    ax.set_title(title)
    ax.set_yticks([])
    ax.grid(False)


def plot_t1(df: pd.DataFrame, outputs: list[Path]) -> None:
    import seaborn as sns

    sizes = list(dict.fromkeys(df["size"]))
    fig, axes = plots.subplots(ncols=len(sizes), width=4.2, height=2.8, layout="constrained")
    for ax, size in zip(axes[0], sizes, strict=True):
        part = df[df["size"] == size]
        y = np.arange(len(part))[::-1]
        colours = sns.color_palette("colorblind", len(part))
        ax.barh(y, part["mean_ri"], color=colours)
        ax.set_yticks(y, part["variant"])
        ax.axvline(0, color="grey", lw=0.8)
        dropped = part["dropped"].iloc[0]
        ax.set(
            title=f"{size}: top {len(part)}" + (f"\n(dropped: {dropped})" if dropped else ""),
            xlabel=f"mean RI over {part['tasks'].iloc[0].replace(',', ', ')} (%)",
        )
    fig.suptitle("S4.T1 - best FFN layouts per size")
    plots.save(fig, outputs[0])


def plot_t2(df: pd.DataFrame, outputs: list[Path]) -> None:
    import seaborn as sns

    shown = df[~df["dropped"]]
    grid = shown.pivot(index="variant", columns="task", values="ri").reindex(
        list(dict.fromkeys(shown["variant"]))
    )[list(dict.fromkeys(shown["task"]))]
    fig, axes = plots.subplots(
        width=1.2 * len(grid.columns) + 2.5, height=0.32 * len(grid) + 1.5, layout="constrained"
    )
    sns.heatmap(grid, annot=True, fmt=".1f", center=0, cmap="RdBu", ax=axes[0, 0],
                cbar_kws={"label": "RI (%)"})  # fmt: skip
    note = _dropped_note(df)
    axes[0, 0].set(
        title=f"S4.T2 - {df['size'].iloc[0]}: RI per task" + (f"\n{note}" if note else ""),
        xlabel="",
        ylabel="",
    )
    plots.save(fig, outputs[0])


TABLES = {"S4.F3": table_f3, "S4.T1": table_t1, "S4.T2": table_t2}
FIGURES = {"S4.F3": plot_f3, "S4.T1": plot_t1, "S4.T2": plot_t2}
