"""The artifact catalogue: every table and figure of the studies (docs/studies.md), with its
fixed path and schema.

Artifact `S1.T2` lives at results/tables/s1_t2.parquet with its figure at
results/figures/s1_t2.png (DESIGN.md principle 4). `built` says whether the workflow already
has rules for it; the README's catalogue is generated from this table (`catalogue_markdown`).
"""

from __future__ import annotations

from dataclasses import dataclass

RESULTS = "results"


@dataclass(frozen=True)
class Artifact:
    id: str
    study: str
    title: str
    columns: tuple[str, ...]
    extra_figures: tuple[str, ...] = ()  # file suffixes beyond the PNG, e.g. (".gif",)

    @property
    def slug(self) -> str:
        return self.id.lower().replace(".", "_")

    @property
    def table(self) -> str:
        return f"{RESULTS}/tables/{self.slug}.parquet"

    @property
    def figures(self) -> tuple[str, ...]:
        return tuple(f"{RESULTS}/figures/{self.slug}{s}" for s in (".png", *self.extra_figures))


def _a(id_: str, title: str, columns: str, extra: tuple[str, ...] = ()) -> Artifact:
    study = id_.split(".")[0]
    return Artifact(id_, study, title, tuple(columns.split()), extra)


ARTIFACTS: dict[str, Artifact] = {
    a.id: a
    for a in [
        _a(
            "S1.T1",
            "CLS vector vs max-norm token (test score)",
            "task metric split pooling seed value",
        ),
        _a(
            "S1.T2",
            "Top-5 dimension pairs, exhaustive and paper-rate sampled, vs all dims",
            "task metric mode sample_size rank dims split value",
        ),
        _a(
            "S1.TA1",
            "Top-5 dimension triples at four sampling sizes and exhaustive",
            "task metric mode sample_size rank dims split value",
        ),
        _a(
            "S1.T3",
            "Effective-dimension ablation from the top-10 triples; best effective pair",
            "task metric kind triple_rank dims dropped_dim split value"
            " drop effective effective_dims",
        ),
        _a(
            "S1.FA3",
            "Histogram of all pair scores, fine-tuned with vs without dropout",
            "task metric dropout split bin_left bin_right count",
        ),
        _a(
            "S1.FL",
            "Two-dimension score per hidden layer (best and distribution)",
            "task metric layer split stat value",
        ),
        _a(
            "S1.T4",
            "Frozen encoder + 2 FC layers vs unfrozen + 1 FC layer",
            "task metric setting split seed value",
        ),
        _a(
            "S1.T5",
            "Cross fine-tuning matrix (task A then task B, score on B)",
            "task_a task_b metric split seed value",
        ),
        _a("S1.TA2", "All-dimension scores per seed", "task metric split pooling seed value"),
        _a(
            "S2.T1",
            "Stability, mean, max and failures per (model, lr)",
            "model lr metric split stability mean ci_low ci_high max failures n_seeds threshold",
        ),
        _a(
            "S2.F1",
            "Accuracy vs peak lr per model (95% CI), majority baseline",
            "model lr seed run metric split value majority threshold failed",
        ),
        _a(
            "S2.F2",
            "Optimisation trajectory in polar coordinates",
            "model lr seed run step epoch r phi loss run_value failed shown_as",
        ),
        _a(
            "S2.F3",
            "Normalised erank of per-layer Fisher before fine-tuning",
            "model layer trial n erank value",
        ),
        _a("S2.T2", "Whole-model Fisher effective rank", "model value ci_low ci_high trials"),
        _a(
            "S2.F4",
            "Per-layer Fisher erank during fine-tuning",
            "model lr seed run step layer n erank value run_value failed shown_as",
        ),
        _a(
            "S3.F4",
            "Animation of the test set over checkpoints (PCA)",
            "step point label x y",
            extra=(".gif",),
        ),
        _a("S3.F5", "Probe trajectories (circle = start, triangle = end)", "point label step x y"),
        _a(
            "S3.F7",
            "Accuracy, macro-F1 and per-class F1 vs step, preliminary and main run",
            "setup step metric label value",
        ),
        _a(
            "S3.F8",
            "Trajectory clustering vs final-embedding clustering",
            "method point label cluster ari",
        ),
        _a("S3.F9", "Mean displacement per interval per class vs step", "step label value"),
        _a(
            "S3.T1",
            "Classic stay points: trajectories with a stay point per D (paper F10)",
            "D T count share",
        ),
        _a("S3.T2", "Linearity-index stay points per epsilon (paper F11)", "epsilon k count share"),
        _a("S3.F12", "Mean linearity index per class vs step for several k", "k step label value"),
        _a(
            "S4.F3",
            "Relative improvement vs ratio per position, task and size",
            "size task metric variant position ratio score ri params rel_diff",
        ),
        _a("S4.T1", "Top-5 mean relative improvement per size", "size rank variant mean_ri"),
        _a(
            "S4.T2",
            "Largest size (2B): relative improvement per task (also the paper's T3)",
            "size variant task metric score ri",
        ),
        _a(
            "S5.T1",
            "Member and ensemble accuracy with 95% bootstrap CIs, paired vs the seed ensemble",
            "model kind members train_examples metric split n value ci_low ci_high"
            " delta_vs_seed delta_ci_low delta_ci_high p_value",
        ),
    ]
}


# REPRO is no artifact of a paper: our numbers beside the papers' and the papers' claims checked
# (tuneatlas.studies.repro), built from whichever artifact tables of the configured studies exist
REPRO_TABLES = (f"{RESULTS}/tables/repro.parquet", f"{RESULTS}/tables/findings.parquet")
REPRO_FIGURES = (f"{RESULTS}/figures/repro.png", f"{RESULTS}/figures/findings.png")


def get_artifact(artifact_id: str) -> Artifact:
    key = artifact_id.upper()
    if key not in ARTIFACTS:
        raise ValueError(f"unknown artifact {artifact_id!r}; known: {', '.join(ARTIFACTS)}")
    return ARTIFACTS[key]


def from_slug(slug: str) -> Artifact:
    for artifact in ARTIFACTS.values():
        if artifact.slug == slug:
            return artifact
    raise ValueError(f"no artifact has the file name {slug!r}")


# the README's catalogue is the text between these markers (`tuneatlas catalogue --readme`)
README_START, README_END = "<!-- catalogue:start -->\n", "<!-- catalogue:end -->"


def catalogue_markdown() -> str:
    """The catalogue as the README's Markdown table: one row per artifact, its paths and columns."""
    lines = [
        "| ID | reproduces | table | figure | columns |",
        "|---|---|---|---|---|",
    ]
    for a in ARTIFACTS.values():
        figures = "<br>".join(f"`{f}`" for f in a.figures)
        lines.append(
            f"| {a.id} | {a.study}: {a.title} | `{a.table}` | {figures} | {', '.join(a.columns)} |"
        )
    return "\n".join(lines) + "\n"


def with_catalogue(readme: str) -> str:
    """`readme` with the text between the catalogue markers replaced by `catalogue_markdown()`."""
    head, rest = readme.split(README_START)
    return head + README_START + catalogue_markdown() + README_END + rest.split(README_END, 1)[1]
