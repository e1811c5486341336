"""S3 tables and figures: embedding trajectories during fine-tuning, built from runs' captures.

Each ``table_<id>`` turns the captures written by `tuneatlas.analysis.capture.EmbeddingCapture`
into a tidy DataFrame (one row per observation, explicit columns, ``label`` = class id, ``group`` =
the class's training-size group or null); each ``plot_<id>`` draws that table and nothing else.
`TABLES` / `FIGURES` adapt them to the registry of `tuneatlas.studies.registry`
(builder ``(target_spec, results_root) -> DataFrame``, plotter ``(df, outputs) -> None``).

Space: speed, stay points, linearity index and clustering are computed on the last-layer CLS
vectors themselves (``space="hidden"``, the paper's v_t^d; see
`tuneatlas.analysis.trajectories`), on the probe set (the paper's 90 trajectories,
``points="probe"``); ``space="pca"`` uses the 2-D plane of the figures instead (PCA fitted on
the final capture of all recorded rows).

Runs, as the paper uses them: F4 and F5 read the balanced preliminary run when the plan has one
(the main run otherwise), F7 reads both (``setup`` = ``prelim`` | ``main``), the others the
imbalanced main run (`tuneatlas.plan`, S3 targets).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml

from tuneatlas.analysis import trajectories as tr
from tuneatlas.analysis.capture import CAPTURES_DIR, Captures, load_captures, load_scores
from tuneatlas.io import atomic_path
from tuneatlas.studies.plots import plt, save, subplots

Space = Literal["hidden", "pca"]
Points = Literal["probe", "all"]
CapturesLike = Captures | str | os.PathLike
ClassGroups = Mapping[int, str] | None

GROUP_CMAPS = ["Blues", "Oranges", "Greens", "Purples", "Reds", "Greys"]
GROUP_STYLES = ["-", "--", ":", "-."]


# --- inputs -----------------------------------------------------------------------------------
def _captures(c: CapturesLike) -> Captures:
    return c if isinstance(c, Captures) else load_captures(c)


def class_groups_from_counts(train_labels: Sequence[int] | np.ndarray) -> dict[int, str]:
    """Class -> training-size group (``"400/class"``) for an imbalanced set-up, else ``{}``.

    Groups are only meaningful when classes share training sizes (the paper: 3 x 400, 3 x 100,
    3 x 10). When any class has a count of its own (a naturally unbalanced corpus, where two
    classes may tie by chance) or all counts are equal, there are no groups and ``{}`` is
    returned. Ordered largest group first.
    """
    values, counts = np.unique(np.asarray(train_labels), return_counts=True)
    levels, members = np.unique(counts, return_counts=True)
    if levels.size < 2 or (members < 2).any():
        return {}
    order = np.argsort(-counts, kind="stable")
    return {int(values[i]): f"{int(counts[i])}/class" for i in order}


def _groups_of(labels: np.ndarray, class_groups: ClassGroups) -> list[str | None]:
    groups = class_groups or {}
    return [groups.get(int(c)) for c in labels]


def _select(
    caps: Captures, points: Points, space: Space
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(V ``[T, n, dims]``, labels, split rows) of the chosen points in the chosen space."""
    V, labels, rows = caps.points(points)
    if space == "hidden":
        return V, labels, rows
    if space == "pca":
        coords, _ = tr.pca_project(caps.embeddings)
        sel = caps.probe if points == "probe" else np.arange(caps.rows.size)
        return coords[:, sel], labels, rows
    raise ValueError(f"space must be 'hidden' or 'pca'; got {space!r}")


def _label_col(values: Sequence[Any]) -> pd.Series:
    return pd.Series(pd.array(list(values), dtype="Int64"))


def _group_col(values: Sequence[str | None]) -> pd.Series:
    return pd.Series(list(values), dtype="string")


# --- tables -----------------------------------------------------------------------------------
def table_f7(
    scores: pd.DataFrame | str | os.PathLike,
    class_groups: ClassGroups = None,
    setup: str = "main",
) -> pd.DataFrame:
    """Accuracy, macro-F1 (label null) and per-class F1 vs step on the capture split of one run;
    ``setup`` names the run (``prelim`` = the balanced preliminary run, ``main``)."""
    df = scores if isinstance(scores, pd.DataFrame) else load_scores(scores)
    out = df[["step", "split", "metric", "label", "value"]].copy()
    out["label"] = out["label"].astype("Int64")
    out["group"] = _group_col(
        [None if pd.isna(c) else (class_groups or {}).get(int(c)) for c in out["label"]]
    ).values
    out.insert(0, "setup", pd.Series([setup] * len(out), dtype="string").values)
    return out.sort_values(["metric", "label", "step"], na_position="first").reset_index(drop=True)


# S3 set-ups in display order, and their names in figures
SETUP_NAMES = {"prelim": "preliminary run (balanced)", "main": "main run (imbalanced)"}


def _setup_order(setup: Any) -> tuple[int, str]:
    names = list(SETUP_NAMES)
    return (names.index(setup) if setup in names else len(names), str(setup))


def table_f4(captures: CapturesLike, class_groups: ClassGroups = None) -> pd.DataFrame:
    """Every recorded row at every capture in the final-capture PCA plane: step, point, x, y."""
    caps = _captures(captures)
    coords, _ = tr.pca_project(caps.embeddings)
    T, N, _ = coords.shape
    return pd.DataFrame(
        {
            "step": np.repeat(caps.steps, N),
            "point": np.tile(caps.rows, T),
            "label": _label_col(np.tile(caps.labels, T)),
            "group": _group_col(_groups_of(np.tile(caps.labels, T), class_groups)),
            "x": coords[..., 0].ravel(),
            "y": coords[..., 1].ravel(),
        }
    )


def table_f5(captures: CapturesLike, class_groups: ClassGroups = None) -> pd.DataFrame:
    """Probe trajectories in the same PCA plane as F4: point, label, step, x, y."""
    caps = _captures(captures)
    df = table_f4(caps, class_groups)
    probe_rows = set(caps.rows[caps.probe].tolist())
    out = df[df["point"].isin(probe_rows)]
    return out.sort_values(["point", "step"]).reset_index(drop=True)[
        ["point", "label", "group", "step", "x", "y"]
    ]


def table_f8(
    captures: CapturesLike,
    class_groups: ClassGroups = None,
    n_clusters: int | None = None,
    space: Space = "hidden",
    linkage: str = "average",
) -> pd.DataFrame:
    """Cluster ids of the probe points by trajectory and by final embedding.

    One row per (method, point): ``cluster`` (renamed to the best-matching class), ``ari`` (that
    clustering vs the classes) and ``ari_between`` (trajectory vs final clustering).
    """
    caps = _captures(captures)
    V, labels, rows = _select(caps, "probe", space)
    cmp = tr.compare_clusterings(V, labels, n_clusters, linkage)
    frames = []
    for method, clusters, ari in (
        ("trajectory", cmp.trajectory, cmp.ari_trajectory),
        ("final", cmp.final, cmp.ari_final),
    ):
        frames.append(
            pd.DataFrame(
                {
                    "method": method,
                    "point": rows,
                    "label": _label_col(labels),
                    "group": _group_col(_groups_of(labels, class_groups)),
                    "cluster": clusters,
                    "ari": ari,
                    "ari_between": cmp.ari_between,
                    "space": space,
                    "linkage": linkage,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _per_class_rows(
    values: np.ndarray, labels: np.ndarray, steps: np.ndarray, class_groups: ClassGroups
) -> pd.DataFrame:
    """Tidy class means of ``values [R, n]`` whose rows happen at ``steps [R]``."""
    classes, means = tr.class_means(values, labels)
    counts = np.array([(labels == c).sum() for c in classes])
    R, C = means.shape
    return pd.DataFrame(
        {
            "step": np.repeat(steps, C),
            "label": _label_col(np.tile(classes, R)),
            "group": _group_col(_groups_of(np.tile(classes, R), class_groups)),
            "n": np.tile(counts, R),
            "value": means.ravel(),
        }
    )


def table_f9(
    captures: CapturesLike,
    class_groups: ClassGroups = None,
    space: Space = "hidden",
    points: Points = "probe",
) -> pd.DataFrame:
    """Speed: mean displacement over the interval ending at ``step``, per class."""
    caps = _captures(captures)
    V, labels, _ = _select(caps, points, space)
    df = _per_class_rows(tr.displacements(V), labels, caps.steps[1:], class_groups)
    df["space"] = space
    df["points"] = points  # probe = the probe set, all = every captured point
    return df


def _stay_rows(
    mask: np.ndarray, labels: np.ndarray, steps: np.ndarray, class_groups: ClassGroups
) -> pd.DataFrame:
    """Count/share of trajectories with a stay point: all points (label null), then per class."""
    has = tr.has_stay(mask)
    first = tr.first_stay_index(mask)
    first_step = np.where(first >= 0, steps[np.clip(first, 0, None)], -1).astype(float)
    first_step[first < 0] = np.nan
    rows = []
    for c in [None, *np.unique(labels).tolist()]:
        sel = np.ones_like(has) if c is None else labels == c
        n = int(sel.sum())
        count = int(has[sel].sum())
        fs = first_step[sel & has]
        rows.append(
            {
                "label": c,
                "group": None if c is None else (class_groups or {}).get(int(c)),
                "n": n,
                "count": count,
                "share": count / n,
                "median_first_stay_step": float(np.median(fs)) if fs.size else np.nan,
            }
        )
    df = pd.DataFrame(rows)
    df["label"] = df["label"].astype("Int64")
    df["group"] = df["group"].astype("string")
    return df


def table_t1(
    captures: CapturesLike,
    class_groups: ClassGroups = None,
    D: Sequence[float] = (2, 3, 4, 5, 10),
    T: int = 4,
    space: Space = "hidden",
    points: Points = "probe",
) -> pd.DataFrame:
    """Classic stay points (paper T1/F10): per D, trajectories with >= 1 stay point.

    ``median_first_stay_step`` is the step at which the first staying window starts.
    """
    caps = _captures(captures)
    V, labels, _ = _select(caps, points, space)
    frames = []
    for d in D:
        df = _stay_rows(tr.classic_stay_mask(V, float(d), T), labels, caps.steps, class_groups)
        df.insert(0, "T", T)
        df.insert(0, "D", float(d))
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    out["space"] = space
    return out


def table_t2(
    captures: CapturesLike,
    class_groups: ClassGroups = None,
    epsilon: Sequence[float] = (0.1, 0.15, 0.2, 0.25),
    k: int = 5,
    space: Space = "hidden",
    points: Points = "probe",
) -> pd.DataFrame:
    """Linearity-index stay points (paper T2/F11): per epsilon, trajectories with >= 1 S < eps."""
    caps = _captures(captures)
    V, labels, _ = _select(caps, points, space)
    frames = []
    for eps in epsilon:
        mask = tr.linearity_stay_mask(V, float(eps), k)
        df = _stay_rows(mask, labels, caps.steps, class_groups)
        df.insert(0, "k", k)
        df.insert(0, "epsilon", float(eps))
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    out["space"] = space
    return out


def table_f12(
    captures: CapturesLike,
    class_groups: ClassGroups = None,
    ks: Sequence[int] = (3, 5, 7, 10),
    space: Space = "hidden",
    points: Points = "probe",
) -> pd.DataFrame:
    """Mean linearity index per class vs the step where its window starts, for each k."""
    caps = _captures(captures)
    V, labels, _ = _select(caps, points, space)
    frames = []
    for k in ks:
        S = tr.linearity_index(V, int(k))
        df = _per_class_rows(S, labels, caps.steps[: S.shape[0]], class_groups)
        df.insert(0, "k", int(k))
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    out["space"] = space
    return out


# --- colours ----------------------------------------------------------------------------------
def _class_styles(df: pd.DataFrame) -> dict[int, dict[str, Any]]:
    """Colour, line style and legend name per class; with groups, one hue family per group."""
    pairs = df.dropna(subset=["label"]).drop_duplicates("label").sort_values("label")
    labels = [int(c) for c in pairs["label"]]
    groups = [None if pd.isna(g) else str(g) for g in pairs["group"]]
    named = pairs["class_name"] if "class_name" in pairs else pd.Series([None] * len(pairs))
    # legend names: "3 topic-news" when the table names its classes, else the id
    ids = {c: str(c) if pd.isna(n) else f"{c} {n}" for c, n in zip(labels, named, strict=True)}
    styles: dict[int, dict[str, Any]] = {}
    if any(g is not None for g in groups):
        order = _group_order(groups)
        for gi, g in enumerate(order):
            members = [c for c, gg in zip(labels, groups, strict=True) if gg == g]
            cmap = plt.get_cmap(GROUP_CMAPS[gi % len(GROUP_CMAPS)])
            shades = np.linspace(0.9, 0.5, max(len(members), 1))
            for c, s in zip(members, shades, strict=False):
                styles[c] = {
                    "color": cmap(s),
                    "ls": GROUP_STYLES[gi % len(GROUP_STYLES)],
                    "name": f"{ids[c]} ({g if g is not None else 'no group'})",
                    "group": g,
                }
    else:
        palette = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
        for i, c in enumerate(labels):
            styles[c] = {"color": palette(i % palette.N), "ls": "-", "name": ids[c], "group": None}
    return styles


def _group_order(groups: Sequence[str | None]) -> list[str | None]:
    """Groups by decreasing training size when named "<n>/class", else by first appearance."""
    uniq = list(dict.fromkeys(groups))

    def size(g: str | None) -> float:
        try:
            return -float(str(g).split("/")[0])
        except ValueError:
            return float(uniq.index(g))

    return sorted(uniq, key=lambda g: (g is None, size(g)))


def _legend(ax: plt.Axes, title: str | None = None) -> None:
    """The class legend; titled "class (train size)" only when its entries carry their
    training-size group ("3 (400/class)"): a balanced run (S3's preliminary one) has none."""
    if title is None:
        _, labels = ax.get_legend_handles_labels()
        sized = any("/class" in label for label in labels)
        title = "class (train size)" if sized else "class (balanced training set)"
    ax.legend(
        title=title, fontsize=8, title_fontsize=9, loc="center left", bbox_to_anchor=(1.01, 0.5)
    )


def _class_lines(ax: plt.Axes, df: pd.DataFrame, x: str, y: str, styles: dict[int, dict]) -> None:
    for c, st in styles.items():
        sub = df[df["label"] == c].sort_values(x)
        ax.plot(sub[x], sub[y], color=st["color"], ls=st["ls"], lw=1.4, label=st["name"])


def _first(outputs: Sequence[str | os.PathLike] | str | os.PathLike) -> Path:
    if isinstance(outputs, str | os.PathLike):
        return Path(outputs)
    return Path(outputs[0])


# --- figures ----------------------------------------------------------------------------------
def plot_f7(df: pd.DataFrame, out_png: str | os.PathLike) -> None:
    """One row per set-up (preliminary run first, as the paper's Fig. 3, then the main run):
    left, accuracy and macro-F1 vs step; right, per-class F1 vs step."""
    if "setup" in df:
        setups = sorted(df["setup"].dropna().unique().tolist(), key=_setup_order)
    else:
        setups = [None]
    fig, axes = subplots(2, len(setups), width=6.0, height=4.2)
    for row, setup in enumerate(setups):
        part = df if setup is None else df[df["setup"] == setup]
        name = "" if setup is None else f"{SETUP_NAMES.get(setup, setup)}: "
        ax = axes[row, 0]
        for metric, color in (("accuracy", "black"), ("macro_f1", "tab:red")):
            sub = part[(part["metric"] == metric) & part["label"].isna()].sort_values("step")
            ax.plot(sub["step"], sub["value"], color=color, lw=1.6, label=metric.replace("_", "-"))
        ax.set(xlabel="step", ylabel="score", ylim=(-0.02, 1.02), title=f"{name}overall")
        ax.legend(fontsize=9)
        per = part[part["metric"] == "f1"].dropna(subset=["label"])
        styles = _class_styles(per)
        _class_lines(axes[row, 1], per, "step", "value", styles)
        axes[row, 1].set(
            xlabel="step", ylabel="F1", ylim=(-0.02, 1.02), title=f"{name}per-class F1"
        )
        _legend(axes[row, 1])
    fig.subplots_adjust(hspace=0.45)  # room for the x labels above the next row's titles
    split = df["split"].iloc[0] if "split" in df and len(df) else "test"
    fig.suptitle(f"S3.F7 Scores on the {split} split during fine-tuning")
    save(fig, Path(out_png))


def _frame_limits(df: pd.DataFrame) -> tuple[tuple[float, float], tuple[float, float]]:
    """Axis limits shared by every frame so motion is not hidden by rescaling."""

    def lim(v: pd.Series) -> tuple[float, float]:
        lo, hi = float(v.min()), float(v.max())
        pad = 0.05 * (hi - lo or 1.0)
        return lo - pad, hi + pad

    return lim(df["x"]), lim(df["y"])


def _f4_title(step: Any) -> str:
    return f"S3.F4 Test set in PCA space - step {int(step)}"


def _render_frames(df: pd.DataFrame, dpi: int = 80) -> tuple[list[np.ndarray], plt.Figure]:
    """RGB frames of the F4 animation in capture order; returns the figure at its last frame."""
    styles = _class_styles(df)
    steps = np.sort(df["step"].unique())
    first = df[df["step"] == steps[0]].sort_values("point")
    colors = [styles[int(c)]["color"] for c in first["label"]]
    xlim, ylim = _frame_limits(df)
    fig, axes = subplots(1, width=7.0, height=5.2)
    ax = axes[0, 0]
    scat = ax.scatter(first["x"], first["y"], c=colors, s=12, alpha=0.8, linewidths=0)
    for st in styles.values():  # legend proxies: one entry per class, same colours as the points
        ax.scatter([], [], color=st["color"], s=20, label=st["name"])
    ax.set(xlim=xlim, ylim=ylim, xlabel="PC1 (final capture)", ylabel="PC2 (final capture)")
    _legend(ax)
    ax.set_title(_f4_title(steps[-1]))  # lay out with a title in place so frames do not clip it
    fig.tight_layout()
    frames = []
    by_step = {s: g.sort_values("point") for s, g in df.groupby("step")}
    for s in steps:
        g = by_step[s]
        if len(g) != len(first):
            raise ValueError(f"capture at step {s} has {len(g)} points, the first has {len(first)}")
        scat.set_offsets(g[["x", "y"]].to_numpy())
        ax.set_title(_f4_title(s))
        fig.canvas.draw()
        frames.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    return frames, fig


def _write_mp4(frames: list[np.ndarray], path: Path, fps: float) -> None:
    """Pipe raw RGB frames to ffmpeg (H.264, yuv420p; sizes padded to even)."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise FileNotFoundError("ffmpeg is not on PATH; cannot write an MP4")
    h, w, _ = frames[0].shape
    with atomic_path(path, ".mp4") as tmp:
        cmd = [
            ffmpeg,
            "-y",
            "-loglevel",
            "error",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-s",
            f"{w}x{h}",
            "-r",
            f"{fps:g}",
            "-i",
            "-",
            "-vf",
            "pad=ceil(iw/2)*2:ceil(ih/2)*2",
            "-pix_fmt",
            "yuv420p",
            "-f",
            "mp4",
            str(tmp),
        ]
        proc = subprocess.run(cmd, input=b"".join(f.tobytes() for f in frames), capture_output=True)
        if proc.returncode != 0:
            raise RuntimeError(f"ffmpeg failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")


def plot_f4(
    df: pd.DataFrame,
    out_png: str | os.PathLike,
    out_gif: str | os.PathLike | None = None,
    out_mp4: str | os.PathLike | None = None,
    frame_ms: int = 250,
) -> None:
    """Animation of the test set over captures (GIF; MP4 too when ffmpeg is on PATH) and a PNG
    still of the final frame. ``out_gif`` defaults to ``out_png`` with suffix .gif, ``out_mp4``
    likewise when ffmpeg exists."""
    from PIL import Image

    out_png = Path(out_png)
    out_gif = Path(out_gif) if out_gif else out_png.with_suffix(".gif")
    frames, fig = _render_frames(df)
    images = [Image.fromarray(f).convert("P", palette=Image.Palette.ADAPTIVE) for f in frames]
    # Hold the last frame so the final state is readable before the loop restarts.
    durations = [frame_ms] * (len(images) - 1) + [frame_ms * 8]
    with atomic_path(out_gif, ".gif") as tmp:
        images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0
        )
    if out_mp4 is not None or shutil.which("ffmpeg"):
        _write_mp4(
            frames, Path(out_mp4) if out_mp4 else out_png.with_suffix(".mp4"), 1000 / frame_ms
        )
    save(fig, out_png)  # the figure is left at the final frame


def plot_f5(df: pd.DataFrame, out_png: str | os.PathLike) -> None:
    """Probe trajectories in the final-capture PCA plane: circle = start, triangle = end."""
    styles = _class_styles(df)
    fig, axes = subplots(1, width=7.5, height=6.0)
    ax = axes[0, 0]
    for _point, g in df.sort_values("step").groupby("point"):
        st = styles[int(g["label"].iloc[0])]
        ax.plot(g["x"], g["y"], color=st["color"], lw=0.8, alpha=0.6)
        ax.scatter(
            g["x"].iloc[0],
            g["y"].iloc[0],
            marker="o",
            s=22,
            color=st["color"],
            edgecolors="black",
            linewidths=0.4,
            zorder=3,
        )
        ax.scatter(
            g["x"].iloc[-1],
            g["y"].iloc[-1],
            marker="^",
            s=40,
            color=st["color"],
            edgecolors="black",
            linewidths=0.4,
            zorder=4,
        )
    for st in styles.values():
        ax.plot([], [], color=st["color"], lw=2, label=st["name"])
    ax.scatter([], [], marker="o", color="white", edgecolors="black", label="start")
    ax.scatter([], [], marker="^", color="white", edgecolors="black", label="end")
    ax.set(
        xlabel="PC1 (final capture)",
        ylabel="PC2 (final capture)",
        title=f"S3.F5 Probe trajectories ({df['point'].nunique()} test examples)",
    )
    _legend(ax)
    save(fig, Path(out_png))


def _contingency(a: pd.Series, b: pd.Series) -> pd.DataFrame:
    return pd.crosstab(a.astype(int), b.astype(int))


def plot_f8(df: pd.DataFrame, out_png: str | os.PathLike) -> None:
    """Contingency heatmaps: class vs trajectory clusters, class vs final clusters, and the two
    clusterings against each other, with the ARI of each pair in the panel title."""
    traj = df[df["method"] == "trajectory"].sort_values("point").reset_index(drop=True)
    final = df[df["method"] == "final"].sort_values("point").reset_index(drop=True)
    if not traj["point"].equals(final["point"]):
        raise ValueError("S3.F8 table: trajectory and final rows cover different points")
    panels = [
        (
            _contingency(traj["label"], traj["cluster"]),
            "class",
            "trajectory cluster",
            f"class vs trajectory clusters\nARI = {traj['ari'].iloc[0]:.3f}",
        ),
        (
            _contingency(final["label"], final["cluster"]),
            "class",
            "final-embedding cluster",
            f"class vs final-embedding clusters\nARI = {final['ari'].iloc[0]:.3f}",
        ),
        (
            _contingency(final["cluster"], traj["cluster"]),
            "final-embedding cluster",
            "trajectory cluster",
            f"final vs trajectory clusters\nARI = {traj['ari_between'].iloc[0]:.3f}",
        ),
    ]
    import seaborn as sns

    fig, axes = subplots(3, width=4.6, height=4.2)
    for ax, (table, ylabel, xlabel, title) in zip(axes[0], panels, strict=True):
        sns.heatmap(
            table, annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax, annot_kws={"size": 8}
        )
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    space = traj["space"].iloc[0] if "space" in traj else "hidden"
    fig.suptitle(
        f"S3.F8 Clustering {len(traj)} probe points ({space} space); cluster ids "
        "renamed to their best-matching class"
    )
    fig.tight_layout()
    save(fig, Path(out_png))


def plot_f9(df: pd.DataFrame, out_png: str | os.PathLike) -> None:
    """Mean speed (displacement per capture interval) per class vs step."""
    styles = _class_styles(df)
    fig, axes = subplots(1, width=8.0, height=4.6)
    ax = axes[0, 0]
    _class_lines(ax, df, "step", "value", styles)
    space = df["space"].iloc[0] if "space" in df and len(df) else "hidden"
    ax.set(
        xlabel="step",
        ylabel="mean displacement over the last interval",
        title=f"S3.F9 Embedding speed per class ({space} space)",
    )
    _legend(ax)
    save(fig, Path(out_png))


def _plot_stay(df: pd.DataFrame, out_png: Path, thr: str, thr_name: str, title: str) -> None:
    overall = df[df["label"].isna()].sort_values(thr)
    per = df.dropna(subset=["label"])
    styles = _class_styles(per)
    fig, axes = subplots(2, width=5.6, height=4.2)
    ax = axes[0, 0]
    xs = np.arange(len(overall))
    bars = ax.bar(xs, overall["share"], color="tab:blue", alpha=0.8)
    for bar, (_, row) in zip(bars, overall.iterrows(), strict=True):
        ax.annotate(
            f"{int(row['count'])}/{int(row['n'])}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(xs, [f"{v:g}" for v in overall[thr]])
    ax.set(
        xlabel=thr_name,
        ylabel="share of trajectories with a stay point",
        ylim=(0, 1.1),
        title="All probe trajectories",
    )
    ax = axes[0, 1]
    for c, st in styles.items():
        sub = per[per["label"] == c].sort_values(thr)
        ax.plot(
            sub[thr],
            sub["share"],
            color=st["color"],
            ls=st["ls"],
            marker="o",
            ms=4,
            lw=1.3,
            label=st["name"],
        )
    ax.set(xlabel=thr_name, ylabel="share with a stay point", ylim=(-0.05, 1.05), title="Per class")
    ax.set_xticks(overall[thr].to_numpy(), [f"{v:g}" for v in overall[thr]])
    _legend(ax)
    fig.suptitle(title)
    save(fig, out_png)


def plot_t1(df: pd.DataFrame, out_png: str | os.PathLike) -> None:
    """Share of trajectories with a classic stay point vs D (paper F10 as numbers)."""
    T = int(df["T"].iloc[0])
    space = df["space"].iloc[0] if "space" in df else "hidden"
    _plot_stay(
        df,
        Path(out_png),
        "D",
        "space threshold D",
        f"S3.T1 Classic stay points (T = {T} intervals, {space} space)",
    )


def plot_t2(df: pd.DataFrame, out_png: str | os.PathLike) -> None:
    """Share of trajectories with a linearity-index stay point vs epsilon (paper F11)."""
    k = int(df["k"].iloc[0])
    space = df["space"].iloc[0] if "space" in df else "hidden"
    _plot_stay(
        df,
        Path(out_png),
        "epsilon",
        "linearity threshold ε",
        f"S3.T2 Linearity-index stay points (k = {k}, {space} space)",
    )


def plot_f12(df: pd.DataFrame, out_png: str | os.PathLike) -> None:
    """Mean linearity index per class vs window-start step, one panel per k."""
    ks = sorted(df["k"].unique())
    ncols = 2 if len(ks) > 1 else 1
    nrows = int(np.ceil(len(ks) / ncols))
    styles = _class_styles(df)
    fig, axes = subplots(ncols, nrows, width=5.6, height=3.8, sharex=True, sharey=True)
    for ax, k in zip(axes.ravel(), ks, strict=False):
        _class_lines(ax, df[df["k"] == k], "step", "value", styles)
        ax.set(
            xlabel="step (window start)",
            ylabel="mean linearity index",
            ylim=(-0.02, 1.02),
            title=f"k = {k}",
        )
    for ax in axes.ravel()[len(ks) :]:
        ax.set_visible(False)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(
        handles,
        names,
        title="class (train size)",
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        fontsize=8,
    )
    space = df["space"].iloc[0] if "space" in df and len(df) else "hidden"
    fig.suptitle(f"S3.F12 Mean linearity index per class ({space} space)")
    fig.tight_layout()
    save(fig, Path(out_png))


# --- registry for tuneatlas.studies.registry -------------------------------------------------
def _run_dir(spec: Mapping[str, Any], results: Path, which: str = "main") -> Path:
    runs = spec.get("runs") or {}
    if which not in runs:
        raise ValueError(f"S3 target spec names no {which!r} run; runs = {dict(runs)}")
    return Path(results) / "runs" / str(runs[which])


def _target_groups(run_dir: Path, results: Path) -> dict[int, str]:
    """Training-size groups of the run's dataset (empty when not imbalanced): from the class
    table an `imbalance` transform writes (``classes.parquet``), else guessed from the training
    split's class counts (`class_groups_from_counts`)."""
    spec_file = run_dir / "spec.yaml"
    if not spec_file.exists():
        return {}
    dataset = (yaml.safe_load(spec_file.read_text()) or {}).get("dataset")
    data = Path(results) / "data" / str(dataset)
    if dataset and (data / "classes.parquet").exists():
        classes = pd.read_parquet(data / "classes.parquet", columns=["class", "n_train"])
        classes = classes.sort_values(["n_train", "class"], ascending=[False, True])
        pairs = zip(classes["class"], classes["n_train"], strict=True)
        return {int(c): f"{int(n)}/class" for c, n in pairs}
    if not dataset or not (data / "train.parquet").exists():
        return {}
    labels = pd.read_parquet(data / "train.parquet", columns=["label"])["label"].to_numpy()
    return class_groups_from_counts(labels)


def _target_names(run_dir: Path) -> dict[int, str]:
    """Class id -> class name of the run's task (the task registry's label names), or {}."""
    from tuneatlas.data.tasks import TASKS

    spec_file = run_dir / "spec.yaml"
    if not spec_file.exists():
        return {}
    task = TASKS.get(str((yaml.safe_load(spec_file.read_text()) or {}).get("task")))
    return dict(enumerate(task.label_names)) if task is not None else {}


def with_class_names(df: pd.DataFrame, names: Mapping[int, str]) -> pd.DataFrame:
    """`df` with a ``class_name`` column beside ``label`` (null where the label is null or the
    task names no classes), so a table can be read without the id -> name list."""
    if "label" not in df.columns:
        return df
    out = df.copy()
    out["class_name"] = pd.Series(
        [None if pd.isna(c) else names.get(int(c)) for c in out["label"]],
        dtype="string",
        index=out.index,
    )
    return out


def _builder(
    fn: Callable[..., pd.DataFrame], which: str = "main", **param_map: str
) -> Callable[[dict, Path], pd.DataFrame]:
    """Adapt ``fn(captures, class_groups, **kw)`` to ``(target_spec, results)``; ``param_map``
    maps fn keywords to keys of the plan's S3 params (stay_T, stay_D, ...). ``which`` is the
    run read: ``"main"``, or ``"shown"`` = the preliminary run when the plan has one (F4, F5)."""

    def build(target: dict[str, Any], results: Path) -> pd.DataFrame:
        spec = target["params"]  # the plan's S3 params: runs {setup: run id}, stay_T, ...
        setup = which
        if which == "shown":
            setup = "prelim" if "prelim" in (spec.get("runs") or {}) else "main"
        run_dir = _run_dir(spec, results, setup)
        kwargs = {kw: spec[key] for kw, key in param_map.items() if key in spec}
        df = fn(run_dir / CAPTURES_DIR, _target_groups(run_dir, results), **kwargs)
        return with_class_names(df, _target_names(run_dir))

    build.__doc__ = fn.__doc__
    return build


def _build_f7(target: dict[str, Any], results: Path) -> pd.DataFrame:
    """S3.F7 of every run of the target (prelim first, then main), with a ``setup`` column."""
    runs = target["params"].get("runs") or {}
    if not runs:
        raise ValueError(f"S3.F7 target spec names no run; runs = {dict(runs)}")
    frames = []
    for setup in sorted(runs, key=_setup_order):
        run_dir = _run_dir(target["params"], results, setup)
        groups = _target_groups(run_dir, results)
        df = table_f7(run_dir / CAPTURES_DIR, groups, setup=setup)
        frames.append(with_class_names(df, _target_names(run_dir)))
    return pd.concat(frames, ignore_index=True)


def _plotter(
    fn: Callable[[pd.DataFrame, Path], None],
) -> Callable[[pd.DataFrame, list[Path]], None]:
    def draw(df: pd.DataFrame, outputs: list[Path]) -> None:
        fn(df, _first(outputs))

    return draw


def _plot_f4_outputs(df: pd.DataFrame, outputs: list[Path]) -> None:
    paths = [Path(p) for p in outputs]
    png = next((p for p in paths if p.suffix == ".png"), None)
    if png is None:
        raise ValueError(f"S3.F4 needs a .png output among {paths}")
    gif = next((p for p in paths if p.suffix == ".gif"), None)
    mp4 = next((p for p in paths if p.suffix == ".mp4"), None)
    plot_f4(df, png, gif, mp4)


TABLES: dict[str, Callable[[dict, Path], pd.DataFrame]] = {
    "S3.F4": _builder(table_f4, which="shown"),
    "S3.F5": _builder(table_f5, which="shown"),
    "S3.F7": _build_f7,
    "S3.F8": _builder(table_f8, space="space"),
    "S3.F9": _builder(table_f9, space="space", points="speed_points"),
    "S3.T1": _builder(table_t1, D="stay_D", T="stay_T", space="space"),
    "S3.T2": _builder(table_t2, epsilon="linearity_eps", k="linearity_k", space="space"),
    "S3.F12": _builder(table_f12, ks="linearity_ks", space="space"),
}

FIGURES: dict[str, Callable[[pd.DataFrame, list[Path]], None]] = {
    "S3.F4": _plot_f4_outputs,
    "S3.F5": _plotter(plot_f5),
    "S3.F7": _plotter(plot_f7),
    "S3.F8": _plotter(plot_f8),
    "S3.F9": _plotter(plot_f9),
    "S3.T1": _plotter(plot_t1),
    "S3.T2": _plotter(plot_t2),
    "S3.F12": _plotter(plot_f12),
}
