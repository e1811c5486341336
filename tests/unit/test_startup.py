"""Job start-up: a job imports only what it uses. Every rule job is a fresh `python -m
tuneatlas` process, so a library imported for nothing costs its import time once per job
(scikit-learn ~1 s, seaborn + matplotlib + scipy.stats ~1.5 s on this machine)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY_UNUSED = ("sklearn", "matplotlib", "seaborn", "datasets", "scipy", "lm_eval", "mlflow")


def imported(*modules: str, heavy: tuple[str, ...] = HEAVY_UNUSED) -> list[str]:
    """The `heavy` top-level packages a fresh interpreter holds after importing `modules`."""
    code = (
        f"import json, sys\nfor m in {list(modules)!r}: __import__(m)\n"
        "tops = {m.split('.')[0] for m in sys.modules}\n"
        f"print(json.dumps(sorted(tops & set({heavy!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_a_training_job_imports_no_sklearn_or_plotting():
    # what `tuneatlas train` imports: the fine-tune recipe, the analysis hooks, the metrics
    assert (
        imported("tuneatlas.cli", "tuneatlas.engine.recipes.finetune", "tuneatlas.analysis.hooks")
        == []
    )


def test_an_adopt_job_imports_no_array_or_table_library():
    # `tuneatlas adopt` (a local job per bundled run: 79 in the demo) moves files and writes a
    # JSON marker; numpy + pandas + pyarrow would be ~0.35 s of its ~0.45 s
    modules = ("tuneatlas.cli", "tuneatlas.bundles", "tuneatlas.errors")
    assert imported(*modules, heavy=("numpy", "pandas", "pyarrow", "torch")) == []


@pytest.mark.parametrize("study", ["s1", "s2", "s4"])
def test_a_table_job_imports_no_plotting(study):
    # `tuneatlas table` imports its study's module; figures import matplotlib/seaborn themselves
    assert (
        imported("tuneatlas.cli", "tuneatlas.studies.registry", f"tuneatlas.studies.{study}") == []
    )


def test_figures_still_get_the_shared_theme():
    from tuneatlas.studies import plots

    fig, axes = plots.subplots()
    import seaborn as sns

    assert fig.get_size_inches().tolist() == [5.0, 3.8]
    assert plots.plt is plots.pyplot() and plots.plt.get_backend().lower() == "agg"
    assert sns.color_palette()[0] == sns.color_palette("colorblind")[0]  # the theme's palette
    plots.plt.close(fig)
