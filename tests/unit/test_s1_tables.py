"""S1 table builders on a hand-made results tree: schema, baselines and rankings checked
against direct numpy computations of the masked head. The subset tables aggregate the runs'
subset scans (`results/subsets/<run>/`, written here by the `subsets` rule's entry point)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from tests.factories import train_spec
from tuneatlas.analysis.subsets.scan import scan_run
from tuneatlas.catalogue import ARTIFACTS
from tuneatlas.io import save_tensors, write_yaml
from tuneatlas.plan import _s1_scan_spec
from tuneatlas.studies.registry import build_table
from tuneatlas.studies.s1 import run_spec

K, LAYERS = 8, 3


def _fake_run(results, run, dataset, task, seed, rng, dropout=0.1, informative=(1, 5)):
    """Embeddings whose labels depend on two planted dimensions, and a head that reads them."""
    tensors = {}
    for split, n in (("valid", 120), ("test", 100)):
        h = rng.normal(size=(LAYERS + 1, n, K)).astype(np.float32)
        score = h[-1][:, informative[0]] - h[-1][:, informative[1]]
        tensors[f"{split}.cls"] = h
        tensors[f"{split}.labels"] = (score + 0.3 * rng.normal(size=n) > 0).astype(np.int64)
    w = np.zeros((2, K), dtype=np.float32)
    w[1, informative[0]], w[1, informative[1]] = 1.0, -1.0
    w[1] += 0.05 * rng.normal(size=K).astype(np.float32)
    tensors["head.weight"], tensors["head.bias"] = w, np.zeros(2, dtype=np.float32)
    save_tensors(tensors, results / "embeddings" / run / "embeddings.safetensors")
    spec = train_spec(run=run, task=task, dataset=dataset, seed=seed, dropout=dropout)
    write_yaml(spec.to_dict(), results / "runs" / run / "spec.yaml")
    return tensors


def _masked_accuracy(tensors, split, dims):
    h = tensors[f"{split}.cls"][-1]
    mask = np.zeros(K, dtype=np.float32)
    mask[list(dims)] = 1
    logits = (h * mask) @ tensors["head.weight"].T + tensors["head.bias"]
    return float((logits.argmax(1) == tensors[f"{split}.labels"]).mean())


SUBSETS = {
    "top_k": 3,
    "pair_rate": 0.5,
    "pair_rate_large": 0.1,
    "large_datasets": [],
    "triple_sample_sizes": [20, 5],
    "exhaustive_triples": True,
    "effective_top": 4,
    "histogram_bins": 10,
}


def _scan(results, run, triples=True, layers=True):
    """What the `subsets` rule does for `run`, with the spec the plan gives it."""
    s1 = {"subsets": SUBSETS, "layers": {"pairs_per_layer": None}}
    spec = _s1_scan_spec(run_spec(results, run), s1, triples, layers)
    scan_run(results / "embeddings" / run, spec, results / "subsets" / run)


@pytest.fixture
def tree(tmp_path):
    rng = np.random.default_rng(0)
    main = _fake_run(tmp_path, "r-main", "sst2", "sst2", 42, rng)
    _fake_run(tmp_path, "r-nodrop", "sst2", "sst2", 42, rng, dropout=0.0)
    _scan(tmp_path, "r-main")
    _scan(tmp_path, "r-nodrop", triples=False, layers=False)  # S1.FA3 only, as planned
    return tmp_path, main


def _spec(*runs, **params):
    return {
        "runs": [],
        "embeddings": [],
        "subsets": list(runs),
        "params": {
            "datasets": ["sst2"],
            "subsets": SUBSETS,
            "layers": {"pairs_per_layer": None},
            **params,
        },
    }


def test_t2_pairs_match_the_masked_head(tree):
    results, tensors = tree
    df = build_table("S1.T2", _spec("r-main"), results)
    assert set(ARTIFACTS["S1.T2"].columns) <= set(df.columns)
    all_test = df[(df["mode"] == "all") & (df["split"] == "test")]["value"].item()
    assert all_test == pytest.approx(_masked_accuracy(tensors, "test", range(K)))
    exhaustive = df[df["mode"] == "exhaustive"]
    # rank 1 on valid is the best of every pair, computed directly
    pairs = list(itertools.combinations(range(K), 2))
    direct = {p: _masked_accuracy(tensors, "valid", p) for p in pairs}
    best = max(pairs, key=lambda p: (direct[p], [-d for d in p]))
    top = exhaustive[(exhaustive["rank"] == 1)].set_index("split")
    assert top.loc["valid", "dims"] == f"{best[0]},{best[1]}"
    assert top.loc["valid", "value"] == pytest.approx(direct[best])
    assert top.loc["test", "value"] == pytest.approx(_masked_accuracy(tensors, "test", best))
    assert set(exhaustive["sample_size"]) == {len(pairs)}
    sampled = df[df["mode"] == "sampled"]
    assert set(sampled["sample_size"]) == {len(pairs) // 2}
    assert sampled[sampled["split"] == "valid"]["value"].max() <= direct[best] + 1e-12


def test_ta1_triples_at_each_sample_size_and_exhaustive(tree):
    results, tensors = tree
    df = build_table("S1.TA1", _spec("r-main"), results)
    assert set(df[df["mode"] == "sampled"]["sample_size"]) == {20, 5}
    ex = df[(df["mode"] == "exhaustive") & (df["split"] == "valid")].sort_values("rank")
    assert list(ex["rank"]) == [1, 2, 3]
    assert ex["value"].is_monotonic_decreasing
    dims = tuple(int(d) for d in ex["dims"].iloc[0].split(","))
    assert ex["value"].iloc[0] == pytest.approx(_masked_accuracy(tensors, "valid", dims))
    # in_paper: the paper sampled triples (no exhaustive scan); for its large tasks only 752/75
    assert df.groupby("mode")["in_paper"].all().to_dict() == {
        "all": True,
        "exhaustive": False,
        "sampled": True,
    }
    large = {**SUBSETS, "large_datasets": ["sst2"], "triple_sample_sizes_large": [5]}
    df = build_table("S1.TA1", {**_spec("r-main"), "params": {"subsets": large}}, results)
    sampled = df[df["mode"] == "sampled"].groupby("sample_size")["in_paper"].all()
    assert sampled.to_dict() == {5: True, 20: False}


def test_t3_effective_pair_recovers_the_planted_dimensions(tree):
    results, _ = tree
    df = build_table("S1.T3", _spec("r-main"), results)
    best = df[df["kind"] == "best_effective_pair"]
    assert set(best["split"]) == {"valid", "test"}
    assert best["dims"].iloc[0] == "1,5"
    ablation = df[df["kind"] == "ablation"]
    assert len(ablation) == 3 * SUBSETS["effective_top"]


def test_fa3_histograms_count_every_pair_per_dropout(tree):
    results, _ = tree
    df = build_table("S1.FA3", _spec("r-main", "r-nodrop"), results)
    counts = df.groupby(["dropout", "split"])["count"].sum()
    assert set(counts) == {K * (K - 1) // 2}
    assert set(df["dropout"]) == {0.0, 0.1}


def test_fl_scores_every_layer(tree):
    results, tensors = tree
    df = build_table("S1.FL", _spec("r-main"), results)
    assert sorted(df["layer"].unique()) == list(range(LAYERS + 1))
    last = df[(df["layer"] == LAYERS) & (df["split"] == "valid")].set_index("stat")["value"]
    assert last["all_dims"] == pytest.approx(_masked_accuracy(tensors, "valid", range(K)))
    pairs = [_masked_accuracy(tensors, "valid", p) for p in itertools.combinations(range(K), 2)]
    assert last["max"] == pytest.approx(max(pairs))
    assert last["mean"] == pytest.approx(np.mean(pairs))


def test_plots_draw_from_the_tables(tree, tmp_path):
    from tuneatlas.studies.registry import plot_artifact

    results, _ = tree
    for artifact, runs in (
        ("S1.T2", ["r-main"]),
        ("S1.TA1", ["r-main"]),
        ("S1.T3", ["r-main"]),
        ("S1.FA3", ["r-main", "r-nodrop"]),
        ("S1.FL", ["r-main"]),
    ):
        table = tmp_path / f"{artifact}.parquet"
        build_table(artifact, _spec(*runs), results).to_parquet(table)
        png = tmp_path / f"{artifact}.png"
        plot_artifact(artifact, table, [png])
        assert png.stat().st_size > 5000
        assert isinstance(pd.read_parquet(table), pd.DataFrame)


def test_subset_tables_read_the_scans_not_the_embeddings(tree):
    import shutil

    results, _ = tree
    before = {a: build_table(a, _spec("r-main"), results) for a in ("S1.T2", "S1.TA1", "S1.T3")}
    shutil.rmtree(results / "embeddings")  # a table job never searches: the scans suffice
    for artifact, table in before.items():
        pd.testing.assert_frame_equal(build_table(artifact, _spec("r-main"), results), table)
    assert len(build_table("S1.FA3", _spec("r-main", "r-nodrop"), results)) > 0
    assert len(build_table("S1.FL", _spec("r-main"), results)) > 0
    with pytest.raises(ValueError, match="no triples"):  # the no-dropout scan has pairs only
        build_table("S1.TA1", _spec("r-nodrop"), results)
