"""S5: member names, ensemble weights against the study's formula, the statistics against direct
computations, clustering and member datasets, the S5.T1 table, and S5's config-time checks."""

from __future__ import annotations

import copy
import itertools
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch

from tests.factories import train_spec
from tuneatlas.analysis import clusters as cl
from tuneatlas.analysis.ensemble import (
    bootstrap_ci,
    bootstrap_indices,
    cbtm_weights,
    combine,
    mcnemar_exact,
    monju_weights,
    oracle_correct,
)
from tuneatlas.analysis.predict import write_predictions
from tuneatlas.config import load_config, validate_config
from tuneatlas.data import members as s5_names
from tuneatlas.engine.recipes.mlm import build_bert
from tuneatlas.errors import ConfigError
from tuneatlas.io import load_tensors
from tuneatlas.models.hub import load_encoder, load_tokenizer
from tuneatlas.plan import make_plan
from tuneatlas.preflight import preflight
from tuneatlas.spec import OptimSpec
from tuneatlas.studies import s5

RUN_ID = re.compile(r"[A-Za-z0-9_.\-]+")  # the Snakefile's wildcard constraint for runs


# --- names -----------------------------------------------------------------------------------
def test_members_of_k3_are_the_study_pairs():
    assert [(m["name"], m["clusters"], m["excluded"]) for m in s5_names.members(3)] == [
        ("ab", ["A", "B"], "C"),
        ("bc", ["B", "C"], "A"),
        ("ca", ["C", "A"], "B"),
    ]


@pytest.mark.parametrize("k", [2, 3, 4, 5, 26, 27, 40])
def test_member_ids_stay_distinct_and_valid_for_any_k(k):
    labels = s5_names.cluster_labels(k)
    assert len(set(labels)) == k
    ms = s5_names.members(k)
    names = [f"s5-{m['name']}" for m in ms]
    assert len(set(names)) == k and all(RUN_ID.fullmatch(n) for n in names)
    # every cluster is left out by exactly one member and seen by the k - 1 others
    assert sorted(m["excluded"] for m in ms) == sorted(labels)
    for m in ms:
        assert sorted([*m["clusters"], m["excluded"]]) == sorted(labels)


# --- weights ---------------------------------------------------------------------------------
D = np.array([[1.0, 2.0, 3.0], [4.0, 0.5, 0.5], [2.0, 2.0, 2.0], [0.0, 0.0, 0.0]])


def test_monju_weights_follow_the_study_formula():
    w = monju_weights(D)
    members = s5_names.members(3)
    for row, (da, db, dc) in enumerate(D):
        total = da + db + dc
        # alpha_AB = d_C / sum, alpha_BC = d_A / sum, alpha_CA = d_B / sum (the poster)
        expected = {"ab": dc, "bc": da, "ca": db} if total else dict.fromkeys("ab bc ca".split(), 1)
        norm = total or 3.0
        for m in members:
            col = s5_names.cluster_labels(3).index(m["excluded"])
            assert w[row, col] == pytest.approx(expected[m["name"]] / norm)
    np.testing.assert_allclose(w.sum(1), 1.0)


def test_cbtm_weights_give_each_member_the_mass_of_the_clusters_it_saw():
    t = 0.7
    w = cbtm_weights(D, t)
    for row, d in enumerate(D):
        p = [math.exp(-x / t) for x in d]
        p = [x / sum(p) for x in p]
        for i in range(3):  # member that missed cluster i: the mass of the other two, halved
            seen = sum(p[j] for j in range(3) if j != i)
            assert w[row, i] == pytest.approx(seen / 2)
    np.testing.assert_allclose(w.sum(1), 1.0)
    # T -> 0: the member that missed the nearest cluster gets nothing; T -> inf: equal weights
    np.testing.assert_allclose(cbtm_weights(D[:1], 1e-6), [[0.0, 0.5, 0.5]], atol=1e-9)
    np.testing.assert_allclose(cbtm_weights(D[:1], 1e9), [[1 / 3] * 3], atol=1e-8)
    with pytest.raises(ValueError, match="temperature"):
        cbtm_weights(D, 0.0)


def test_combine_is_the_weighted_sum_of_logits_or_probs():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 2))
    w = rng.dirichlet(np.ones(3), size=5)
    got = combine(logits, w)
    for n in range(5):
        expected = sum(w[n, m] * logits[m, n] for m in range(3))
        np.testing.assert_allclose(got[n], expected)
    probs = combine(logits, w, "probs")
    for n in range(5):
        soft = [np.exp(logits[m, n]) / np.exp(logits[m, n]).sum() for m in range(3)]
        np.testing.assert_allclose(probs[n], sum(w[n, m] * soft[m] for m in range(3)))
    with pytest.raises(ValueError, match="combine"):
        combine(logits, w, "votes")


def test_oracle_is_right_when_any_member_is():
    preds = np.array([[0, 1, 1, 0], [1, 1, 0, 0]])
    labels = np.array([1, 0, 0, 0])
    assert oracle_correct(preds, labels).tolist() == [True, False, True, True]


# --- statistics ------------------------------------------------------------------------------
def test_mcnemar_matches_a_direct_binomial_sum():
    rng = np.random.default_rng(1)
    a, b = rng.random(60) < 0.8, rng.random(60) < 0.7
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = only_a + only_b
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
    assert mcnemar_exact(a, b) == pytest.approx(min(1.0, 2 * tail))
    assert mcnemar_exact(a, a) == 1.0


def test_bootstrap_interval_is_the_percentile_of_resampled_means():
    rng = np.random.default_rng(2)
    ok = rng.random(50) < 0.6
    idx = bootstrap_indices(50, 400, seed=3)
    means = sorted(float(np.mean([ok[i] for i in row])) for row in idx)
    lo, hi = bootstrap_ci(ok, idx)
    assert lo == pytest.approx(np.quantile(means, 0.025)) and hi == pytest.approx(
        np.quantile(means, 0.975)
    )
    assert lo < ok.mean() < hi
    # paired: a model against itself differs by exactly 0 on every resample
    assert bootstrap_ci(ok.astype(float) - ok, idx) == (0.0, 0.0)
    np.testing.assert_array_equal(idx, bootstrap_indices(50, 400, seed=3))  # seeded


# --- clustering and member datasets ----------------------------------------------------------
def _split(n: int, seed: int, start: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    words = ["good fine great", "bad awful poor", "film plot actor", "music song band"]
    rows = []
    for i in range(n):
        topic = int(rng.integers(4))
        text = " ".join(rng.choice(words[topic].split(), 4))
        rows.append((start + i, text, None, int(topic < 2)))
    return pd.DataFrame(rows, columns=["idx", "text_a", "text_b", "label"])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("s5")
    data = root / "data"
    data.mkdir()
    for name, n, seed, start in (("train", 90, 0, 0), ("valid", 20, 1, 500), ("test", 30, 2, 900)):
        _split(n, seed, start).to_parquet(data / f"{name}.parquet")
    texts = pd.concat([pd.read_parquet(p) for p in data.glob("*.parquet")])["text_a"].tolist()
    cfg = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, vocab_size=60)
    base = build_bert(cfg, texts, root / "base", seed=0)
    spec = {
        "k": 3,
        "method": "kmeans",
        "seed": 0,
        "pooling": "cls",
        "max_length": 16,
        "batch_size": 32,
        "embedder": "base",
    }
    cl.cluster_dataset(spec, data, base, root / "clusters")
    return {"root": root, "data": data, "base": base, "clusters": root / "clusters", "spec": spec}


def test_clustering_records_distances_of_every_split_and_its_embedder(world):
    assignments, info = cl.read_assignments(world["clusters"])
    assert info["k"] == 3 and info["embedder"] == "base" and info["pooling"] == "cls"
    assert sorted(assignments["split"].unique()) == ["test", "train", "valid"]
    dist = assignments[["d_A", "d_B", "d_C"]].to_numpy()
    train = assignments[assignments["split"] == "train"]
    assert sum(info["train_sizes"].values()) == len(train) == 90
    # held-out inputs are assigned to their nearest centre
    held = assignments[assignments["split"] != "train"]
    nearest = np.array(["A", "B", "C"])[held[["d_A", "d_B", "d_C"]].to_numpy().argmin(1)]
    assert (held["cluster"].to_numpy() == nearest).all()
    assert (dist >= 0).all()
    # the distances are those of the saved centres to a fresh embedding of the same inputs
    test = pd.read_parquet(world["data"] / "test.parquet")
    emb = cl.embed_texts(
        load_encoder(world["base"]),
        load_tokenizer(world["base"]),
        test["text_a"].tolist(),
        None,
        "cls",
        16,
        7,
        torch.device("cpu"),
    )
    centres = load_tensors(world["clusters"] / cl.CENTRES_FILE)["centres"]
    direct = np.linalg.norm(emb[:, None, :] - centres[None].astype(np.float64), axis=2)
    got = assignments[assignments["split"] == "test"][["d_A", "d_B", "d_C"]].to_numpy()
    np.testing.assert_allclose(got, direct, rtol=1e-4, atol=1e-4)


def test_clustering_is_deterministic(world, tmp_path):
    cl.cluster_dataset(world["spec"], world["data"], world["base"], tmp_path / "again")
    a, _ = cl.read_assignments(world["clusters"])
    b, _ = cl.read_assignments(tmp_path / "again")
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_gmm_clustering_and_too_many_clusters(world, tmp_path):
    cl.cluster_dataset(
        {**world["spec"], "method": "gmm"}, world["data"], world["base"], tmp_path / "gmm"
    )
    _, info = cl.read_assignments(tmp_path / "gmm")
    assert info["method"] == "gmm" and sum(info["train_sizes"].values()) == 90
    with pytest.raises(ValueError, match=r"studies\.s5\.k: 100 clusters need at least 100"):
        cl.fit_clusters(np.zeros((90, 4), np.float32), 100, "kmeans", 0)


def test_member_datasets_partition_the_training_rows(world, tmp_path):
    assignments, _ = cl.read_assignments(world["clusters"])
    seen = []
    for m in s5_names.members(3):
        out = tmp_path / m["name"]
        counts = cl.derive_member_dataset(world["data"], world["clusters"], m["clusters"], out)
        train = pd.read_parquet(out / "train.parquet")
        expected = assignments[
            (assignments["split"] == "train") & assignments["cluster"].isin(m["clusters"])
        ]["idx"]
        assert train["idx"].tolist() == expected.tolist() and counts["train"] == len(train)
        for split in ("valid", "test"):  # held-out splits are untouched copies
            pd.testing.assert_frame_equal(
                pd.read_parquet(out / f"{split}.parquet"),
                pd.read_parquet(world["data"] / f"{split}.parquet"),
            )
        seen += train["idx"].tolist()
    # k = 3: each training row is seen by exactly two members
    assert set(pd.Series(seen).value_counts()) == {2}
    with pytest.raises(ValueError, match=r"clusters \['Z'\]"):
        cl.derive_member_dataset(world["data"], world["clusters"], ["Z"], tmp_path / "z")


def test_predictions_match_the_runs_own_test_score(world, tmp_path):
    from tuneatlas.engine.recipes.finetune import finetune

    spec = train_spec(run="m", model="b", optim=OptimSpec(lr=3e-3))
    finetune(spec, world["data"], world["base"], tmp_path / "run")
    df = write_predictions(tmp_path / "run" / "model", world["data"], tmp_path / "p.parquet")
    assert set(df["split"]) == {"valid", "test"}
    ev = pd.read_parquet(tmp_path / "run" / "eval.parquet")
    for split in ("valid", "test"):
        own = ev[(ev.metric == "accuracy") & (ev.split == split)]["value"].item()
        rows = df[df["split"] == split]
        assert (rows["pred"] == rows["label"]).mean() == pytest.approx(own)
        assert (
            rows["idx"].tolist()
            == pd.read_parquet(world["data"] / f"{split}.parquet")["idx"].tolist()
        )


# --- the S5.T1 table -------------------------------------------------------------------------
def _fake_results(root, n=40, seed=0):
    """Hand-made predictions of 2 seed and 3 cluster members and a clustering's distances."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    idx = np.arange(n) + 1000
    members = [{"run": "s5-all-s0", "kind": "seed"}, {"run": "s5-all-s1", "kind": "seed"}]
    members += [{"run": f"s5-{m['name']}", "kind": "cluster", **m} for m in s5_names.members(3)]
    logits = {}
    for m in members:
        lg = rng.normal(size=(n, 2)) + 1.5 * np.eye(2)[labels] * rng.random((n, 1))
        logits[m["run"]] = lg
        frame = pd.DataFrame(
            {
                "split": "test",
                "row": np.arange(n),
                "idx": idx,
                "label": labels,
                "logit_0": lg[:, 0],
                "logit_1": lg[:, 1],
                "pred": lg.argmax(1),
            }
        )
        (root / "runs" / m["run"]).mkdir(parents=True)
        frame.to_parquet(root / "runs" / m["run"] / "predictions.parquet")
    d = rng.random((n, 3)) * 5
    assign = pd.DataFrame(
        {
            "split": "test",
            "row": np.arange(n),
            "idx": idx,
            "label": labels,
            "cluster": np.array(["A", "B", "C"])[d.argmin(1)],
            "d_A": d[:, 0],
            "d_B": d[:, 1],
            "d_C": d[:, 2],
        }
    )
    (root / "clusters" / "s5").mkdir(parents=True)
    assign.to_parquet(root / "clusters" / "s5" / cl.ASSIGNMENTS_FILE)
    info = {"clusters": ["A", "B", "C"], "train_sizes": {"A": 10, "B": 20, "C": 30}}
    (root / "clusters" / "s5" / cl.EMBEDDER_FILE).write_text(json.dumps(info))
    spec = {
        "params": {
            "members": members,
            "clustering": "s5",
            "eval_split": "test",
            "combine": "logits",
            "temperature": 2.0,
            "bootstrap": 200,
            "bootstrap_seed": 0,
        }
    }
    return spec, labels, logits, d


def test_s5_t1_ensembles_equal_a_per_example_computation(tmp_path):
    spec, labels, logits, d = _fake_results(tmp_path)
    df = s5.table_t1(spec, tmp_path).set_index("model")
    n = len(labels)

    def acc(pred):
        return float(np.mean(np.asarray(pred) == labels))

    seed_pred = [
        int(np.argmax((logits["s5-all-s0"][i] + logits["s5-all-s1"][i]) / 2)) for i in range(n)
    ]
    # Monju, written out as on the poster: alpha_AB = d_C / sum, alpha_BC = d_A, alpha_CA = d_B
    monju_pred = []
    for i in range(n):
        da, db, dc = d[i]
        s = dc * logits["s5-ab"][i] + da * logits["s5-bc"][i] + db * logits["s5-ca"][i]
        monju_pred.append(int(np.argmax(s / (da + db + dc))))
    assert df.loc["ensemble-seeds", "value"] == pytest.approx(acc(seed_pred))
    assert df.loc["ensemble-monju", "value"] == pytest.approx(acc(monju_pred))
    for run, lg in logits.items():
        assert df.loc[run, "value"] == pytest.approx(acc(lg.argmax(1)))
    assert df.loc["s5-ab", "train_examples"] == 30 and df.loc["s5-bc", "train_examples"] == 50
    assert df.loc["s5-all-s0", "train_examples"] == 60
    assert pd.isna(df.loc["ensemble-seeds", "p_value"])
    monju_ok = np.array(monju_pred) == labels
    seed_ok = np.array(seed_pred) == labels
    assert df.loc["ensemble-monju", "p_value"] == pytest.approx(mcnemar_exact(monju_ok, seed_ok))
    assert df.loc["ensemble-monju", "delta_vs_seed"] == pytest.approx(
        acc(monju_pred) - acc(seed_pred)
    )
    oracle = [
        any(logits[r][i].argmax() == labels[i] for r in ("s5-ab", "s5-bc", "s5-ca"))
        for i in range(n)
    ]
    assert df.loc["oracle-clusters", "value"] == pytest.approx(np.mean(oracle))
    assert (df["ci_low"] <= df["value"]).all() and (df["value"] <= df["ci_high"]).all()


def test_s5_t1_refuses_members_evaluated_on_different_examples(tmp_path):
    spec, *_ = _fake_results(tmp_path)
    path = tmp_path / "runs" / "s5-bc" / "predictions.parquet"
    df = pd.read_parquet(path)
    df.loc[0, "idx"] = -1
    df.to_parquet(path)
    with pytest.raises(ValueError, match="s5-bc.*differ"):
        s5.table_t1(spec, tmp_path)


# --- config-time checks ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy(repo):
    return load_config(repo / "config.yaml")


def _with_s5(config, **s5_keys):
    raw = copy.deepcopy(config)
    raw["studies"]["s5"].update(s5_keys)
    return raw


def test_toy_plan_has_members_on_derived_datasets(toy):
    plan = make_plan(toy)
    names = sorted(r for r, run in plan.runs.items() if run.study == "s5")
    assert names == ["s5-ab", "s5-all-s0", "s5-all-s1", "s5-all-s2", "s5-bc", "s5-ca"]
    specs = [plan.runs[r].spec for r in names]
    for a, b in itertools.combinations(specs, 2):
        assert {**a, "run": ""} != {**b, "run": ""}  # six different runs, not copies
    assert plan.datasets["sst2-ca"] == {
        "source": "clusters",
        "task": "sst2",
        "base": "sst2",
        "clustering": "s5",
        "clusters": ["C", "A"],
    }


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"k": 4000}, r"studies\.s5\.k': 4000 clusters exceed the 3000 training examples"),
        ({"dataset": "stsb"}, r"studies\.s5\.dataset'.*regression"),
        ({"embedder": {"model": "nope"}}, r"studies\.s5\.embedder\.model': unknown model 'nope'"),
        ({"k": 1}, r"studies\.s5\.k"),
        ({"eval_split": "train"}, r"studies\.s5\.eval_split"),
        ({"temperature": 0}, r"studies\.s5\.temperature"),
    ],
)
def test_bad_s5_config_names_the_key(toy, keys, message):
    with pytest.raises(ConfigError, match=message):
        config = validate_config(_with_s5(toy, **keys))
        preflight(config, make_plan(config), check_device=False)


def test_a_dataset_named_like_a_member_dataset_is_refused(toy):
    raw = copy.deepcopy(toy)
    raw["datasets"]["sst2-ab"] = copy.deepcopy(raw["datasets"]["sst2"])
    with pytest.raises(ConfigError, match=r"datasets\.sst2-ab'.*taken by S5"):
        make_plan(validate_config(raw))


def test_k_is_checked_against_a_local_training_file(toy, tmp_path):
    train = tmp_path / "train.tsv"
    train.write_text("sentence\tlabel\n" + "".join(f"s{i} good\t{i % 2}\n" for i in range(5)))
    raw = copy.deepcopy(toy)
    raw["datasets"]["mine"] = {"source": "file", "task": "sst2", "files": {"train": str(train)}}
    raw["studies"]["s5"].update(dataset="mine", k=6)
    config = validate_config(raw)
    with pytest.raises(ConfigError, match=r"studies\.s5\.k': 6 clusters exceed the 5 training"):
        preflight(config, make_plan(config), check_device=False)  # the plan reads no file
    raw["studies"]["s5"]["k"] = 5
    config = validate_config(raw)
    preflight(config, make_plan(config), check_device=False)


# --- tf-idf embedder, member step budget, weight spread (issue 19) ---------------------------
TOPICS = {  # three topics whose sentences share words within a topic, "the" across topics
    0: [
        "goal striker penalty match",
        "the striker scores a goal in the match",
        "penalty goal saved by the keeper in the match",
    ],
    1: [
        "bank rates inflation economy",
        "the bank raises rates as inflation grows",
        "inflation slows the economy and the bank cuts rates",
    ],
    2: [
        "bread oven dough bake",
        "bake the bread dough in the oven",
        "the oven bakes bread from flour and dough",
    ],
}


def test_tfidf_embedder_clusters_a_hand_made_corpus_by_topic(tmp_path):
    """Nine sentences on three topics (football, rates, baking) that share words only within a
    topic: tf-idf + SVD + k-means puts each topic in one cluster of its own."""
    rows = [
        (i, text, None, t % 2)
        for i, (t, text) in enumerate((t, s) for t, texts in TOPICS.items() for s in texts)
    ]
    data = tmp_path / "data"
    data.mkdir()
    frame = pd.DataFrame(rows, columns=["idx", "text_a", "text_b", "label"])
    frame.to_parquet(data / "train.parquet")
    test = pd.DataFrame(
        [(100, "a goal from the penalty spot", None, 0), (101, "rates at the bank", None, 1)],
        columns=["idx", "text_a", "text_b", "label"],
    )
    test.to_parquet(data / "test.parquet")
    spec = {"kind": "tfidf", "svd_dims": 3, "k": 3, "method": "kmeans", "seed": 0}
    cl.cluster_dataset(spec, data, None, tmp_path / "clusters")
    assignments, info = cl.read_assignments(tmp_path / "clusters")
    assert info["embedder"] == "tfidf" and info["svd_dims"] == 3 and info["dims"] == 3
    train = assignments[assignments["split"] == "train"]
    topic = [t for t, texts in TOPICS.items() for _ in texts]
    clusters = train["cluster"].tolist()
    # one cluster per topic: the partitions agree up to the cluster names
    assert len({(t, c) for t, c in zip(topic, clusters, strict=True)}) == 3
    assert len(set(clusters)) == 3
    held = assignments[assignments["split"] == "test"].set_index("idx")["cluster"]
    assert held[100] == clusters[0] and held[101] == clusters[3]  # football, rates
    with pytest.raises(ValueError, match=r"studies\.s5\.embedder\.svd_dims: 9"):
        cl.cluster_dataset({**spec, "svd_dims": 9}, data, None, tmp_path / "too-many")


def test_members_train_as_many_steps_as_a_seed_model_by_default(toy):
    from tuneatlas.engine.loop import plan_steps

    plan = make_plan(toy)
    assert toy["studies"]["s5"]["member_steps"] == "seed"
    assert plan.runs["s5-ab"].spec["steps_from"] == "source"
    assert "steps_from" not in plan.runs["s5-all-s0"].spec  # seed models: their own rows
    epochs = make_plan(validate_config(_with_s5(toy, member_steps="epochs")))
    assert "steps_from" not in epochs.runs["s5-ab"].spec
    spec = train_spec(run="m", task="sst2", dataset="d", model="m", batch_size=32, epochs=2)
    # a member on 1,000 of the 2,400 rows: 32 steps per epoch over its rows, the 150 of a
    # seed model in all (2 x ceil(2400 / 32)) instead of its own 64
    assert plan_steps(spec, 1000, 2400) == (32, 150)
    assert plan_steps(spec, 1000) == (32, 64)


def test_weight_spread_shows_how_far_weights_are_from_equal():
    w = np.array([[0.3, 0.3, 0.4], [0.2, 0.5, 0.3]])
    scores_eq = np.array([[1.0, 0.0], [0.0, 1.0]])
    got = s5.weight_spread(w, np.array([0, 0]), scores_eq)
    assert got["weight_min"] == 0.2 and got["weight_max"] == 0.5
    assert got["weight_max_dev_uniform"] == pytest.approx(0.5 - 1 / 3)
    assert got["same_as_uniform"] == 0.5  # the second input's prediction changed


def test_s5_t1_reports_the_weight_spread_of_each_ensemble(tmp_path):
    spec, labels, logits, d = _fake_results(tmp_path)
    df = s5.table_t1(spec, tmp_path).set_index("model")
    w = monju_weights(d)
    assert df.loc["ensemble-monju", "weight_min"] == pytest.approx(w.min())
    assert df.loc["ensemble-monju", "weight_max"] == pytest.approx(w.max())
    members = ("s5-bc", "s5-ca", "s5-ab")  # the members that missed A, B, C
    plain = sum(logits[m] for m in members).argmax(1)
    monju = sum(w[:, i, None] * logits[m] for i, m in enumerate(members)).argmax(1)
    assert df.loc["ensemble-monju", "same_as_uniform"] == pytest.approx(np.mean(plain == monju))
    assert df.loc["ensemble-seeds", "weight_max_dev_uniform"] == pytest.approx(0.0)
    assert df.loc["ensemble-cbtm-style", "members"].startswith("ours, not c-BTM")
    assert df.loc["s5-ab", ["weight_min", "same_as_uniform"]].isna().all()
