"""Study S2 (stability and plasticity): the lr x seed sweep and the Fisher spectra.

S2.T1 / S2.F1 read the final validation accuracy of every sweep run. A run has *failed* when
that accuracy is at or below the failure threshold: by default the majority-class share of the
validation labels (0.527 on RTE), read from the prepared dataset. Stability S(f) is the sample
standard deviation over seeds (ddof = 1; one seed gives NaN). Intervals over seeds or trials are
95% Student-t intervals of the mean.

S2.F3 / S2.T2 read the `fisher` trials: per layer, erank / N of the empirical Fisher of the
base model with a fresh head, before fine-tuning; the whole-model value of a trial is the sum
over layers (block-diagonal assumption), then its mean over trials.

S2.F2 / S2.F4 read what the in-loop sweep runs (`fisher.models` x `fisher.lrs`) measured
(`tuneatlas.analysis.polar`, `tuneatlas.analysis.fisher.trace`): the polar trajectory of the
weights and the per-layer Fisher spectra during training, each row with its run's failure
flag as in S2.F1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tuneatlas.studies import plots

METRIC = "accuracy"


def mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t interval of the mean; NaN bounds for fewer than 2."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, np.nan, np.nan
    from scipy import stats  # lazy: only the tables with intervals need it

    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return mean, mean - half, mean + half


def majority_share(data_dir: Path, split: str) -> float:
    """The share of the most frequent label of a prepared split."""
    labels = pd.read_parquet(data_dir / f"{split}.parquet", columns=["label"])["label"]
    return float(labels.value_counts(normalize=True).max())


def _model_order(params: dict[str, Any]):
    order = {m: i for i, m in enumerate(params["models"])}
    return lambda col: col.map(order) if col.name == "model" else col


# --- S2.F1 / S2.T1: the sweep ------------------------------------------------------------------
def table_f1(spec: dict[str, Any], results: Path) -> pd.DataFrame:
    """Per run: the final validation accuracy, the majority share and whether the run failed."""
    p = spec["params"]
    split = "valid"
    majority = majority_share(results / "data" / p["dataset"], split)
    threshold = majority if p["failure_threshold"] is None else float(p["failure_threshold"])
    rows = []
    for run in spec["runs"]:
        path = results / "runs" / run / "eval.parquet"
        ev = pd.read_parquet(path)
        hit = ev[(ev["split"] == split) & (ev["metric"] == METRIC)]
        if hit.empty:
            raise ValueError(f"{path}: no {split} {METRIC}; S2 evaluates on the valid split")
        info = p["runs"][run]
        value = float(hit["value"].iloc[0])
        rows.append(
            {
                "model": info["model_label"],
                "lr": float(info["lr"]),
                "seed": int(info["seed"]),
                "run": run,
                "metric": METRIC,
                "split": split,
                "value": value,
                "majority": majority,
                "threshold": threshold,
                "failed": value <= threshold,
            }
        )
    df = pd.DataFrame(rows)
    return df.sort_values(["model", "lr", "seed"], key=_model_order(p)).reset_index(drop=True)


def table_t1(spec: dict[str, Any], results: Path) -> pd.DataFrame:
    """Per (model, lr): stability (std over seeds), mean, max, failures, 95% CI of the mean."""
    runs = table_f1(spec, results)
    rows = []
    for (model, lr), cell in runs.groupby(["model", "lr"], sort=False):
        mean, low, high = mean_ci(cell["value"].to_numpy())
        rows.append(
            {
                "model": model,
                "lr": lr,
                "metric": METRIC,
                "split": cell["split"].iloc[0],
                "stability": float(cell["value"].std(ddof=1)) if len(cell) > 1 else np.nan,
                "mean": mean,
                "ci_low": low,
                "ci_high": high,
                "max": float(cell["value"].max()),
                "failures": int(cell["failed"].sum()),
                "n_seeds": len(cell),
                "threshold": float(cell["threshold"].iloc[0]),
            }
        )
    return pd.DataFrame(rows)


def _lr_axis(ax: Any, lrs: list[float]) -> None:
    """A log lr axis ticked at the grid's values only."""
    ax.set_xscale("log")
    ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs])
    from matplotlib import ticker

    ax.xaxis.set_minor_locator(ticker.NullLocator())


def plot_f1(df: pd.DataFrame, outputs: list[Path]) -> None:
    fig, axes = plots.subplots(width=6.0, height=4.0)
    ax = axes[0, 0]
    lrs = sorted(df["lr"].unique())
    models = list(dict.fromkeys(df["model"]))
    for i, model in enumerate(models):
        cells = [mean_ci(df[(df["model"] == model) & (df["lr"] == lr)]["value"]) for lr in lrs]
        mean = np.array([c[0] for c in cells])
        # accuracy lives in [0, 1]: a t-interval over few seeds can overshoot it, so the bars
        # stop at the range's ends (the table keeps the interval as computed)
        err = np.array([[c[0] - max(c[1], 0.0), min(c[2], 1.0) - c[0]] for c in cells]).T
        shift = 10 ** ((i - (len(models) - 1) / 2) * 0.025)  # side by side on the log axis
        x = np.array(lrs) * shift
        ax.errorbar(x, mean, yerr=np.nan_to_num(err), fmt="o-", capsize=3, label=model)
        sub = df[df["model"] == model]
        ax.scatter(sub["lr"] * shift, sub["value"], s=8, alpha=0.3, color=ax.lines[-1].get_color())
    ax.axhline(df["majority"].iloc[0], ls="--", lw=1, color="grey", label="majority class")
    _lr_axis(ax, lrs)
    ax.set(
        title="S2.F1 - validation accuracy vs peak lr\n(mean, 95% t-interval over seeds,"
        " clipped to [0, 1])",
        xlabel="peak learning rate",
        ylabel=f"{df['split'].iloc[0]} accuracy",
    )
    ax.legend(fontsize=8)
    plots.save(fig, outputs[0])


def plot_t1(df: pd.DataFrame, outputs: list[Path]) -> None:
    fig, axes = plots.subplots(ncols=2, width=4.5, height=3.6)
    for model, cell in df.groupby("model", sort=False):
        axes[0, 0].plot(cell["lr"], cell["stability"], "o-", label=model)
        axes[0, 1].plot(cell["lr"], cell["failures"] / cell["n_seeds"], "o-", label=model)
    axes[0, 0].set(title="stability S(f) = std over seeds", ylabel="std of accuracy")
    axes[0, 1].set(
        title="failed runs (acc <= threshold)", ylabel="share of seeds", ylim=(-0.05, 1.05)
    )
    for ax in axes[0]:
        _lr_axis(ax, sorted(df["lr"].unique()))
        ax.set(xlabel="peak learning rate")
    axes[0, 1].legend(fontsize=8)
    fig.suptitle("S2.T1 - stability and failures per (model, lr)")
    plots.save(fig, outputs[0])


# --- S2.F3 / S2.T2: Fisher spectra before fine-tuning ------------------------------------------
def table_f3(spec: dict[str, Any], results: Path) -> pd.DataFrame:
    """Per (model, trial, layer): erank / N of the layer's empirical Fisher."""
    p = spec["params"]
    frames = [pd.read_parquet(results / "fisher" / f"{fid}.parquet") for fid in p["trials"]]
    df = pd.concat(frames, ignore_index=True).rename(columns={"normalised_erank": "value"})
    df = df[["model", "layer", "trial", "n", "erank", "value"]]
    return df.sort_values(["model", "layer", "trial"], key=_model_order(p)).reset_index(drop=True)


def table_t2(spec: dict[str, Any], results: Path) -> pd.DataFrame:
    """Per model: the whole-model erank (sum over layers of erank / N), mean over trials."""
    per_trial = table_f3(spec, results).groupby(["model", "trial"], sort=False)["value"].sum()
    rows = []
    for model, values in per_trial.groupby(level="model", sort=False):
        mean, low, high = mean_ci(values.to_numpy())
        rows.append(
            {"model": model, "value": mean, "ci_low": low, "ci_high": high, "trials": len(values)}
        )
    return pd.DataFrame(rows)


def plot_f3(df: pd.DataFrame, outputs: list[Path]) -> None:
    fig, axes = plots.subplots(width=6.0, height=3.8)
    ax = axes[0, 0]
    for model, sub in df.groupby("model", sort=False):
        cells = [mean_ci(g["value"]) for _, g in sub.groupby("layer")]
        layers = sorted(sub["layer"].unique())
        mean = np.array([c[0] for c in cells])
        line = ax.plot(layers, mean, "o-", ms=3, label=model)[0]
        low, high = np.array([c[1] for c in cells]), np.array([c[2] for c in cells])
        if np.isfinite(low).all():
            ax.fill_between(layers, low, high, color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xticks(sorted(df["layer"].unique()))
    ax.set(
        title="S2.F3 - normalised erank of the per-layer Fisher before fine-tuning",
        xlabel="layer",
        ylabel="erank / N (mean, 95% CI over trials)",
        ylim=(0, 1.05),
    )
    ax.legend(fontsize=8)
    plots.save(fig, outputs[0])


def plot_t2(df: pd.DataFrame, outputs: list[Path]) -> None:
    import seaborn as sns

    fig, axes = plots.subplots(width=5.0, height=0.5 * len(df) + 1.5)
    ax = axes[0, 0]
    y = np.arange(len(df))[::-1]
    err = np.nan_to_num([df["value"] - df["ci_low"], df["ci_high"] - df["value"]])
    ax.barh(y, df["value"], xerr=err, capsize=3, color=sns.color_palette("colorblind", len(df)))
    for yi, v in zip(y, df["value"], strict=True):
        ax.annotate(f"{v:.2f}", (v, yi), xytext=(6, 0), textcoords="offset points", va="center")
    ax.set_yticks(y, df["model"])
    ax.set(
        title=f"S2.T2 - whole-model erank (sum over layers; mean of {int(df['trials'].iloc[0])}"
        " trials)",
        xlabel="sum over layers of erank / N",
    )
    ax.margins(x=0.15)
    plots.save(fig, outputs[0])


# --- S2.F2 / S2.F4: in the loop ----------------------------------------------------------------
def _inloop(
    spec: dict[str, Any], results: Path, file: str, columns: list[str], draw: Any
) -> pd.DataFrame:
    """What each in-loop run wrote to `captures/<file>`, with its model, lr, seed, final
    accuracy (`run_value`), failure, and how the figure shows it (`shown_as`)."""
    from tuneatlas.analysis.capture import CAPTURES_DIR

    runs = table_f1(spec, results)[["model", "lr", "seed", "run", "value", "failed"]]
    runs = runs.rename(columns={"value": "run_value"})
    runs["shown_as"] = _shown_as(runs, draw)
    frames = []
    for run in runs["run"]:
        path = results / "runs" / run / CAPTURES_DIR / file
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing: run {run} was trained without its in-loop measurement;"
                " delete results/runs/{run} and run snakemake again"
            )
        frames.append(pd.read_parquet(path))
    df = runs.merge(pd.concat(frames, ignore_index=True), on="run", validate="one_to_many")
    return df[["model", "lr", "seed", "run", *columns, "run_value", "failed", "shown_as"]]


def _shown_as(runs: pd.DataFrame, draw: Any) -> list[str]:
    """Per run: "run" (drawn alone), "mean" (in its cell's mean) or "" (in the table only).

    draw "mean": every run in the mean; "all": every run alone; "auto": per (model, lr) cell
    the lowest seed that failed and the lowest that did not, as the papers' figures pair a
    failed and a successful run; a list of seeds: those runs alone."""
    if draw in ("mean", "all"):
        return [draw if draw == "mean" else "run"] * len(runs)
    if draw == "auto":
        picked = set(runs.sort_values("seed").groupby(["model", "lr", "failed"])["run"].first())
    else:
        picked = set(runs.loc[runs["seed"].isin(list(draw)), "run"])
    return ["run" if r in picked else "" for r in runs["run"]]


def table_f2(spec: dict[str, Any], results: Path) -> pd.DataFrame:
    """Per run and measured step: r, phi (radians) and the training loss."""
    from tuneatlas.analysis.polar import POLAR_FILE

    columns = ["step", "epoch", "r", "phi", "loss"]
    return _inloop(spec, results, POLAR_FILE, columns, spec["params"].get("draw", "all"))


def table_f4(spec: dict[str, Any], results: Path) -> pd.DataFrame:
    """Per run, measured step and layer: erank and erank / N (`value`) of the layer's Fisher."""
    from tuneatlas.analysis.fisher.trace import FISHER_FILE

    columns = ["step", "layer", "n", "erank", "normalised_erank"]
    df = _inloop(spec, results, FISHER_FILE, columns, spec["params"].get("draw", "mean"))
    return df.rename(columns={"normalised_erank": "value"})


def _cells(df: pd.DataFrame) -> list[tuple[str, float]]:
    return list(dict.fromkeys(zip(df["model"], df["lr"], strict=True)))


def _readable_labels(run: pd.DataFrame, gap: float = 0.1) -> list[tuple[int, float, float]]:
    """(step, phi, r) of the points worth a step label: the first, the last, and any point at
    least `gap` (in units of r) from the last labelled one; the trajectory's end crowds the
    origin with points whose labels would overlap."""
    rows = list(zip(run["step"], run["phi"], run["r"], strict=True))
    if not rows:
        return []
    xy = [(r * np.cos(phi), r * np.sin(phi)) for _, phi, r in rows]
    keep, last = [0], xy[0]
    for i in range(1, len(rows) - 1):
        if np.hypot(xy[i][0] - last[0], xy[i][1] - last[1]) >= gap:
            keep.append(i)
            last = xy[i]
    end = len(rows) - 1
    if end > 0:
        if keep[-1] != 0 and np.hypot(xy[end][0] - last[0], xy[end][1] - last[1]) < gap:
            keep.pop()  # the final point's label wins over a neighbour's
        keep.append(end)
    return [rows[i] for i in keep]


def _drawn_alone(df: pd.DataFrame, key: str) -> pd.DataFrame:
    drawn = df[df["shown_as"] == "run"]
    if drawn.empty:
        raise ValueError(f"no run to draw: config key '{key}' names no seed of the in-loop runs")
    return drawn


def plot_f2(df: pd.DataFrame, outputs: list[Path]) -> None:
    from matplotlib import cm, colors

    df = _drawn_alone(df, "studies.s2.polar.draw")
    cells = _cells(df)
    fig, axes = plots.subplots(
        ncols=len(cells),
        width=4.2,
        height=3.0,
        subplot_kw={"projection": "polar"},
        layout="constrained",
    )
    losses = df["loss"].dropna()
    norm = colors.Normalize(losses.min(), losses.max())
    for ax, (model, lr) in zip(axes[0], cells, strict=True):
        for _, run in df[(df["model"] == model) & (df["lr"] == lr)].groupby("run", sort=False):
            ls = "--" if run["failed"].iloc[0] else "-"
            ax.plot(run["phi"], run["r"], ls, color="grey", lw=0.8, zorder=1)
            points = ax.scatter(
                run["phi"], run["r"], c=run["loss"], cmap="viridis", norm=norm, s=22, zorder=2
            )
            points.set_edgecolor("black")
            for step, phi, r in _readable_labels(run):
                ax.annotate(
                    str(step), (phi, r), xytext=(3, 3), textcoords="offset points", fontsize=6
                )
        ax.set_thetamin(0)
        ax.set_thetamax(180)
        ax.set_rticks([0.25, 0.5, 0.75, 1.0], ["", "0.5", "", "1"])
        ax.set_thetagrids([0, 45, 90, 135, 180])
        ax.set_title(f"{model}, lr {lr:g}", fontsize=9)
    mappable = cm.ScalarMappable(norm=norm, cmap="viridis")
    fig.colorbar(mappable, ax=list(axes[0]), label="training loss", shrink=0.6)
    fig.suptitle(
        "S2.F2 - weight trajectory in polar coordinates: r = |θt - θfin| / |θinit - θfin|,"
        " φ = angle between θt - θfin and θinit - θfin\n(labels: step; dashed: failed run)",
        fontsize=10,
    )
    plots.save(fig, outputs[0])


def plot_f4(df: pd.DataFrame, outputs: list[Path]) -> None:
    """The mean over each cell's seeds (split by outcome), or single runs as the paper's Fig. 4
    (one panel per run, titled with its accuracy): `shown_as` says which."""
    from matplotlib import cm, colormaps, colors

    single = not (df["shown_as"] == "mean").any()
    drawn = _drawn_alone(df, "studies.s2.fisher.draw") if single else df
    panels = _f4_panels(drawn, single)
    nrows, ncols = len(panels), max(len(row) for row in panels)
    fig, axes = plots.subplots(
        ncols=ncols, nrows=nrows, width=4.0, height=3.2, layout="constrained"
    )
    norm = colors.Normalize(df["step"].min(), df["step"].max())
    cmap = colormaps["viridis"]
    for i, row in enumerate(panels):
        for j in range(ncols):
            ax = axes[i, j]
            if j >= len(row):
                ax.axis("off")
                continue
            title, part = row[j]
            for failed, ls in ((False, "-"), (True, "--")):
                for step, at in part[part["failed"] == failed].groupby("step"):
                    mean = at.groupby("layer")["value"].mean()
                    ax.plot(mean.index, mean.to_numpy(), ls, color=cmap(norm(step)), lw=1.2)
            ax.set(
                title=title,
                xlabel="layer",
                ylabel="erank / N",
                ylim=(0, 1.05),
                xticks=sorted(df["layer"].unique()),
            )
    mappable = cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(mappable, ax=axes.ravel().tolist(), label="step", shrink=0.6)
    how = "single runs" if single else "mean over seeds; solid: successful runs"
    fig.suptitle(
        f"S2.F4 - per-layer Fisher erank during fine-tuning\n({how}, dashed: failed runs)",
        fontsize=10,
    )
    plots.save(fig, outputs[0])


def _f4_panels(df: pd.DataFrame, single: bool) -> list[list[tuple[str, pd.DataFrame]]]:
    """One row of (title, rows) panels per (model, lr) cell: its runs one by one, or one
    panel for the cell in lr columns per model (the mean view)."""
    if single:
        return [
            [
                (
                    f"{model}, lr {lr:g}, seed {seed}:\nacc {run['run_value'].iloc[0]:.2f}"
                    + (" (failed)" if run["failed"].iloc[0] else ""),
                    run,
                )
                for seed, run in df[(df["model"] == model) & (df["lr"] == lr)].groupby("seed")
            ]
            for model, lr in _cells(df)
        ]
    rows = []
    for model in dict.fromkeys(df["model"]):
        row = []
        for lr in sorted(df["lr"].unique()):
            cell = df[(df["model"] == model) & (df["lr"] == lr)]
            n_failed, n_runs = cell.groupby("run")["failed"].first().agg(["sum", "size"])
            row.append((f"{model}, lr {lr:g}: {n_failed}/{n_runs} failed", cell))
        rows.append(row)
    return rows


TABLES = {
    "S2.T1": table_t1,
    "S2.F1": table_f1,
    "S2.F2": table_f2,
    "S2.F3": table_f3,
    "S2.T2": table_t2,
    "S2.F4": table_f4,
}
FIGURES = {
    "S2.T1": plot_t1,
    "S2.F1": plot_f1,
    "S2.F2": plot_f2,
    "S2.F3": plot_f3,
    "S2.T2": plot_t2,
    "S2.F4": plot_f4,
}
