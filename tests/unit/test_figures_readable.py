"""Figures a reader trips over: interval bars inside the metric's range, step labels apart,
legends that name what they show, and single-task / empty panels that say what they are."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from tuneatlas.studies import s1, s2, s4  # noqa: E402


def _capture(monkeypatch, module):
    figs = []
    monkeypatch.setattr(module.plots, "save", lambda fig, path: figs.append(fig))
    return figs


def test_s2_f1_bars_stay_inside_accuracy_range(monkeypatch):
    figs = _capture(monkeypatch, s2)
    # three seeds at 0.5, 1.0, 1.0: the t-interval of the mean reaches 1.55
    df = pd.DataFrame(
        {
            "model": "vanilla",
            "lr": 1e-5,
            "value": [0.5, 1.0, 1.0],
            "majority": 0.53,
            "split": "valid",
        }
    )
    assert s2.mean_ci(df["value"].to_numpy())[2] > 1.0
    s2.plot_f1(df, ["unused.png"])
    ax = figs[0].axes[0]
    tops = [seg[:, 1].max() for c in ax.collections for seg in getattr(c, "get_segments", list)()]
    assert tops and max(tops) <= 1.0 + 1e-9


def test_s2_f2_step_labels_keep_apart():
    r = np.r_[1.0, np.linspace(0.3, 0.0, 12)]
    run = pd.DataFrame({"step": np.arange(13) * 10, "phi": np.full(13, 0.5), "r": r})
    kept = s2._readable_labels(run, gap=0.1)
    assert kept[0][0] == 0 and kept[-1][0] == 120  # first and last are always labelled
    xy = [(rr * np.cos(p), rr * np.sin(p)) for _, p, rr in kept]
    gaps = [np.hypot(a[0] - b[0], a[1] - b[1]) for a, b in zip(xy, xy[1:], strict=False)]
    assert min(gaps) >= 0.1 - 1e-9 and len(kept) < len(run)


def test_s1_t5_single_task_is_no_heatmap(monkeypatch):
    figs = _capture(monkeypatch, s1)
    df = pd.DataFrame(
        [{"task_a": "news", "task_b": "news", "metric": "accuracy", "split": "test",
          "seed": 0, "value": 0.93}]
    )  # fmt: skip
    s1.plot_t5(df, ["unused.png"])
    fig = figs[0]
    assert len(fig.axes) == 1  # no colour bar axes
    assert fig.axes[0].get_ylabel() == "test accuracy"
    plt.close(fig)


def test_s4_f3_all_nan_panel_says_why(monkeypatch):
    figs = _capture(monkeypatch, s4)
    rows = []
    for task, base in (("wikitext", 10.0), ("zsre", 0.0)):
        for variant, pos, ratio, score in (
            ("baseline", None, 100, base),
            ("final_50", "final", 50, base * 0.9),
        ):
            ri = np.nan if base == 0 else (base - score) / base * 100
            rows.append(
                {"size": "tiny", "task": task, "metric": "m", "variant": variant,
                 "position": pos, "ratio": ratio, "score": score, "ri": ri, "params": 1,
                 "rel_diff": 0.0, "dropped": False}
            )  # fmt: skip
    s4.plot_f3(pd.DataFrame(rows), ["unused.png"])
    ax = figs[0].axes[1]
    assert not ax.get_lines()
    assert any("baseline scores 0" in t.get_text() for t in ax.texts)
    assert figs[0].axes[0].get_legend() is not None  # the legend sits on a drawn panel
