"""Task registry as data: text columns, label count, metric and hub location of every task.

One `Task` row per fine-tuning task (GLUE's eight, livedoor) and per corpus (`simcse`,
`pretrain`). Loaders, the training engine and the tables read these rows instead of branching
on task names, so adding a task is adding a row (the `task_to_keys` habit of HF's run_glue).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TaskKind = Literal["classification", "regression", "corpus"]

# Our split names on disk; every source split name maps onto one of these.
SPLITS: tuple[str, ...] = ("train", "valid", "test")


@dataclass(frozen=True)
class Task:
    """One task or corpus.

    `text_a` may name several source columns: their values are joined with a newline (livedoor's
    title + body). `hub_splits` maps our split names (train/validation/test) to the hub's names;
    a split missing there does not exist on the hub with labels (GLUE's test labels are hidden).
    """

    name: str
    kind: TaskKind
    num_labels: int  # 1 for regression, 0 for corpora
    metric: str | None  # a key of tuneatlas.metrics.METRICS; None for corpora
    hub_path: str
    hub_name: str | None
    text_a: str | tuple[str, ...]
    text_b: str | None
    label: str | None  # None for corpora
    hub_splits: tuple[tuple[str, str], ...]
    synthetic: str  # generator name in tuneatlas.data.synthetic
    extra_metrics: tuple[str, ...] = ()  # also reported (livedoor: macro_f1)
    label_names: tuple[str, ...] = ()  # class id -> name; string labels in files map through it
    hub_data_files: str | None = None  # for hub repositories that are plain files (wiki1m)

    @property
    def is_regression(self) -> bool:
        return self.kind == "regression"

    @property
    def is_corpus(self) -> bool:
        return self.kind == "corpus"

    @property
    def is_pair(self) -> bool:
        return self.text_b is not None

    @property
    def text_a_columns(self) -> tuple[str, ...]:
        return (self.text_a,) if isinstance(self.text_a, str) else tuple(self.text_a)

    @property
    def hub_split_map(self) -> dict[str, str]:
        return dict(self.hub_splits)

    def metric_names(self) -> list[str]:
        """Reported metrics: the task's own first, then accuracy and macro-F1 (classification)
        and the task's extras."""
        names = [self.metric] if self.metric else []
        if self.kind == "classification":
            names += ["accuracy", "macro_f1"]
        names += list(self.extra_metrics)
        return list(dict.fromkeys(names))


_GLUE_SPLITS = (("train", "train"), ("validation", "validation"))
_ENTAIL = ("entailment", "not_entailment")


def _glue(
    name: str,
    text_a: str,
    text_b: str | None,
    num_labels: int,
    metric: str,
    synthetic: str,
    label_names: tuple[str, ...],
    hub_splits: tuple[tuple[str, str], ...] = _GLUE_SPLITS,
    extra_metrics: tuple[str, ...] = (),
) -> Task:
    return Task(
        name=name,
        kind="regression" if num_labels == 1 else "classification",
        num_labels=num_labels,
        metric=metric,
        hub_path="nyu-mll/glue",
        hub_name=name,
        text_a=text_a,
        text_b=text_b,
        label="label",
        hub_splits=hub_splits,
        synthetic=synthetic,
        extra_metrics=extra_metrics,
        label_names=label_names,
    )


_TASK_LIST: tuple[Task, ...] = (
    _glue("cola", "sentence", None, 2, "mcc", "acceptability", ("unacceptable", "acceptable")),
    _glue("sst2", "sentence", None, 2, "accuracy", "sentiment", ("negative", "positive")),
    _glue(
        "mrpc",
        "sentence1",
        "sentence2",
        2,
        "accuracy",
        "pair_binary",
        ("not_equivalent", "equivalent"),
        extra_metrics=("f1",),
    ),
    _glue(
        "qqp",
        "question1",
        "question2",
        2,
        "accuracy",
        "pair_binary",
        ("not_duplicate", "duplicate"),
        extra_metrics=("f1",),
    ),
    _glue(
        "mnli",
        "premise",
        "hypothesis",
        3,
        "accuracy",
        "pair_nli",
        ("entailment", "neutral", "contradiction"),
        # the matched validation set is the one the studies report
        hub_splits=(("train", "train"), ("validation", "validation_matched")),
    ),
    _glue("qnli", "question", "sentence", 2, "accuracy", "pair_binary", _ENTAIL),
    _glue("rte", "sentence1", "sentence2", 2, "accuracy", "pair_binary", _ENTAIL),
    _glue("stsb", "sentence1", "sentence2", 1, "pearson", "pair_similarity", ()),
    Task(
        name="livedoor",
        kind="classification",
        num_labels=9,
        metric="accuracy",
        hub_path="shunk031/livedoor-news-corpus",
        hub_name=None,
        # S3: the body -> category (「本文」を入力として); `columns: {text_a: [title, content]}`
        # on a dataset entry adds the title (joined with a newline)
        text_a="content",
        text_b=None,
        label="category",
        hub_splits=(("train", "train"), ("validation", "validation"), ("test", "test")),
        synthetic="topic",
        extra_metrics=("macro_f1",),
        label_names=(
            "dokujo-tsushin",
            "it-life-hack",
            "kaden-channel",
            "livedoor-homme",
            "movie-enter",
            "peachy",
            "smax",
            "sports-watch",
            "topic-news",
        ),
    ),
    Task(
        name="simcse",
        kind="corpus",
        num_labels=0,
        metric=None,
        # SimCSE's unsupervised corpus: one Wikipedia sentence per line
        hub_path="princeton-nlp/datasets-for-simcse",
        hub_name=None,
        text_a="text",
        text_b=None,
        label=None,
        hub_splits=(("train", "train"),),
        synthetic="sentences",
        hub_data_files="wiki1m_for_simcse.txt",
    ),
    Task(
        name="pretrain",
        kind="corpus",
        num_labels=0,
        metric=None,
        hub_path="HuggingFaceFW/fineweb-edu",
        hub_name="sample-10BT",
        text_a="text",
        text_b=None,
        label=None,
        hub_splits=(("train", "train"),),
        synthetic="facts",
    ),
)

TASKS: dict[str, Task] = {t.name: t for t in _TASK_LIST}

GLUE_TASKS: tuple[str, ...] = ("cola", "sst2", "mrpc", "qqp", "mnli", "qnli", "rte", "stsb")

# Hub datasets that exist only as a loading script, which `datasets` >= 4 refuses to run
# ("Dataset scripts are no longer supported"): hub path -> the way to a local copy instead.
# Config validation fails on a `source: hub` dataset that points at one of them.
SCRIPT_DATASETS: dict[str, str] = {
    "shunk031/livedoor-news-corpus": (
        "convert the original archive (https://www.rondhuit.com/download.html#ldcc) with"
        " `tuneatlas livedoor-convert ldcc-20140209.tar.gz data/livedoor` and use"
        " source: file with files: {train: data/livedoor/train.tsv, test: data/livedoor/test.tsv}"
    ),
}


def fine_tuning_task(name: str) -> Task:
    """The registered classification or regression task `name` (not a corpus)."""
    task = get_task(name)
    if task.kind not in ("classification", "regression") or not task.metric:
        raise ValueError(f"task {name!r} is a {task.kind}, not a fine-tuning task")
    return task


def get_task(name: str) -> Task:
    """The registered task `name`; a ValueError listing the known tasks otherwise."""
    if name not in TASKS:
        _declared_from_env()
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(
            f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}; declare your own"
            " under the config's `tasks:` section (kind, labels, metric, text columns)"
        ) from None


# ---------------------------------------------------------------------------------------------
# Tasks declared in the config (`tasks:`): a researcher's own data set joins the registry.

DECLARED_METRICS: tuple[str, ...] = ("accuracy", "macro_f1", "mcc", "pearson", "spearman")
# Jobs start in fresh processes: the workflow hands them the config's declarations in this
# variable (workflow/rules/common.smk); `get_task` reads it for a name the registry lacks.
DECLARED_ENV = "TUNEATLAS_TASKS"


def declared_task(name: str, decl: dict) -> Task:
    """A Task row from one `tasks.<name>` entry; ValueError naming the key otherwise."""
    where = f"tasks.{name}"
    if name in TASKS and not _is_declared(TASKS[name]):
        raise ValueError(f"{where}: {name!r} is a registered task; pick another name")
    kind = decl.get("kind")
    if kind not in ("classification", "regression"):
        raise ValueError(f"{where}.kind must be classification or regression, got {kind!r}")
    labels = tuple(str(x) for x in decl.get("labels") or ())
    if kind == "classification" and len(labels) < 2:
        raise ValueError(
            f"{where}.labels: a classification task needs at least two label names, e.g."
            " [sports, tech, food] (the file's labels are these names or ids 0..n-1)"
        )
    if kind == "regression" and labels:
        raise ValueError(f"{where}.labels: a regression task has no labels; remove the key")
    if len(set(labels)) != len(labels):
        raise ValueError(f"{where}.labels: duplicate label name(s); keep each once")
    metric = decl.get("metric", "accuracy" if kind == "classification" else "pearson")
    fits = ("pearson", "spearman") if kind == "regression" else ("accuracy", "macro_f1", "mcc")
    if metric not in fits:
        raise ValueError(
            f"{where}.metric: {metric!r} does not fit a {kind} task; use one of {fits}"
        )
    text_a = decl.get("text_a", "text")
    return Task(
        name=name,
        kind=kind,
        num_labels=1 if kind == "regression" else len(labels),
        metric=metric,
        hub_path="",  # declared tasks are read from files
        hub_name=None,
        text_a=text_a if isinstance(text_a, str) else tuple(text_a),
        text_b=decl.get("text_b"),
        label=decl.get("label", "label"),
        hub_splits=(),
        synthetic="",
        extra_metrics=("mcc",) if kind == "classification" and metric != "mcc" else (),
        label_names=labels,
    )


def _is_declared(task: Task) -> bool:
    return task.synthetic == ""


def declare(decls: dict | None) -> dict[str, Task]:
    """Build and register the config's declared tasks, replacing those of any config declared
    before in this process (the registry is the built-ins plus this config's); returns them."""
    rows = {name: declared_task(name, dict(decl)) for name, decl in (decls or {}).items()}
    for name in [n for n, task in TASKS.items() if _is_declared(task)]:
        del TASKS[name]
    TASKS.update(rows)
    return rows


def _declared_from_env() -> None:
    import json
    import os

    text = os.environ.get(DECLARED_ENV)
    if text:
        declare(json.loads(text))
