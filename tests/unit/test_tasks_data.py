"""Task registry and dataset preparation: formats, re-split, imbalance, validation errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import require_module, require_shared_sst2
from tuneatlas.data import prepare as data
from tuneatlas.data.prepare import prepare_dataset, read_prepared
from tuneatlas.data.tasks import GLUE_TASKS, TASKS, declare, get_task
from tuneatlas.data.transform import split_counts
from tuneatlas.data.validate import check_source
from tuneatlas.errors import ConfigError, DataError, HubOfflineError
from tuneatlas.io import read_parquet_meta
from tuneatlas.metrics import METRICS

from .hub_fake import FakeHub

REPO = Path(__file__).resolve().parents[2]


# --- task registry ---------------------------------------------------------------------------


def test_registry_covers_glue_livedoor_and_corpora_with_known_metrics():
    declare(None)  # the built-ins alone, whatever config an earlier test declared
    assert set(GLUE_TASKS) | {"livedoor", "simcse", "pretrain"} == set(TASKS)
    for task in TASKS.values():
        if task.is_corpus:
            assert task.metric is None and task.num_labels == 0
        else:
            assert task.metric in METRICS
            assert all(m in METRICS for m in task.extra_metrics)
    assert get_task("cola").metric == "mcc"
    assert get_task("stsb").metric == "pearson" and get_task("stsb").num_labels == 1
    assert get_task("livedoor").num_labels == 9 and "macro_f1" in get_task("livedoor").extra_metrics


def test_registry_has_the_real_hub_columns():
    mnli = get_task("mnli")
    assert (mnli.text_a, mnli.text_b, mnli.hub_split_map["validation"]) == (
        "premise",
        "hypothesis",
        "validation_matched",
    )
    assert (get_task("qnli").text_a, get_task("qnli").text_b) == ("question", "sentence")
    assert (get_task("qqp").text_a, get_task("qqp").text_b) == ("question1", "question2")
    assert get_task("sst2").text_b is None and get_task("sst2").hub_path == "nyu-mll/glue"
    assert get_task("livedoor").text_a_columns == ("content",)  # S3: the body alone
    assert get_task("pretrain").hub_path == "HuggingFaceFW/fineweb-edu"


def test_unknown_task_lists_known_tasks():
    with pytest.raises(ValueError, match=r"unknown task 'sst5'.*sst2"):
        get_task("sst5")


# --- formats ---------------------------------------------------------------------------------

ROWS = pd.DataFrame(
    {
        "s1": ["a man plays", 'he said "hi"', "null", "x y z"],
        "s2": ["a man is playing", "she left", "nothing", "z"],
        "score": [4.5, 0.0, 2.25, 1.0],
        "y": [1, 0, 1, 0],
    }
)


def _write(df: pd.DataFrame, path: Path) -> Path:
    fmt = path.suffix
    if fmt == ".tsv":
        df.to_csv(path, sep="\t", index=False, quoting=3)  # QUOTE_NONE, as GLUE ships TSVs
    elif fmt == ".csv":
        df.to_csv(path, index=False)
    elif fmt == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in df.to_dict("records")))
    else:
        df.to_parquet(path)
    return path


@pytest.mark.parametrize("ext", [".tsv", ".csv", ".jsonl", ".parquet"])
def test_every_format_round_trips_pair_classification_and_regression(tmp_path, ext):
    path = _write(ROWS, tmp_path / f"dev{ext}")
    for task, label in (("mrpc", "y"), ("stsb", "score")):
        cfg = {
            "source": "file",
            "task": task,
            "files": {"validation": str(path)},
            "columns": {"text_a": "s1", "text_b": "s2", "label": label},
        }
        out = prepare_dataset(f"{task}_{ext[1:]}", cfg, tmp_path / task / ext[1:], seed=0)
        assert set(out) == {"valid"}
        df = read_prepared(out["valid"])
        assert list(df["text_a"]) == list(ROWS["s1"])  # quotes and the word "null" survive
        assert list(df["text_b"]) == list(ROWS["s2"])
        assert list(df["idx"]) == [0, 1, 2, 3]
        assert df["idx"].dtype == np.int64
        if task == "stsb":
            assert df["label"].dtype == np.float64
            np.testing.assert_allclose(df["label"], ROWS["score"])
        else:
            assert df["label"].dtype == np.int64 and list(df["label"]) == [1, 0, 1, 0]


def test_single_sentence_text_b_is_a_null_string_column(tmp_path):
    import pyarrow.parquet as pq

    path = _write(ROWS, tmp_path / "train.tsv")
    cfg = {
        "source": "file",
        "task": "sst2",
        "files": {"train": str(path)},
        "columns": {"text_a": "s1", "label": "y"},
    }
    out = prepare_dataset("sst2", cfg, tmp_path / "out", seed=0)
    schema = pq.read_schema(out["train"])
    assert "string" in str(schema.field("text_b").type)
    assert read_prepared(out["train"])["text_b"].isna().all()


def test_default_columns_string_labels_and_dir_source(tmp_path):
    rows = pd.DataFrame(
        {
            "premise": ["p one", "p two", "p three"],
            "hypothesis": ["h one", "h two", "h three"],
            "label": ["entailment", "contradiction", "1"],
        }
    )
    _write(rows, tmp_path / "train.jsonl")
    _write(rows.iloc[:2], tmp_path / "dev.jsonl")
    (tmp_path / "notes.md").write_text("ignored")
    cfg = {"source": "file", "task": "mnli", "dir": str(tmp_path)}
    assert data.output_files("mnli", cfg) == ["train.parquet", "valid.parquet"]
    out = prepare_dataset("mnli", cfg, tmp_path / "out", seed=0)
    assert list(read_prepared(out["train"])["label"]) == [0, 2, 1]
    assert len(read_prepared(out["valid"])) == 2


def test_livedoor_reads_the_body_by_default_and_the_title_on_request(tmp_path):
    """S3's paper feeds the body (「本文」を入力として); the title is an option."""
    rows = pd.DataFrame(
        {"title": ["Title A", "Title B"], "content": ["body a", "body b"], "category": [3, 8]}
    )
    path = _write(rows, tmp_path / "train.parquet")
    cfg = {"source": "file", "task": "livedoor", "files": {"train": str(path)}}
    df = read_prepared(prepare_dataset("ld", cfg, tmp_path / "out", seed=0)["train"])
    assert list(df["text_a"]) == ["body a", "body b"]
    assert list(df["label"]) == [3, 8]
    cfg["columns"] = {"text_a": ["title", "content"]}
    df = read_prepared(prepare_dataset("ld", cfg, tmp_path / "titled", seed=0)["train"])
    assert list(df["text_a"]) == ["Title A\nbody a", "Title B\nbody b"]


def test_max_rows_caps_each_source_split_keeping_source_ids(tmp_path):
    rows = pd.DataFrame(
        {"text": [f"s {i}" for i in range(50)], "label": [i % 2 for i in range(50)]}
    )
    path = _write(rows, tmp_path / "train.csv")
    cfg = {
        "source": "file",
        "task": "sst2",
        "files": {"train": str(path)},
        "columns": {"text_a": "text"},
        "max_rows": 7,
    }
    df = read_prepared(prepare_dataset("s", cfg, tmp_path / "out", seed=3)["train"])
    assert len(df) == 7 and df["idx"].is_monotonic_increasing
    assert all(t == f"s {i}" for t, i in zip(df["text_a"], df["idx"], strict=True))


# --- synthetic and corpora -------------------------------------------------------------------


def test_synthetic_source_writes_disjoint_splits_with_metadata(tmp_path):
    cfg = {"source": "synthetic", "task": "mrpc", "sizes": {"train": 120, "validation": 30}}
    out = prepare_dataset("mrpc", cfg, tmp_path, seed=5, meta={"spec_hash": "cafe"})
    assert set(out) == {"train", "valid"}
    assert data.output_files("mrpc", cfg) == ["train.parquet", "valid.parquet"]
    train, valid = read_prepared(out["train"]), read_prepared(out["valid"])
    assert (len(train), len(valid)) == (120, 30)
    assert not set(train["idx"]) & set(valid["idx"])
    pairs = set(zip(train["text_a"], train["text_b"], strict=True))
    assert not pairs & set(zip(valid["text_a"], valid["text_b"], strict=True))
    meta = read_parquet_meta(out["train"])
    assert meta["spec_hash"] == "cafe" and meta["task"] == "mrpc" and meta["split"] == "train"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_corpora_write_text_and_facts(tmp_path):
    out = prepare_dataset(
        "simcse", {"source": "synthetic", "sizes": {"train": 40}}, tmp_path / "s", 1
    )
    assert list(read_prepared(out["train"]).columns) == ["idx", "text"]
    out = prepare_dataset(
        "pretrain", {"source": "synthetic", "sizes": {"train": 30}}, tmp_path / "p", 1
    )
    assert set(out) == {"train", "facts"}
    facts = pd.read_parquet(out["facts"])
    assert list(facts.columns) == ["idx", "subject", "relation", "question", "answer"]
    assert len(read_prepared(out["train"])) == 30 and len(facts) >= 8


def test_corpus_from_text_file_skips_blank_lines(tmp_path):
    path = tmp_path / "wiki.txt"
    path.write_text("first sentence .\n\nsecond one .\n")
    cfg = {"source": "file", "task": "simcse", "files": {"train": str(path)}}
    df = read_prepared(prepare_dataset("simcse", cfg, tmp_path / "out", 0)["train"])
    assert list(df["text"]) == ["first sentence .", "second one ."]


# --- resplit and imbalance -------------------------------------------------------------------


def _pool(tmp_path: Path) -> dict:
    train = pd.DataFrame(
        {"sentence": [f"t {i}" for i in range(70)], "label": [i % 2 for i in range(70)]}
    )
    dev = pd.DataFrame(
        {"sentence": [f"d {i}" for i in range(30)], "label": [i % 2 for i in range(30)]}
    )
    return {
        "source": "file",
        "task": "sst2",
        "files": {
            "train": str(_write(train, tmp_path / "train.tsv")),
            "validation": str(_write(dev, tmp_path / "dev.tsv")),
        },
        "resplit": [8, 1, 1],
    }


def test_resplit_pools_all_splits_by_ratio_and_is_deterministic(tmp_path):
    cfg = _pool(tmp_path)
    a = data.load_raw_splits("sst2", cfg, seed=42)
    b = data.load_raw_splits("sst2", cfg, seed=42)
    c = data.load_raw_splits("sst2", cfg, seed=7)
    assert [len(a[s]) for s in ("train", "valid", "test")] == [80, 10, 10]
    for s in a:
        pd.testing.assert_frame_equal(a[s], b[s])
    assert not a["test"].equals(c["test"])
    ids = np.concatenate([a[s]["idx"] for s in ("train", "valid", "test")])
    assert sorted(ids) == list(range(100))  # dev rows are offset past the 70 train rows
    texts = pd.concat([a[s] for s in a]).set_index("idx")["text_a"]
    assert texts[75] == "d 5" and texts[3] == "t 3"


def test_split_counts_use_largest_remainder():
    assert split_counts(872, [8, 1, 1]) == [698, 87, 87]
    assert split_counts(10, [1, 1, 1]) == [4, 3, 3]
    assert split_counts(5, [1, 0, 0]) == [5, 0, 0]


def test_imbalance_counts_are_exact_and_the_assignment_is_recorded(tmp_path):
    cfg = {
        "source": "synthetic",
        "task": "livedoor",
        "sizes": {"train": 1500, "test": 700},
        "imbalance": {"group_sizes": [40, 10, 2], "classes_per_group": 3, "test_per_class": 12},
    }
    out = prepare_dataset("livedoor", cfg, tmp_path, seed=11)
    classes = pd.read_parquet(out["classes"])
    train, test = read_prepared(out["train"]), read_prepared(out["test"])
    counts = np.bincount(train["label"], minlength=9)
    assert sorted(counts) == [2, 2, 2, 10, 10, 10, 40, 40, 40]
    assert list(classes["n_train"]) == list(counts)
    assert list(np.bincount(test["label"], minlength=9)) == [12] * 9
    assert list(classes["n_test"]) == [12] * 9
    assert sorted(np.bincount(classes["group"])) == [3, 3, 3]
    sizes = {0: 40, 1: 10, 2: 2}
    assert all(sizes[g] == n for g, n in zip(classes["group"], classes["n_train"], strict=True))
    recorded = json.loads(read_parquet_meta(out["train"])["imbalance"])
    assert {int(k): v for k, v in recorded.items()} == dict(
        zip(classes["class"], classes["group"], strict=True)
    )
    again = pd.read_parquet(prepare_dataset("livedoor", cfg, tmp_path / "b", seed=11)["classes"])
    pd.testing.assert_frame_equal(classes, again)
    other = [
        pd.read_parquet(prepare_dataset("livedoor", cfg, tmp_path / f"s{s}", seed=s)["classes"])
        for s in (1, 2, 3)
    ]
    assert any(not o["group"].equals(classes["group"]) for o in other)  # assignment is seeded


def test_imbalance_fails_when_a_class_is_too_small(tmp_path):
    cfg = {
        "source": "synthetic",
        "task": "livedoor",
        "sizes": {"train": 90, "test": 90},
        "imbalance": {"group_sizes": [400, 100, 10], "classes_per_group": 3},
    }
    with pytest.raises(DataError, match=r"split 'train' has \d+ rows of class \d, 400 are needed"):
        prepare_dataset("livedoor", cfg, tmp_path, seed=0)


# --- bad input -------------------------------------------------------------------------------


def _tsv(tmp_path: Path, body: str, name: str = "bad.tsv") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def _prepare_file(tmp_path: Path, path: Path, task: str = "sst2", **columns) -> None:
    cfg = {
        "source": "file",
        "task": task,
        "files": {"train": str(path)},
        "columns": columns or {"text_a": "sentence"},
    }
    prepare_dataset(task, cfg, tmp_path / "out", seed=0)


@pytest.mark.parametrize(
    "body, pattern",
    [
        (
            "sentence\tlabel\nok\t1\n   \t0\n",
            r"bad\.tsv: row 2 \(line 3\): empty text in 'sentence'",
        ),
        ("sentence\tlabel\nok\t1\nfine\t\n", r"bad\.tsv: row 2 \(line 3\): missing label"),
        (
            "sentence\tlabel\nok\t1\nfine\t2\n",
            r"bad\.tsv: row 2 \(line 3\): label 2 .* out of range \[0, 2\)",
        ),
        ("sentence\tlabel\nok\t-1\n", r"row 1 \(line 2\): label -1 .*hidden test label"),
        ("sentence\tlabel\nok\tyes\n", r"row 1 \(line 2\): label 'yes' .* not a class id"),
        (
            "text\tlabel\nok\t1\n",
            r"bad\.tsv: column 'sentence' \(text_a\) not found;"
            r" available columns: \['text', 'label'\]",
        ),
        (
            "sentence\tlabel\nok\t1\nan\textra\tfield\n",
            r"bad\.tsv: line 3: 3 tab-separated fields, the header has 2",
        ),
        ("sentence\tlabel\nok\t1\n\nfine\t5\n", r"row 2 \(line 4\): label 5 .* out of range"),
    ],
)
def test_bad_tsv_rows_fail_naming_file_row_and_line(tmp_path, body, pattern):
    with pytest.raises(DataError, match=pattern):
        _prepare_file(tmp_path, _tsv(tmp_path, body))


def test_bad_regression_label_and_missing_text_b(tmp_path):
    path = _tsv(tmp_path, "a\tb\ts\nx\ty\t1.5\nx\ty\thigh\n")
    with pytest.raises(DataError, match=r"row 2 \(line 3\): label 'high' .* not a finite number"):
        _prepare_file(tmp_path, path, "stsb", text_a="a", text_b="b", label="s")
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"a": "x", "b": "y", "l": 1}\n\n{"a": "x", "b": null, "l": 0}\n')
    with pytest.raises(
        DataError, match=r"pairs\.jsonl: row 2 \(line 3\): missing text in column 'b'"
    ):
        _prepare_file(tmp_path, path, "rte", text_a="a", text_b="b", label="l")


def test_bad_csv_and_parquet_rows_name_the_row(tmp_path):
    path = tmp_path / "bad.csv"
    pd.DataFrame({"sentence": ["a", "b", ""], "label": [0, 1, 1]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"bad\.csv: row 3: empty text"):
        _prepare_file(tmp_path, path)
    path = tmp_path / "bad.parquet"
    pd.DataFrame({"sentence": ["a", "b"], "label": [0.0, np.nan]}).to_parquet(path)
    with pytest.raises(DataError, match=r"bad\.parquet: row 2: missing label"):
        _prepare_file(tmp_path, path)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"datasets\.x: unknown key\(s\) \['sizez'\]"):
        check_source("x", {"source": "synthetic", "task": "sst2", "sizez": {}})
    with pytest.raises(ConfigError, match=r"datasets\.x\.n_facts shapes the synthetic pre-"):
        check_source("x", {"source": "synthetic", "task": "sst2", "n_facts": 16})
    with pytest.raises(ValueError, match=r"datasets\.x\.resplit must be three numbers"):
        check_source("x", {"source": "synthetic", "task": "sst2", "resplit": [8, 2]})
    with pytest.raises(ValueError, match=r"datasets\.x\.task: unknown task 'nope'"):
        check_source("x", {"source": "synthetic", "task": "nope"})
    with pytest.raises(ValueError, match=r"columns\.text_b: task 'sst2' is single-sentence"):
        check_source(
            "x",
            {
                "source": "file",
                "task": "sst2",
                "files": {"train": "a.tsv"},
                "columns": {"text_b": "s2"},
            },
        )
    with pytest.raises(ValueError, match=r"3 groups x 2 classes = 6, but task 'livedoor' has 9"):
        check_source(
            "x",
            {
                "source": "synthetic",
                "task": "livedoor",
                "imbalance": {"group_sizes": [4, 2, 1], "classes_per_group": 2},
            },
        )
    with pytest.raises(DataError, match=r"missing\.tsv: file not found"):
        _prepare_file(tmp_path, tmp_path / "missing.tsv")


def test_hub_source_fails_at_once_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(HubOfflineError) as err:
        prepare_dataset("rte", {"source": "hub", "task": "rte"}, tmp_path, seed=0)
    msg = str(err.value)
    assert "offline" in msg and "nyu-mll/glue" in msg and "source: file" in msg and "dir:" in msg
    assert not list(tmp_path.iterdir())


# --- the real SST-2 validation file ----------------------------------------------------------


def test_real_sst2_dev_loads_and_resplits_8_1_1(tmp_path):
    SST2_DEV = require_shared_sst2()
    cfg = {
        "source": "file",
        "task": "sst2",
        "files": {"validation": str(SST2_DEV)},
        "columns": {"text_a": "text", "label": "label"},
    }
    whole = data.load_raw_splits("sst2", cfg, seed=42)["valid"]
    assert len(whole) == 872 and list(np.bincount(whole["label"])) == [428, 444]
    out = prepare_dataset("sst2", {**cfg, "resplit": [8, 1, 1]}, tmp_path, seed=42)
    splits = {s: read_prepared(p) for s, p in out.items()}
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [698, 87, 87]
    ids = np.concatenate([df["idx"] for df in splits.values()])
    assert sorted(ids) == list(range(872))
    assert sum(int(df["label"].sum()) for df in splits.values()) == 444
    assert all(re.search(r"\S", t) for df in splits.values() for t in df["text_a"])


def test_hub_source_maps_splits_and_columns(tmp_path, monkeypatch):
    # the fake hub knows GLUE's real split names and fails on any other (tests/unit/hub_fake.py)
    datasets = require_module("datasets")
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    hub = FakeHub()
    monkeypatch.setattr(datasets, "load_dataset", hub)
    out = prepare_dataset("mnli", {"source": "hub", "task": "mnli"}, tmp_path / "a", seed=0)
    assert [(c["path"], c["name"], c["split"], c["streaming"]) for c in hub.calls] == [
        ("nyu-mll/glue", "mnli", "train", False),
        ("nyu-mll/glue", "mnli", "validation_matched", False),
    ]
    valid = read_prepared(out["valid"])
    assert list(valid["text_a"])[:2] == [
        "mnli/validation_matched premise 0",
        "mnli/validation_matched premise 1",
    ]
    assert list(valid["text_b"])[:1] == ["mnli/validation_matched hypothesis 0"]
    assert list(valid["label"])[:4] == [0, 1, 2, 0]
    cfg = {
        "source": "hub",
        "task": "mnli",
        "splits": {"train": "train"},
        "streaming": True,
        "max_rows": 4,
    }
    out = prepare_dataset("mnli", cfg, tmp_path / "b", seed=0)
    assert set(out) == {"train"} and len(read_prepared(out["train"])) == 4
    with pytest.raises(ValueError, match=r'Unknown split "validation"'):
        prepare_dataset(
            "mnli",
            {"source": "hub", "task": "mnli", "splits": {"validation": "validation"}},
            tmp_path / "c",
            seed=0,
        )


PAPER_GROUPS = {  # paper.yaml's map: the paper's class ids 3,4,6 / 0,1,8 / 2,5,7 by name
    "topic-news": 0,
    "livedoor-homme": 0,
    "sports-watch": 0,
    "movie-enter": 1,
    "it-life-hack": 1,
    "smax": 1,
    "kaden-channel": 2,
    "peachy": 2,
    "dokujo-tsushin": 2,
}


def test_the_papers_group_map_gives_400_100_10_to_the_named_classes(tmp_path):
    paper = yaml.safe_load((REPO / "paper.yaml").read_text())
    imb = paper["datasets"]["livedoor-imb"]["imbalance"]
    assert imb["groups"] == PAPER_GROUPS and imb["group_sizes"] == [400, 100, 10]
    cfg = {
        "source": "synthetic",
        "task": "livedoor",
        "sizes": {"train": 6000, "test": 900},
        "imbalance": imb,
    }
    out = prepare_dataset("livedoor", cfg, tmp_path, seed=0)
    train = read_prepared(out["train"])
    names = get_task("livedoor").label_names
    got = {names[c]: int(n) for c, n in train["label"].value_counts().items()}
    assert got == {
        "topic-news": 400,
        "livedoor-homme": 400,
        "sports-watch": 400,
        "movie-enter": 100,
        "it-life-hack": 100,
        "smax": 100,
        "kaden-channel": 10,
        "peachy": 10,
        "dokujo-tsushin": 10,
    }
    classes = pd.read_parquet(out["classes"]).set_index("name")
    assert classes.loc["livedoor-homme", "n_train"] == 400  # seed 0 at random gave it 10
    assert (classes["n_test"] == 45).all()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"smax": 1, "peachy": 2}, "missing"),
        ({**PAPER_GROUPS, "news": 0}, "unknown class"),
        ({**PAPER_GROUPS, "smax": 3}, "group indices must be 0..2"),
        ({**PAPER_GROUPS, "smax": 0}, r"classes per group \[4, 2, 3\]"),
    ],
)
def test_a_bad_group_map_names_the_key(change, message):
    cfg = {
        "source": "synthetic",
        "task": "livedoor",
        "sizes": {"train": 6000, "test": 900},
        "imbalance": {"group_sizes": [400, 100, 10], "classes_per_group": 3, "groups": change},
    }
    with pytest.raises(ConfigError, match=message) as err:
        check_source("ld", cfg)
    assert "datasets.ld.imbalance.groups" in str(err.value)
