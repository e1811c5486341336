"""`tuneatlas validate` (preflight) catches every row problem `prepare_data` raises, before any
job: each bad file below makes `prepare_dataset` fail, and preflight must report the same
message. Also: tasks declared in the config (`tasks:`) and their key-naming errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneatlas.config import validate_config
from tuneatlas.data.prepare import prepare_dataset
from tuneatlas.errors import ConfigError, DataError
from tuneatlas.plan import make_plan
from tuneatlas.preflight import preflight

GOOD = "text,label\n" + "".join(
    f"{t} number {i},{lab}\n"
    for i in range(4)
    for t, lab in (("a late goal", "sports"), ("a new chip", "tech"), ("fresh bread", "food"))
)

# file text -> the words prepare_data's error holds (each one check of the job)
BAD: dict[str, tuple[str, str]] = {
    "wrong text column": ("sentence,label\na goal,sports\nbread,food\n", "column 'text'"),
    "label not in task": (GOOD + "a song,music\n", "label 'music'"),
    "empty text": (GOOD + '"",food\n', "empty text"),
    "missing label": (GOOD + "a cake,\n", "missing label"),
    "label id out of range": (GOOD + "a cake,3\n", "out of range"),
    "no label column": ("text\na goal\nbread\n", "column 'label'"),
    "header only after resplit": ("text,label\na goal,sports\n", "is empty after"),
}


def _config(path: Path, resplit: bool = False) -> dict:
    ds = {"source": "file", "task": "news", "files": {"train": str(path)}}
    if resplit:
        ds["resplit"] = [8, 1, 1]
    else:
        ds["files"]["validation"] = str(path)
    return validate_config(
        {
            "tasks": {"news": {"kind": "classification", "labels": ["sports", "tech", "food"]}},
            "datasets": {"news": ds},
            "models": {
                "tiny": {
                    "source": "build",
                    "hidden_size": 16,
                    "num_layers": 1,
                    "num_heads": 2,
                    "intermediate_size": 32,
                    "vocab_size": 100,
                    "max_position_embeddings": 512,
                    "corpus": ["news"],
                }
            },
            "studies": {"s1": {"model": "tiny", "datasets": ["news"], "seeds": [0]}},
        }
    )


@pytest.mark.parametrize("case", sorted(BAD))
def test_validate_reports_what_prepare_rejects(tmp_path: Path, case: str) -> None:
    text, words = BAD[case]
    path = tmp_path / "news.csv"
    path.write_text(text)
    config = _config(path, resplit=case.startswith("header only"))
    with pytest.raises(DataError) as job:
        prepare_dataset("news", config["datasets"]["news"], tmp_path / "out", seed=0)
    assert words in str(job.value)
    with pytest.raises(ConfigError) as check:
        preflight(config, make_plan(config), check_device=False)
    assert str(job.value) in str(check.value)


def test_good_file_passes_both(tmp_path: Path) -> None:
    path = tmp_path / "news.csv"
    path.write_text(GOOD)
    config = _config(path)
    preflight(config, make_plan(config), check_device=False)
    written = prepare_dataset("news", config["datasets"]["news"], tmp_path / "out", seed=0)
    assert {"train", "valid"} <= set(written)


def test_two_mistakes_reported_in_one_call(tmp_path: Path) -> None:
    path = tmp_path / "news.csv"
    path.write_text("sentence,label\na goal,sports\na song,music\n")
    config = _config(path)
    with pytest.raises(ConfigError) as check:
        preflight(config, make_plan(config), check_device=False)
    assert "column 'text'" in str(check.value) and "label 'music'" in str(check.value)


@pytest.mark.parametrize(
    ("decl", "key"),
    [
        ({"kind": "classification", "labels": ["only"]}, "tasks.news.labels"),
        ({"kind": "regression", "labels": ["a", "b"]}, "tasks.news.labels"),
        (
            {"kind": "classification", "labels": ["a", "b"], "metric": "pearson"},
            "tasks.news.metric",
        ),
        ({"kind": "classification", "labels": ["a", "a"]}, "tasks.news.labels"),
    ],
)
def test_bad_task_declaration_names_the_key(tmp_path: Path, decl: dict, key: str) -> None:
    raw = {
        "tasks": {"news": decl},
        "datasets": {"news": {"source": "synthetic", "task": "sst2"}},
        "models": {"m": {"source": "hub", "name": "x"}},
        "studies": {},
    }
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(raw)


def test_declared_labels_map_by_name(tmp_path: Path) -> None:
    path = tmp_path / "news.csv"
    path.write_text(GOOD)
    config = _config(path)
    out = tmp_path / "out"
    prepare_dataset("news", config["datasets"]["news"], out, seed=0)
    import pandas as pd

    train = pd.read_parquet(out / "train.parquet")
    expected = [
        ["sports", "tech", "food"].index(line.rsplit(",", 1)[1]) for line in GOOD.split("\n")[1:-1]
    ]
    assert sorted(train["label"].tolist()) == sorted(expected)


def test_a_declared_task_feeds_s1_s2_s3_s5(repo, tmp_path: Path) -> None:
    """The toy config with every classification study pointed at a declared 3-class task."""
    from tuneatlas.config import load_config

    path = tmp_path / "news.csv"
    path.write_text(GOOD)
    config = load_config(repo / "config.yaml")
    config["tasks"] = {"news": {"kind": "classification", "labels": ["sports", "tech", "food"]}}
    news = {"source": "file", "task": "news", "files": {"train": str(path)}, "resplit": [8, 1, 1]}
    imb = {**news, "imbalance": {"group_sizes": [2, 1, 1], "classes_per_group": 1}}
    config["datasets"].update({"news": news, "news-imb": imb})
    studies = config["studies"]
    studies["s1"].update(datasets=["news"], cross_datasets=None, no_dropout_datasets=None)
    studies["s2"]["dataset"] = "news"
    studies["s3"].update(dataset="news-imb", preliminary_dataset="news")
    studies["s5"]["dataset"] = "news"
    studies["s4"]["enabled"] = False
    plan = make_plan(validate_config(config))
    tasks = {
        run.study: run.spec.get("task") for run in plan.runs.values() if run.kind == "finetune"
    }
    assert tasks == {"s1": "news", "s2": "news", "s3": "news", "s5": "news"}


def test_declared_task_has_no_synthetic_source() -> None:
    raw = {
        "tasks": {"news": {"kind": "classification", "labels": ["a", "b"]}},
        "datasets": {"news": {"source": "synthetic", "task": "news"}},
        "models": {"m": {"source": "hub", "name": "x"}},
        "studies": {},
    }
    from tuneatlas.data.validate import check_source

    config = validate_config(raw)
    with pytest.raises(ConfigError, match=r"datasets\.news\.source.*source: file"):
        check_source("news", config["datasets"]["news"])
