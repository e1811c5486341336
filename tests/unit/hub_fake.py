"""A stand-in for `datasets.load_dataset` that knows the hub repositories paper.yaml names.

It knows each repository's real configs, split names and columns (GLUE: train / validation /
test per config, MNLI's validation_matched / validation_mismatched / test_matched /
test_mismatched; FineWeb-Edu's samples; SimCSE's plain text file) and fails as `datasets` 5
fails on anything else: an unknown split or config is a ValueError with the real message, a
loading-script repository is the RuntimeError datasets >= 4 raises. The rows are a few made-up
ones per split (`<config>/<split> <column> <i>`), with GLUE's -1 labels on test splits.
A `revision` must be one of the repository's commits the fake knows (the ones paper.yaml pins)
or a branch it has ("main"); any other pin fails as the hub's DatasetNotFoundError does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROWS = {"train": 24}  # rows per split; every other split has DEFAULT_ROWS
DEFAULT_ROWS = 12


@dataclass(frozen=True)
class Config:
    splits: tuple[str, ...]
    # column -> kind: "text", "idx", "float" (STS-B scores), an int = number of classes,
    # or "meta" (a string column nothing reads: FineWeb-Edu's id, url, ...)
    columns: dict[str, Any]
    data_files: str | None = None  # a repository of plain files, loaded through data_files


GLUE_COMMIT = "bcdcba79d07bc864c1c254ccfcedcce55bcc9a8c"  # paper.yaml's pin of nyu-mll/glue
FINEWEB_COMMIT = "87f09149ef4734204d70ed1d046ddc9ca3f2b8f9"
BRANCHES = ("main",)


@dataclass(frozen=True)
class Repo:
    configs: dict[str | None, Config]
    script: str | None = None  # a loading-script repository: datasets >= 4 refuses it
    commits: tuple[str, ...] = ()  # the commits a revision may pin (besides BRANCHES)


_GLUE_SPLITS = ("train", "validation", "test")
_MNLI_SPLITS = (
    "train",
    "validation_matched",
    "validation_mismatched",
    "test_matched",
    "test_mismatched",
)


def _glue(a: str, b: str | None, labels: Any, splits: tuple[str, ...] = _GLUE_SPLITS) -> Config:
    columns: dict[str, Any] = {a: "text"}
    if b:
        columns[b] = "text"
    return Config(splits, {**columns, "label": labels, "idx": "idx"})


_FINEWEB = Config(
    ("train",),
    {
        "text": "text",
        "id": "meta",
        "dump": "meta",
        "url": "meta",
        "file_path": "meta",
        "language": "meta",
        "language_score": "float",
        "token_count": "idx",
        "score": "float",
        "int_score": "idx",
    },
)

HUB: dict[str, Repo] = {
    # https://huggingface.co/datasets/nyu-mll/glue (the Parquet version)
    "nyu-mll/glue": Repo(
        {
            "ax": _glue("premise", "hypothesis", 3, ("test",)),
            "cola": _glue("sentence", None, 2),
            "mnli": _glue("premise", "hypothesis", 3, _MNLI_SPLITS),
            "mnli_matched": _glue("premise", "hypothesis", 3, ("validation", "test")),
            "mnli_mismatched": _glue("premise", "hypothesis", 3, ("validation", "test")),
            "mrpc": _glue("sentence1", "sentence2", 2),
            "qnli": _glue("question", "sentence", 2),
            "qqp": _glue("question1", "question2", 2),
            "rte": _glue("sentence1", "sentence2", 2),
            "sst2": _glue("sentence", None, 2),
            "stsb": _glue("sentence1", "sentence2", "float"),
            "wnli": _glue("sentence1", "sentence2", 2),
        },
        commits=(GLUE_COMMIT,),
    ),
    # one Wikipedia sentence per line; the repository also holds NLI CSVs and SentEval
    "princeton-nlp/datasets-for-simcse": Repo(
        {None: Config(("train",), {"text": "text"}, data_files="wiki1m_for_simcse.txt")}
    ),
    # 5,894 / 737 / 736 articles in 9 categories on the hub, behind a loading script
    "shunk031/livedoor-news-corpus": Repo(
        {
            None: Config(
                ("train", "validation", "test"),
                {"url": "meta", "date": "meta", "title": "text", "content": "text", "category": 9},
            )
        },
        script="livedoor-news-corpus.py",
    ),
    "HuggingFaceFW/fineweb-edu": Repo(
        {c: _FINEWEB for c in ("default", "sample-10BT", "sample-100BT", "sample-350BT")},
        commits=(FINEWEB_COMMIT,),
    ),
}


def _column(kind: Any, col: str, tag: str, n: int, test: bool) -> list[Any]:
    if kind == "text":
        return [f"{tag} {col} {i}" for i in range(n)]
    if kind == "meta":
        return [f"{col}-{i}" for i in range(n)]
    if kind == "idx":
        return list(range(n))
    if kind == "float":
        return [float(i % 6) * (-1 if test else 1) for i in range(n)]
    return [-1 if test else i % kind for i in range(n)]  # GLUE hides its test labels


class FakeHub:
    """Call it as `datasets.load_dataset` is called; `calls` records each call's arguments."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(
        self,
        path: str,
        name: str | None = None,
        *,
        split: str | None = None,
        revision: str | None = None,
        data_files: Any = None,
        streaming: bool = False,
        **kwargs: Any,
    ) -> Any:
        import datasets

        self.calls.append(
            {
                "path": path,
                "name": name,
                "split": split,
                "revision": revision,
                "data_files": data_files,
                "streaming": streaming,
            }
        )
        if kwargs:
            raise TypeError(f"load_dataset: arguments the fake does not know: {sorted(kwargs)}")
        repo = HUB.get(path)
        if repo is None:
            raise FileNotFoundError(
                f"Dataset '{path}' doesn't exist on the Hub or cannot be accessed."
            )
        if revision is not None and revision not in (*repo.commits, *BRANCHES):
            raise datasets.exceptions.DatasetNotFoundError(
                f"Revision '{revision}' doesn't exist for dataset '{path}' on the Hub."
            )
        if repo.script:
            raise RuntimeError(f"Dataset scripts are no longer supported, but found {repo.script}")
        if name is None and None not in repo.configs:
            raise ValueError(
                "Config name is missing.\nPlease pick one among the available configs:"
                f" {list(repo.configs)}"
            )
        if name not in repo.configs:
            raise ValueError(f"BuilderConfig '{name}' not found. Available: {list(repo.configs)}")
        config = repo.configs[name]
        if config.data_files != data_files:
            raise ValueError(
                f"{path}: this fake knows the repository only through"
                f" data_files={config.data_files!r}, got {data_files!r}"
            )
        if split is None or split not in config.splits:
            raise ValueError(f'Unknown split "{split}". Should be one of {list(config.splits)}.')
        n = ROWS.get(split, DEFAULT_ROWS)
        tag = f"{name}/{split}" if name else split
        ds = datasets.Dataset.from_dict(
            {
                col: _column(kind, col, tag, n, split.startswith("test"))
                for col, kind in config.columns.items()
            }
        )
        return ds.to_iterable_dataset() if streaming else ds
