"""Shared figure helpers: one style for every artifact, atomic PNG writes."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from tuneatlas.io import atomic_path  # noqa: E402

sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")


def save(fig: plt.Figure, path: Path) -> None:
    """Save a figure atomically (PNG, 150 dpi, tight) and close it."""
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=150, bbox_inches="tight", format="png")
    plt.close(fig)


def subplots(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.8, **kw):
    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, **kw)
