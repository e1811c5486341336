"""The per-run subset scan (`subsets` rule): its files equal direct calls of the searches, it
reads embeddings lazily, T3 falls back to the largest sample, the CLI writes every file, and
S1.FL marks a layer whose pairs all tie."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from tests.factories import train_spec
from tuneatlas.analysis.subsets.effective import (
    DEGENERATE_STD,
    effective_dimensions,
    layer_redundancy,
)
from tuneatlas.analysis.subsets.kernels import histogram_edges, score_histogram
from tuneatlas.analysis.subsets.scan import scan_run, validate_spec
from tuneatlas.analysis.subsets.scan_files import SCAN_FILES, read_scan
from tuneatlas.analysis.subsets.scorer import SubsetScorer
from tuneatlas.analysis.subsets.search import search_subsets
from tuneatlas.io import read_parquet_meta, save_tensors, write_yaml

K, LAYERS = 9, 2  # C(9, 2) = 36 pairs, C(9, 3) = 84 triples; layers 0..2
CASES = {  # task -> (classes of the head, regression)
    "sst2": (2, False),
    "mnli": (3, False),
    "stsb": (1, True),
}


def make_embeddings(path, task, seed=0, constant_layer=None):
    """Random `[L+1, N, K]` CLS vectors whose labels follow dims 1 and 5 of the last layer."""
    n_classes, regression = CASES[task]
    rng = np.random.default_rng(seed)
    tensors = {}
    for split, n in (("valid", 120), ("test", 90)):
        h = rng.normal(size=(LAYERS + 1, n, K)).astype(np.float32)
        if constant_layer is not None:
            h[constant_layer] = 0.01  # every example the same, tiny next to the head's bias
        s = h[-1][:, 1] - h[-1][:, 5] + 0.4 * rng.normal(size=n)
        if regression:
            y = s.astype(np.float32)
        elif n_classes == 2:
            y = (s > 0).astype(np.int64)
        else:
            y = np.digitize(s, [-0.5, 0.5]).astype(np.int64)
        tensors[f"{split}.cls"], tensors[f"{split}.labels"] = h, y
    c = 1 if regression else n_classes
    w = (0.3 * rng.normal(size=(c, K))).astype(np.float32)
    w[-1, 1] += 1.0
    w[-1, 5] -= 1.0
    b = np.zeros(c, dtype=np.float32)
    if constant_layer is not None:
        b[-1] = 1.0
    tensors["head.weight"], tensors["head.bias"] = w, b
    save_tensors(tensors, path, metadata={"task": task, "regression": str(regression)})
    return tensors


def spec_for(task, **kw):
    spec = {
        "task": task,
        "seed": 3,
        "top_k": 3,
        "effective_top": 4,
        "pair_rate": 0.5,
        "histogram_bins": 10,
        "triples": {"exhaustive": True, "sample_sizes": [30, 200, 7]},
        "layers": {"pairs_per_layer": None},
    }
    spec.update(kw)
    return spec


def scorers(tensors, task, layer=-1):
    n_classes, regression = CASES[task]
    metric = "pearson" if regression else "accuracy"
    return [
        SubsetScorer(
            tensors[f"{split}.cls"][layer],
            tensors[f"{split}.labels"],
            tensors["head.weight"],
            tensors["head.bias"],
            metric,
            regression=regression,
        )
        for split in ("valid", "test")
    ]


def _top(frame, search):
    rows = frame[frame["search"] == search]
    valid = rows[rows["split"] == "valid"].sort_values("rank")
    test = rows[rows["split"] == "test"].sort_values("rank")
    assert list(valid["dims"]) == list(test["dims"])
    return list(valid["dims"]), valid["value"].to_numpy(), test["value"].to_numpy()


def _expect(found, k):
    dims = [",".join(str(int(d)) for d in row) for row in found.dims[:k]]
    return dims, found.valid[:k], found.test[:k]


@pytest.mark.parametrize("task", list(CASES))
def test_scan_files_equal_direct_searches(tmp_path, task):
    tensors = make_embeddings(tmp_path / "e.safetensors", task)
    frames = scan_run(tmp_path / "e.safetensors", spec_for(task), tmp_path / "subsets" / "r")
    assert {f"{k}.parquet" for k in frames} == set(SCAN_FILES)
    on_disk = read_scan(tmp_path, "r")
    for stem, frame in frames.items():
        pd.testing.assert_frame_equal(on_disk[stem], frame, check_dtype=False)
    valid, test = scorers(tensors, task)
    k, bins, seed = 4, 10, 3  # max(top_k, effective_top)

    summary = frames["summary"].set_index("split")
    assert summary.loc["valid", "all_dims"] == valid.score_all_dims()
    assert summary.loc["test", "all_dims"] == test.score_all_dims()
    assert summary.loc["valid", "n_dims"] == K

    top = frames["top"]
    expected = [
        search_subsets(valid, 2, k=k, test=test, bins=bins),
        search_subsets(valid, 2, k=k, test=test, n_samples=18, seed=seed, bins=bins),
        search_subsets(valid, 3, k=k, test=test, bins=bins),
        search_subsets(valid, 3, k=k, test=test, n_samples=30, seed=seed, bins=bins),
        search_subsets(valid, 3, k=k, test=test, n_samples=84, seed=seed, bins=bins),
        search_subsets(valid, 3, k=k, test=test, n_samples=7, seed=seed, bins=bins),
    ]
    assert sorted(top["search"].unique()) == list(range(len(expected)))
    for sid, found in enumerate(expected):
        dims, v, t = _top(top, sid)
        e_dims, e_v, e_t = _expect(found, k)
        assert dims == e_dims, sid
        np.testing.assert_array_equal(v, e_v)
        np.testing.assert_array_equal(t, e_t)
        rows = top[top["search"] == sid]
        assert set(rows["sample_size"]) == {found.n_evaluated}
        assert set(rows["mode"]) == {"exhaustive" if found.exhaustive else "sampled"}
        hist = frames["histograms"]
        h = hist[(hist["search"] == sid) & (hist["split"] == "valid")]
        np.testing.assert_array_equal(h["count"], found.counts)
        np.testing.assert_array_equal(h["bin_left"], found.edges[:-1])
    # all pairs on test, for S1.FA3
    hist = frames["histograms"]
    h = hist[(hist["search"] == 0) & (hist["split"] == "test")]
    edges = histogram_edges(valid.metric, bins)
    np.testing.assert_array_equal(h["count"], score_histogram(test.pair_scores(), edges))
    assert h["count"].sum() == math.comb(K, 2)

    # S1.T3 from the exhaustive triples
    eff = effective_dimensions(valid, expected[2].dims[:4], test=test)
    got = frames["effective"]
    assert set(got["search"]) == {2}
    ablation = got[got["kind"] == "ablation"]
    np.testing.assert_array_equal(ablation["value"], eff.ablation["pair_valid"])
    np.testing.assert_array_equal(ablation["drop"], eff.ablation["drop"])
    assert list(ablation["effective"]) == list(eff.ablation["effective"])
    best = got[got["kind"] == "best_effective_pair"].set_index("split")
    assert best.loc["valid", "dims"] == ",".join(map(str, eff.best_pair))
    assert best.loc["valid", "value"] == eff.best_valid
    assert best.loc["test", "value"] == eff.best_test
    assert best.loc["test", "effective_dims"] == ",".join(map(str, eff.effective))

    # S1.FL on every layer
    direct = layer_redundancy(
        tensors["valid.cls"],
        tensors["valid.labels"],
        tensors["head.weight"],
        tensors["head.bias"],
        valid.metric,
        regression=valid.regression,
        layers_test=tensors["test.cls"],
        labels_test=tensors["test.labels"],
        seed=seed,
    )
    direct["best_dims"] = [",".join(map(str, d)) for d in direct["best_dims"]]
    pd.testing.assert_frame_equal(frames["layers"], direct, check_exact=True)


class _Recorder:
    """Wraps safetensors.safe_open: records what is read, refuses to load a whole `.cls`."""

    log: list[tuple[str, object]] = []

    def __init__(self, real, *args, **kwargs):
        self._f = real(*args, **kwargs)

    def __enter__(self):
        self._inner = self._f.__enter__()
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)

    def keys(self):
        return self._inner.keys()

    def metadata(self):
        return self._inner.metadata()

    def get_tensor(self, key):
        assert not key.endswith(".cls"), f"loaded the whole {key}"
        _Recorder.log.append((key, None))
        return self._inner.get_tensor(key)

    def get_slice(self, key):
        inner = self._inner.get_slice(key)

        class Slice:
            def get_shape(self):
                return inner.get_shape()

            def __getitem__(self, index):
                _Recorder.log.append((key, index))
                return inner[index]

        return Slice()


@pytest.fixture
def recorder(monkeypatch):
    import safetensors

    real = safetensors.safe_open
    _Recorder.log = []
    monkeypatch.setattr(safetensors, "safe_open", lambda *a, **k: _Recorder(real, *a, **k))
    return _Recorder.log


def test_scan_reads_only_the_last_layer_without_fl(tmp_path, recorder):
    make_embeddings(tmp_path / "e.safetensors", "sst2")
    frames = scan_run(tmp_path / "e.safetensors", spec_for("sst2", layers=None))
    assert frames["layers"].empty
    cls = sorted({r for r in recorder if r[0].endswith(".cls")})
    assert cls == [("test.cls", LAYERS), ("valid.cls", LAYERS)]
    assert {k for k, _ in recorder} == {
        "head.weight",
        "head.bias",
        "valid.labels",
        "test.labels",
        "valid.cls",
        "test.cls",
    }


def test_scan_reads_fl_layers_one_at_a_time(tmp_path, recorder):
    make_embeddings(tmp_path / "e.safetensors", "sst2")
    scan_run(tmp_path / "e.safetensors", spec_for("sst2", triples=None))
    cls = {r for r in recorder if r[0].endswith(".cls")}
    assert cls == {(s, i) for s in ("valid.cls", "test.cls") for i in range(LAYERS + 1)}
    assert all(isinstance(i, int) for _, i in cls)  # single layers, never the whole tensor


def test_t3_takes_the_largest_sample_without_exhaustive_triples(tmp_path):
    from tuneatlas.studies.registry import build_table

    results = tmp_path / "results"
    tensors = make_embeddings(results / "embeddings" / "r" / "embeddings.safetensors", "sst2")
    spec = train_spec(dataset="sst2", seed=3)
    write_yaml(spec.to_dict(), results / "runs" / "r" / "spec.yaml")
    triples = {"exhaustive": False, "sample_sizes": [7, 30, 12]}
    frames = scan_run(
        results / "embeddings" / "r",
        spec_for("sst2", triples=triples, layers=None),
        results / "subsets" / "r",
    )
    top = frames["top"]
    assert set(top[top["size"] == 3]["mode"]) == {"sampled"}
    source = frames["effective"]["search"].iloc[0]
    assert set(top[top["search"] == source]["sample_size"]) == {30}

    valid, test = scorers(tensors, "sst2")
    sample = search_subsets(valid, 3, k=4, test=test, n_samples=30, seed=3)
    eff = effective_dimensions(valid, sample.dims, test=test)
    subsets_cfg = {
        "top_k": 3,
        "effective_top": 4,
        "exhaustive_triples": False,
        "triple_sample_sizes": [7, 30, 12],
        "histogram_bins": 10,
    }
    table_spec = {
        "runs": [],
        "embeddings": [],
        "subsets": ["r"],
        "params": {"subsets": subsets_cfg},
    }
    t3 = build_table("S1.T3", table_spec, results)
    got = t3[(t3["kind"] == "triple") & (t3["split"] == "valid")]
    assert list(got["dims"]) == [",".join(map(str, d)) for d in sample.dims]
    best = t3[t3["kind"] == "best_effective_pair"].set_index("split")
    assert best.loc["valid", "dims"] == ",".join(map(str, eff.best_pair))
    assert best.loc["test", "value"] == eff.best_test
    # not the exhaustive top triples (today's bug: T3 scanned all triples regardless)
    exhaustive = search_subsets(valid, 3, k=4)
    assert list(got["dims"]) != [",".join(map(str, d)) for d in exhaustive.dims]
    assert got["value"].iloc[0] <= exhaustive.valid[0]
    ta1 = build_table("S1.TA1", table_spec, results)
    assert set(ta1["mode"]) == {"all", "sampled"}
    assert list(dict.fromkeys(ta1[ta1["mode"] == "sampled"]["sample_size"])) == [7, 30, 12]


def test_cli_writes_every_scan_file(tmp_path, monkeypatch):
    from tuneatlas.cli import main

    make_embeddings(tmp_path / "emb" / "embeddings.safetensors", "mnli")
    spec = spec_for("mnli", triples={"exhaustive": False, "sample_sizes": [20]})
    monkeypatch.setenv("TUNEATLAS_DEVICE", "cpu")
    out = tmp_path / "subsets" / "r"
    main(
        [
            "--threads",
            "1",
            "subsets",
            "--embeddings",
            str(tmp_path / "emb"),
            "--params",
            json.dumps(spec),
            "--out",
            str(out),
        ]
    )
    for name in SCAN_FILES:
        meta = read_parquet_meta(out / name)
        assert meta["kind"] == "subsets"
        assert meta["device"] == "cpu"
        assert json.loads(meta["spec"])["task"] == "mnli"
        assert meta["version"] and meta["git_commit"]
    top = pd.read_parquet(out / "top.parquet")
    assert set(top["size"]) == {2, 3}
    with pytest.raises(SystemExit):  # a bad spec fails with a message, not a traceback
        main(["subsets", "--embeddings", str(tmp_path / "emb"), "--params", "{}", "--out", "x"])


def test_missing_head_or_split_fails_clearly(tmp_path):
    tensors = make_embeddings(tmp_path / "e.safetensors", "sst2")
    del tensors["head.weight"]
    save_tensors(tensors, tmp_path / "nohead.safetensors")
    with pytest.raises(ValueError, match="linear head"):
        scan_run(tmp_path / "nohead.safetensors", spec_for("sst2"))
    with pytest.raises(FileNotFoundError):
        scan_run(tmp_path / "absent.safetensors", spec_for("sst2"))


def test_degenerate_layer_has_no_best_pair(tmp_path):
    """A constant layer: every pair predicts the bias's class, so every pair score ties."""
    from tuneatlas.studies.registry import build_table, plot_artifact

    results = tmp_path / "results"
    path = results / "embeddings" / "r" / "embeddings.safetensors"
    make_embeddings(path, "sst2", constant_layer=1)
    write_yaml(
        train_spec(dataset="sst2", seed=3).to_dict(),
        results / "runs" / "r" / "spec.yaml",
    )
    frames = scan_run(path, spec_for("sst2", triples=None), results / "subsets" / "r")
    layers = frames["layers"].set_index("layer")
    assert layers["degenerate"].tolist() == [False, True, False]
    assert layers.loc[1, "std"] <= DEGENERATE_STD
    assert np.isnan(layers.loc[1, ["max", "best_valid", "best_test"]].astype(float)).all()
    assert pd.isna(layers.loc[1, "best_dims"])
    assert not np.isnan(layers.loc[2, ["max", "best_valid", "best_test"]].astype(float)).any()

    spec = {
        "runs": [],
        "embeddings": [],
        "subsets": ["r"],
        "params": {"layers": {"pairs_per_layer": None}},
    }
    fl = build_table("S1.FL", spec, results)
    assert list(fl.columns) == ["task", "metric", "layer", "split", "stat", "value"]
    deg = fl[fl["stat"] == "degenerate"].set_index("layer")["value"]
    assert deg.tolist() == [0.0, 1.0, 0.0]
    one = fl[fl["layer"] == 1].set_index(["split", "stat"])["value"]
    assert np.isnan(one[("valid", "max")]) and np.isnan(one[("valid", "best_valid")])
    assert np.isnan(one[("test", "best_valid")])
    assert one[("valid", "mean")] == one[("valid", "q0.5")]  # the tied score stays reported
    table = tmp_path / "fl.parquet"
    fl.to_parquet(table)
    plot_artifact("S1.FL", table, [tmp_path / "fl.png"])
    assert (tmp_path / "fl.png").stat().st_size > 5000


def test_plan_scans_every_s1_run_a_subset_table_reads(repo):
    from tuneatlas.config import load_config
    from tuneatlas.plan import make_plan

    plan = make_plan(load_config(repo / "paper.yaml"))
    main = set(plan.targets["S1.T2"].subsets)
    assert len(main) == 8
    for artifact in ("S1.TA1", "S1.T3", "S1.FL"):
        assert set(plan.targets[artifact].subsets) == main
        assert plan.targets[artifact].embeddings == ()
    fa3 = set(plan.targets["S1.FA3"].subsets)
    assert main < fa3 and len(fa3) == 16
    assert set(plan.scans) == fa3
    for run in fa3 - main:
        assert plan.scans[run]["triples"] is None and plan.scans[run]["layers"] is None
    rates = {plan.runs[r].spec["dataset"]: plan.scans[r]["pair_rate"] for r in main}
    assert rates["mnli"] == 0.01 and rates["rte"] == 0.05
    some = plan.scans[sorted(main)[0]]
    assert some["triples"] == {"exhaustive": True, "sample_sizes": [75202, 7520, 752, 75]}
    assert some["seed"] == plan.runs[sorted(main)[0]].spec["seed"]
    with pytest.raises(KeyError, match="no subset scan"):
        plan.scan_spec("s1-sst2-maxnorm-s0")
    assert validate_spec(some)["effective_top"] == 10


def test_the_effective_rule_and_threshold_come_from_the_spec(tmp_path):
    """studies.s1.subsets.effective_rule / effective_min_drop reach S1.T3's ablation: the scan's
    effective flags are those of the threshold rule computed directly."""
    results = tmp_path / "results"
    tensors = make_embeddings(results / "embeddings" / "r" / "embeddings.safetensors", "sst2")
    spec = spec_for("sst2", layers=None, effective_rule="threshold", effective_min_drop=0.01)
    frames = scan_run(results / "embeddings" / "r", spec, results / "subsets" / "r")
    valid, test = scorers(tensors, "sst2")
    top = search_subsets(valid, 3, k=4)
    direct = effective_dimensions(valid, top.dims, test=test, rule="threshold", min_drop=0.01)
    got = frames["effective"]
    ablation = got[got["kind"] == "ablation"]
    assert list(ablation["effective"]) == list(direct.ablation["effective"])
    assert list(ablation["effective"]) == list(ablation["drop"] >= 0.01)
    largest = effective_dimensions(valid, top.dims, test=test)
    assert list(largest.ablation["effective"]) != list(direct.ablation["effective"])


def test_paper_config_names_the_effective_rule(repo):
    from tuneatlas.config import load_config
    from tuneatlas.plan import make_plan

    config = load_config(repo / "paper.yaml")
    sub = config["studies"]["s1"]["subsets"]
    assert (sub["effective_rule"], sub["effective_min_drop"]) == ("largest", 0.05)
    scans = make_plan(config).scans.values()
    assert {(s["effective_rule"], s["effective_min_drop"]) for s in scans} == {("largest", 0.05)}
