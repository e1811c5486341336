"""Shared figure helpers: one style for every artifact, atomic PNG writes.

matplotlib and seaborn (about a second of imports) load on the first figure, not with the
module: a table job imports its study's module but draws nothing.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from tuneatlas.io import atomic_path


@functools.cache
def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, with the one seaborn theme of every figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    return plt


def __getattr__(name: str) -> Any:
    # `plots.plt` (and `from tuneatlas.studies.plots import plt`) still work, lazily
    if name == "plt":
        return pyplot()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def save(fig: Any, path: Path) -> None:
    """Save a figure atomically (PNG, 150 dpi, tight) and close it."""
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=150, bbox_inches="tight", format="png")
    pyplot().close(fig)


def subplots(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.8, **kw):
    plt = pyplot()
    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, **kw)
