"""EmbeddingCapture on the real training engine with a tiny BERT, the captures file format, and
the S3 tables and figures built from captures."""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.factories import train_spec
from tuneatlas.analysis.capture import (
    EmbeddingCapture,
    load_captures,
    load_scores,
    select_probe,
    write_captures,
)
from tuneatlas.catalogue import ARTIFACTS
from tuneatlas.data.tasks import get_task
from tuneatlas.spec import CaptureSpec, TrainSpec
from tuneatlas.studies import s3

from .conftest import tiny_livedoor

TINY_BERT = {
    "hidden_size": 16,
    "num_layers": 1,
    "num_heads": 2,
    "intermediate_size": 32,
    "vocab_size": 300,
    "max_position_embeddings": 64,
    "mlm_steps": 0,
    "dropout": 0.1,  # dropout on: a capture that left the model in eval mode would show
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A prepared 9-class dataset (train/valid/test parquet) and a tiny BERT built offline."""
    return tiny_livedoor(tmp_path_factory.mktemp("tiny"), TINY_BERT)


def _spec(**kw) -> TrainSpec:
    base = train_spec(
        run="cap",
        task="livedoor",
        dataset="tiny",
        model="tiny",
        seed=3,
        max_steps=9,
        eval_batch_size=16,
        max_length=32,
        checkpoint_every=4,
        capture=CaptureSpec(every=3, probe_per_class=2),
    )
    return replace(base, **kw)


class Crash:
    """Raises at a given step, to simulate a killed job (never fires with ``at=None``)."""

    def __init__(self, at: int | None) -> None:
        self.at = at

    def on_step_end(self, state) -> None:
        if self.at is not None and state.step == self.at:
            raise KeyboardInterrupt(f"simulated kill at step {state.step}")


def _train(tiny: dict[str, Path], spec: TrainSpec, out: Path, hooks=()) -> dict:
    from tuneatlas.engine.recipes.finetune import finetune as train

    return train(spec, tiny["data"], tiny["model"], out, hooks=list(hooks), device="cpu")


@pytest.fixture(scope="module")
def runs(tiny) -> dict[str, Path]:
    """The same run without hooks and with capture (plus a crash hook that never fires, so the
    resume test can reuse it as its uninterrupted reference)."""
    spec = _spec()
    plain, captured = tiny["root"] / "plain", tiny["root"] / "captured"
    _train(tiny, spec, plain)
    _train(tiny, spec, captured, [EmbeddingCapture(spec.capture), Crash(None)])
    return {"plain": plain, "captured": captured}


def _weights(out: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    w = load_file(str(out / "model" / "model.safetensors"))
    w.update(
        {f"head.{k}": v for k, v in load_file(str(out / "model" / "head.safetensors")).items()}
    )
    return w


def test_capture_does_not_change_training(runs):
    w0, w1 = _weights(runs["plain"]), _weights(runs["captured"])
    assert w0.keys() == w1.keys()
    for k in w0:
        np.testing.assert_array_equal(w0[k], w1[k], err_msg=k)
    for name in ("metrics.parquet", "eval.parquet"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(runs["plain"] / name), pd.read_parquet(runs["captured"] / name)
        )


def test_capture_records_step_zero_every_interval_and_the_last_step(tiny, runs):
    captured = runs["captured"]
    caps = load_captures(captured / "captures")
    test = pd.read_parquet(tiny["data"] / "test.parquet")
    # step 0, every 3 steps, and the last step (9 = max_steps).
    assert caps.steps.tolist() == [0, 3, 6, 9]
    assert caps.embeddings.shape == (4, len(test), TINY_BERT["hidden_size"])
    assert caps.embeddings.dtype == np.float32
    assert caps.labels.tolist() == test["label"].tolist()
    assert caps.idx.tolist() == test["idx"].tolist()
    np.testing.assert_allclose(caps.epochs, caps.steps / 5)  # 80 rows / 16 = 5 steps per epoch
    assert not np.allclose(caps.embeddings[0], caps.embeddings[-1])  # training moved them
    probe_labels = caps.labels[caps.probe]
    for c in np.unique(caps.labels):
        assert (probe_labels == c).sum() == min(2, (caps.labels == c).sum())
    assert caps.meta["split"] == "test" and caps.meta["seed"] == "3"

    scores = load_scores(captured / "captures")
    assert set(scores["metric"]) == {"accuracy", "macro_f1", "f1"}
    assert scores["label"].dtype == "Int64"
    per_step = scores.groupby("step").size()
    assert per_step.to_dict() == {s: 2 + 9 for s in (0, 3, 6, 9)}  # 2 overall + 9 classes
    # The final capture scores the final weights: same accuracy as the engine's test eval.
    final = pd.read_parquet(captured / "eval.parquet").query("split == 'test'")
    final_acc = final.set_index("metric")["value"]["accuracy"]
    cap_acc = scores.query("step == 9 and metric == 'accuracy'")["value"].item()
    assert cap_acc == pytest.approx(final_acc)


def test_capture_embeddings_are_the_models_last_layer_cls(tiny, runs):
    from tuneatlas.data.labelled import tokenize_splits
    from tuneatlas.data.tasks import fine_tuning_task
    from tuneatlas.models.classifier import SequenceClassifier

    caps = load_captures(runs["captured"] / "captures")
    model = SequenceClassifier.load(runs["captured"] / "model").eval()
    split = tokenize_splits(tiny["data"], model.tokenizer, 32, fine_tuning_task("livedoor"))["test"]
    with torch.no_grad():
        b = split.batch(range(len(split)))
        hidden = model.encoder(
            input_ids=b["input_ids"],
            attention_mask=b["attention_mask"],
            token_type_ids=b.get("token_type_ids"),
        ).last_hidden_state[:, 0]
    np.testing.assert_allclose(caps.embeddings[-1], hidden.numpy(), rtol=1e-5, atol=1e-5)


def test_resumed_run_ends_with_the_captures_of_an_uninterrupted_one(tiny, runs, tmp_path):
    spec = _spec()
    broken = tmp_path / "broken"
    with pytest.raises(KeyboardInterrupt):
        # Killed at step 8: the last checkpoint (epoch end, step 5) holds captures 0 and 3;
        # capture 6 is lost with the job and must be recomputed.
        _train(tiny, spec, broken, [EmbeddingCapture(spec.capture), Crash(8)])
    assert not (broken / "captures" / "embeddings.safetensors").exists()
    result = _train(tiny, spec, broken, [EmbeddingCapture(spec.capture), Crash(None)])
    assert result["resumed_from"] == 5

    a, b = load_captures(runs["captured"] / "captures"), load_captures(broken / "captures")
    assert b.steps.tolist() == a.steps.tolist() == [0, 3, 6, 9]
    np.testing.assert_array_equal(a.embeddings, b.embeddings)
    np.testing.assert_array_equal(a.probe, b.probe)
    pd.testing.assert_frame_equal(
        load_scores(runs["captured"] / "captures"), load_scores(broken / "captures")
    )


def test_state_dict_survives_weights_only_torch_load(tmp_path):
    hook = EmbeddingCapture(CaptureSpec(every=2, probe_per_class=1))
    hook.load_state_dict(
        {
            "steps": [0, 2],
            "epochs": [0.0, 0.5],
            "embeddings": torch.arange(12, dtype=torch.float32).reshape(2, 3, 2),
            "scores": [
                {
                    "run": "r",
                    "step": 0,
                    "epoch": 0.0,
                    "split": "test",
                    "metric": "f1",
                    "label": 1,
                    "value": 0.5,
                },
                {
                    "run": "r",
                    "step": 0,
                    "epoch": 0.0,
                    "split": "test",
                    "metric": "accuracy",
                    "label": None,
                    "value": float("nan"),
                },
            ],
            "rows": torch.arange(3),
            "labels": torch.tensor([0, 1, 1]),
            "probe": torch.tensor([0, 2]),
            "idx": None,
            "run": "r",
            "seed": 5,
        }
    )
    torch.save(hook.state_dict(), tmp_path / "s.pt")
    again = EmbeddingCapture(CaptureSpec(every=2, probe_per_class=1))
    again.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert again.steps == [0, 2]
    again.write(tmp_path / "captures")
    caps = load_captures(tmp_path / "captures")
    np.testing.assert_array_equal(caps.embeddings, np.arange(12, dtype=np.float32).reshape(2, 3, 2))
    assert caps.idx is None and caps.meta["seed"] == "5"
    assert load_scores(tmp_path / "captures")["label"].tolist()[0] == 1


def test_inconsistent_state_dict_is_rejected():
    hook = EmbeddingCapture(CaptureSpec(every=2))
    with pytest.raises(ValueError, match="inconsistent"):
        hook.load_state_dict(
            {
                "steps": [0, 2],
                "epochs": [0, 1],
                "embeddings": torch.zeros(1, 2, 2),
                "scores": [],
                "rows": None,
                "labels": None,
                "probe": None,
            }
        )


def test_capture_spec_is_validated():
    with pytest.raises(ValueError, match="every"):
        EmbeddingCapture(CaptureSpec(every=0))


def test_select_probe_is_seeded_and_per_class():
    labels = np.array([0] * 5 + [1] * 2 + [2] * 7)
    p = select_probe(labels, 3, seed=1)
    assert p.tolist() == select_probe(labels, 3, seed=1).tolist()
    assert p.tolist() != select_probe(labels, 3, seed=2).tolist()
    assert np.bincount(labels[p]).tolist() == [3, 2, 3]  # class 1 has only 2 rows
    assert list(labels[p]) == sorted(labels[p])


def test_load_captures_explains_a_missing_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="capture.every"):
        load_captures(tmp_path)


# --- S3 tables and figures from captures ------------------------------------------------------
def _write_known_captures(out: Path) -> dict[int, str]:
    """3 classes x 4 points, 11 captures, 10 steps apart, with known stay behaviour:
    class 0 walks 1/interval for 3 intervals then stops; class 1 walks 3/interval throughout;
    class 2 walks 0.5/interval. Points of a class are offset along a private axis."""
    T, H = 11, 4
    labels = np.repeat([0, 1, 2], 4)
    V = np.zeros((T, labels.size, H))
    for i, c in enumerate(labels):
        if c == 0:
            x = np.minimum(np.arange(T), 3).astype(float)
        elif c == 1:
            x = 3.0 * np.arange(T)
        else:
            x = 0.5 * np.arange(T)
        V[:, i, 0] = x
        V[:, i, 1 + c] = 10.0 + 0.1 * i  # class-specific offset, same at every capture
    scores = pd.DataFrame(
        [
            {
                "run": "k",
                "step": s,
                "epoch": s / 50,
                "split": "test",
                "metric": m,
                "label": lab,
                "value": v,
            }
            for s in range(0, 110, 10)
            for m, lab, v in [("accuracy", None, s / 100), ("macro_f1", None, s / 120)]
            + [("f1", c, s / (100 + c)) for c in range(3)]
        ]
    )
    write_captures(
        out,
        steps=np.arange(T) * 10,
        epochs=np.arange(T) / 5,
        embeddings=V.astype(np.float32),
        rows=np.arange(labels.size),
        labels=labels,
        probe=np.array([0, 1, 4, 5, 8, 9]),
        scores=scores,
    )
    return {0: "400/class", 1: "400/class", 2: "10/class"}


def test_s3_tables_have_catalogue_columns_and_known_values(tmp_path):
    groups = _write_known_captures(tmp_path / "captures")
    caps = tmp_path / "captures"
    tables = {
        "S3.F4": s3.table_f4(caps, groups),
        "S3.F5": s3.table_f5(caps, groups),
        "S3.F7": s3.table_f7(caps, groups),
        "S3.F8": s3.table_f8(caps, groups),
        "S3.F9": s3.table_f9(caps, groups),
        "S3.T1": s3.table_t1(caps, groups, D=[0.4, 0.75, 2, 4], T=4),
        "S3.T2": s3.table_t2(caps, groups, epsilon=[0.1, 0.5], k=5),
        "S3.F12": s3.table_f12(caps, groups, ks=[3, 5]),
    }
    for aid, df in tables.items():
        missing = set(ARTIFACTS[aid].columns) - set(df.columns)
        assert not missing, f"{aid} lacks {missing}"

    t1 = tables["S3.T1"].set_index(["D", "label"])
    # All 6 probe trajectories: class 0 stops after 3 intervals (stays for any D), class 2
    # moves 0.5 (stays for D > 0.5), class 1 moves 3 (stays only for D > 3).
    overall = tables["S3.T1"].query("label.isna()")
    assert overall.set_index("D")["count"].to_dict() == {0.4: 2, 0.75: 4, 2.0: 4, 4.0: 6}
    assert overall.set_index("D")["share"].to_dict()[0.75] == pytest.approx(4 / 6)
    # Class 0's first staying window starts at capture 3 = step 30; class 2's at step 0.
    assert t1.loc[(0.4, 0), "median_first_stay_step"] == 30
    assert t1.loc[(0.75, 2), "median_first_stay_step"] == 0
    assert t1.loc[(0.75, 0), "group"] == "400/class"

    t2 = tables["S3.T2"]
    # Straight walks have S = 1 everywhere; class 0's window from capture 3 on has 0/0 -> 0.
    per = t2.dropna(subset=["label"]).set_index(["epsilon", "label"])["count"].to_dict()
    assert per == {(0.1, 0): 2, (0.1, 1): 0, (0.1, 2): 0, (0.5, 0): 2, (0.5, 1): 0, (0.5, 2): 0}

    f9 = tables["S3.F9"].set_index(["step", "label"])["value"]
    assert f9[(10, 1)] == pytest.approx(3.0) and f9[(10, 2)] == pytest.approx(0.5)
    assert f9[(40, 0)] == pytest.approx(0.0) and f9[(30, 0)] == pytest.approx(1.0)
    assert tables["S3.F9"]["step"].min() == 10  # speed is over the interval ending at step

    f12 = tables["S3.F12"].set_index(["k", "step", "label"])["value"]
    assert f12[(3, 0, 1)] == pytest.approx(1.0) and f12[(5, 40, 0)] == 0.0
    assert tables["S3.F12"].query("k == 5")["step"].max() == 50  # window start of the last

    f8 = tables["S3.F8"]
    assert set(f8["method"]) == {"trajectory", "final"}
    assert len(f8) == 2 * 6 and f8["ari"].between(-1, 1).all()

    f4, f5 = tables["S3.F4"], tables["S3.F5"]
    assert len(f4) == 11 * 12 and sorted(f5["point"].unique()) == [0, 1, 4, 5, 8, 9]
    f7 = tables["S3.F7"]
    assert f7.query("metric == 'accuracy'")["label"].isna().all()
    assert f7.query("metric == 'f1' and label == 2")["group"].unique().tolist() == ["10/class"]


def test_s3_space_pca_uses_the_figure_plane(tmp_path):
    _write_known_captures(tmp_path / "captures")
    hidden = s3.table_f9(tmp_path / "captures", space="hidden")
    pca = s3.table_f9(tmp_path / "captures", space="pca")
    assert (pca["space"] == "pca").all()
    # A projection can only shorten displacements.
    assert (pca["value"].to_numpy() <= hidden["value"].to_numpy() + 1e-9).all()
    with pytest.raises(ValueError, match="space"):
        s3.table_f9(tmp_path / "captures", space="umap")


def test_class_groups_from_counts():
    labels = np.repeat(np.arange(6), [400, 400, 100, 100, 10, 10])
    g = s3.class_groups_from_counts(labels)
    assert g == {
        0: "400/class",
        1: "400/class",
        2: "100/class",
        3: "100/class",
        4: "10/class",
        5: "10/class",
    }
    assert list(g.values())[0] == "400/class"
    assert s3.class_groups_from_counts(np.repeat(np.arange(3), 5)) == {}
    assert s3.class_groups_from_counts(np.repeat(np.arange(3), [5, 6, 7])) == {}
    # a near-balanced set where two classes tie by chance has no groups either
    assert s3.class_groups_from_counts(np.repeat(np.arange(4), [91, 102, 102, 77])) == {}


def _png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_s3_figures_are_written(tmp_path, monkeypatch):
    groups = _write_known_captures(tmp_path / "captures")
    caps = tmp_path / "captures"
    figs = tmp_path / "figures"
    # A fake ffmpeg on PATH that records its frame input, to check the MP4 branch.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ffmpeg"
    fake.write_text('#!/bin/sh\nfor a; do out="$a"; done\ncat > "$out"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    f4 = s3.table_f4(caps, groups)
    s3.FIGURES["S3.F4"](f4, [figs / "s3_f4.png", figs / "s3_f4.gif"])
    from PIL import Image

    with Image.open(figs / "s3_f4.gif") as gif:
        assert gif.n_frames == 11
    w, h = _png_size(figs / "s3_f4.png")
    mp4 = (figs / "s3_f4.mp4").read_bytes()  # raw RGB frames as piped to "ffmpeg"
    assert len(mp4) % 11 == 0 and len(mp4) // 11 > 100 * 100 * 3

    for name, df in [
        ("f5", s3.table_f5(caps, groups)),
        ("f7", s3.table_f7(caps, groups)),
        ("f8", s3.table_f8(caps, groups)),
        ("f9", s3.table_f9(caps, None)),
        ("t1", s3.table_t1(caps, groups, D=[0.4, 2])),
        ("t2", s3.table_t2(caps, groups)),
        ("f12", s3.table_f12(caps, groups, ks=[3, 5])),
    ]:
        out = figs / f"s3_{name}.png"
        s3.FIGURES[f"S3.{name.upper()}"](df, [out])
        w, h = _png_size(out)
        assert w > 400 and h > 300, name
    assert not list(figs.glob(".*"))  # no temporary files left behind


def test_s3_registry_builds_from_a_results_tree(tmp_path):
    from tuneatlas.io import write_yaml
    from tuneatlas.studies.registry import build_table

    run_dir = tmp_path / "runs" / "s3-main-s0"
    _write_known_captures(run_dir / "captures")
    write_yaml(_spec(run="s3-main-s0", dataset="imb").to_dict(), run_dir / "spec.yaml")
    (tmp_path / "data" / "imb").mkdir(parents=True)
    train_labels = np.repeat([0, 1, 2], [400, 400, 10])
    pd.DataFrame({"label": train_labels}).to_parquet(tmp_path / "data" / "imb" / "train.parquet")
    # the class table of the `imbalance` transform: the groups as configured
    classes = {"class": [0, 1, 2], "group": [0, 0, 1], "n_train": [400, 400, 10]}
    pd.DataFrame(classes).to_parquet(tmp_path / "data" / "imb" / "classes.parquet")
    # the shape tuneatlas' table rule passes: runs/embeddings of the target + the plan's params
    target = {
        "runs": ["s3-main-s0"],
        "embeddings": [],
        "params": {
            "study": "s3",
            "runs": {"main": "s3-main-s0"},
            "stay_T": 4,
            "stay_D": [0.4, 4],
            "linearity_k": 5,
            "linearity_eps": [0.1],
            "linearity_ks": [3],
        },
    }
    t1 = build_table("S3.T1", target, tmp_path)
    assert sorted(t1["D"].unique()) == [0.4, 4.0]
    assert t1.dropna(subset=["label"]).set_index("label")["group"].to_dict() == {
        0: "400/class",
        1: "400/class",
        2: "10/class",
    }
    # the per-class rows name their class (the task's label names), the all-points row none
    names = get_task("livedoor").label_names
    named = t1.dropna(subset=["label"]).drop_duplicates("label")
    assert named["class_name"].tolist() == [names[int(c)] for c in named["label"]]
    assert t1.loc[t1["label"].isna(), "class_name"].isna().all()
    assert build_table("S3.F12", target, tmp_path)["k"].unique().tolist() == [3]
    # studies.s3.space / speed_points reach the tables
    target["params"].update(space="pca", speed_points="all")
    assert set(build_table("S3.T1", target, tmp_path)["space"]) == {"pca"}
    f9 = build_table("S3.F9", target, tmp_path)
    assert set(f9["space"]) == {"pca"} and set(f9["points"]) == {"all"}
    assert build_table("S3.T2", target, tmp_path)["epsilon"].unique().tolist() == [0.1]
    with pytest.raises(ValueError, match="no 'main' run"):
        s3.TABLES["S3.F9"]({"runs": [], "params": {"runs": {}}}, tmp_path)


def test_s3_f4_f5_read_the_preliminary_run_and_f7_both(tmp_path):
    from tuneatlas.io import write_yaml
    from tuneatlas.studies.registry import build_table

    for run, dataset, counts in [
        ("s3-prelim-s0", "bal", [50, 50, 50]),
        ("s3-main-s0", "imb", [400, 400, 10]),
    ]:
        _write_known_captures(tmp_path / "runs" / run / "captures")
        write_yaml(_spec(run=run, dataset=dataset).to_dict(), tmp_path / "runs" / run / "spec.yaml")
        (tmp_path / "data" / dataset).mkdir(parents=True)
        pd.DataFrame({"label": np.repeat([0, 1, 2], counts)}).to_parquet(
            tmp_path / "data" / dataset / "train.parquet"
        )
    classes = {"class": [0, 1, 2], "group": [0, 0, 1], "n_train": [400, 400, 10]}
    pd.DataFrame(classes).to_parquet(tmp_path / "data" / "imb" / "classes.parquet")

    def target(**runs):
        return {"runs": list(runs.values()), "embeddings": [], "params": {"runs": runs}}

    single = s3.table_f4(tmp_path / "runs" / "s3-prelim-s0" / "captures")
    f4 = build_table("S3.F4", target(prelim="s3-prelim-s0"), tmp_path)
    assert f4["group"].isna().all()  # the balanced run has no size groups
    pd.testing.assert_frame_equal(f4.drop(columns="class_name"), single)
    # "prelim" wins over "main" for F4/F5; without it they read the main run
    both = build_table("S3.F5", target(prelim="s3-prelim-s0", main="s3-main-s0"), tmp_path)
    assert both["group"].isna().all()
    assert build_table("S3.F5", target(main="s3-main-s0"), tmp_path)["group"].notna().all()

    f7 = build_table("S3.F7", target(main="s3-main-s0", prelim="s3-prelim-s0"), tmp_path)
    assert f7["setup"].drop_duplicates().tolist() == ["prelim", "main"]  # the paper's order
    one_run = s3.table_f7(tmp_path / "runs" / "s3-main-s0" / "captures")
    assert f7.groupby("setup").size().to_dict() == {"main": len(one_run), "prelim": len(one_run)}
    assert f7.query("setup == 'prelim'")["group"].isna().all()
    assert f7.query("setup == 'main' and label == 2")["group"].unique().tolist() == ["10/class"]
    out = tmp_path / "s3_f7.png"
    s3.FIGURES["S3.F7"](f7, [out])
    w, h = _png_size(out)
    assert h > 600  # one row of panels per set-up
    alone = build_table("S3.F7", target(main="s3-main-s0"), tmp_path)
    assert alone["setup"].unique().tolist() == ["main"]
