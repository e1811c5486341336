"""Subset-search engine (S1) against brute force through a real masked torch head.

Brute force is "the obvious way": an ``nn.Linear`` head fed the input with every dimension
outside the subset zeroed, argmax of its logits, scored by ``tuneatlas.metrics``. The engine
must reproduce it for every pair and every triple, and its rankings must follow the
deterministic rule (score descending, then dimension ids ascending).

Two kinds of data: random floats, and small integers with dyadic weights, where every sum is
exact in float32 so logits tie exactly and often (the first-maximum rule is then exercised).
"""

from __future__ import annotations

import itertools
import warnings
from functools import cache

import numpy as np
import pytest
import torch

from tests.conftest import require_or_skip
from tuneatlas.analysis.subsets import kernels, native
from tuneatlas.analysis.subsets import scorer as scorer_module
from tuneatlas.analysis.subsets.combinatorics import (
    PAPER_PAIR_RATES,
    PAPER_TRIPLE_RATES,
    all_combinations,
    n_combinations,
    paper_sample_size,
    rank_combinations,
    sample_combinations,
    unrank_combinations,
)
from tuneatlas.analysis.subsets.effective import effective_dimensions, layer_redundancy
from tuneatlas.analysis.subsets.kernels import (
    compile_error,
    histogram_edges,
    metric_from_confusion,
    score_histogram,
)
from tuneatlas.analysis.subsets.scorer import SubsetScorer
from tuneatlas.analysis.subsets.search import search_subsets
from tuneatlas.metrics import predictions, score

K, N = 10, 200


def _problem(
    n_classes: int, regression: bool, seed: int, dyadic: bool = False, n: int = N, k: int = K
):
    rng = np.random.default_rng(seed)
    if dyadic:
        # Small integers (many zeros) and weights/biases on a 1/4 grid: exact float32 sums.
        h = rng.integers(-2, 3, size=(n, k)).astype(np.float32)
        w = (rng.integers(-4, 5, size=(n_classes, k)) / 4).astype(np.float32)
        w[:, 0] = w[0, 0]  # dimension 0 pushes every class equally: more exact ties
        b = (rng.integers(-2, 3, size=n_classes) / 4).astype(np.float32)
        b[: min(2, n_classes)] = 0.0
    else:
        h = rng.normal(size=(n, k)).astype(np.float32)
        w = rng.normal(size=(n_classes, k)).astype(np.float32)
        b = rng.normal(size=n_classes).astype(np.float32)
    if regression:
        y = h[:, :3].astype(np.float64).sum(1) + rng.normal(size=n)
    else:
        # Labels partly follow the head so that scores spread (and MCC is not always ~0).
        logits = h @ w.T + b
        y = np.where(rng.random(n) < 0.6, logits.argmax(1), rng.integers(0, n_classes, n))
    return h, y, w, b


def _brute(h, y, w, b, metric, regression, combos) -> np.ndarray:
    head = torch.nn.Linear(h.shape[1], w.shape[0])
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(w))
        head.bias.copy_(torch.as_tensor(b))
    ht = torch.as_tensor(h)
    out = []
    for combo in combos:
        mask = torch.zeros(h.shape[1])
        mask[list(combo)] = 1.0
        with torch.no_grad():
            logits = head(ht * mask).numpy()
        out.append(score(metric, y, predictions(logits, regression)))
    return np.array(out)


def _full_order(combos: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Reference ranking written independently of the engine: sort tuples."""
    keyed = sorted(zip((-scores).tolist(), combos.tolist(), strict=True))
    return np.array([c for _, c in keyed])


CASES = [
    # (classes, metric, regression)
    (2, "accuracy", False),
    (2, "mcc", False),
    (2, "f1", False),
    (2, "macro_f1", False),
    (3, "accuracy", False),
    (3, "macro_f1", False),
    (3, "mcc", False),
    (1, "pearson", True),
]


@cache
def _reference(n_classes: int, metric: str, regression: bool, dyadic: bool):
    """Problem + brute-force scores of all pairs and triples (shared by several tests)."""
    h, y, w, b = _problem(n_classes, regression, seed=n_classes * 7 + len(metric), dyadic=dyadic)
    pairs = all_combinations(K, 2)
    triples = all_combinations(K, 3)
    return (
        (h, y, w, b),
        pairs,
        _brute(h, y, w, b, metric, regression, pairs),
        triples,
        _brute(h, y, w, b, metric, regression, triples),
    )


@pytest.mark.parametrize(
    ("n_classes", "metric", "regression", "dyadic"),
    [pytest.param(*case, False, id=f"{case[0]}class-{case[1]}-float") for case in CASES]
    # Ties change predictions, whatever the metric: one binary and two 3-class metrics suffice.
    + [
        pytest.param(*case, True, id=f"{case[0]}class-{case[1]}-ties")
        for case in CASES
        if case[:2] in {(2, "f1"), (3, "accuracy"), (3, "mcc")}
    ],
)
def test_all_pairs_and_triples_match_masked_head(n_classes, metric, regression, dyadic):
    (h, y, w, b), pairs, ref2, triples, ref3 = _reference(n_classes, metric, regression, dyadic)
    scorer = SubsetScorer(h, y, w, b, metric, regression=regression, backend="eager")
    if not regression:
        assert np.ptp(ref2) > 0 and np.ptp(ref3) > 0  # the data does discriminate subsets

    np.testing.assert_allclose(scorer.pair_scores(), ref2, rtol=0, atol=1e-6)
    np.testing.assert_allclose(scorer.score(pairs), ref2, rtol=0, atol=1e-6)
    np.testing.assert_allclose(scorer.score(triples), ref3, rtol=0, atol=1e-6)

    top, top_scores, counts = scorer.scan_triples(k=15, edges=histogram_edges(metric, 20))
    np.testing.assert_array_equal(top, _full_order(triples, ref3)[:15])
    np.testing.assert_allclose(top_scores, np.sort(ref3)[::-1][:15], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(counts, np.histogram(ref3, histogram_edges(metric, 20))[0])
    assert counts.sum() == n_combinations(K, 3)

    res = search_subsets(scorer, 2, k=7, bins=10)
    np.testing.assert_array_equal(res.dims, _full_order(pairs, ref2)[:7])
    assert res.counts.sum() == len(pairs) and res.n_evaluated == len(pairs)


def test_exact_ties_are_frequent_in_the_tie_data():
    # Guard for the test above: the dyadic data must actually produce tied logits.
    h, y, w, b = _problem(3, False, seed=0, dyadic=True)
    mask = np.zeros(K, dtype=np.float32)
    mask[[0, 5]] = 1
    logits = (h * mask) @ w.T + b
    tied = (logits == logits.max(1, keepdims=True)).sum(1) > 1
    assert tied.mean() > 0.05


def test_binary_tie_is_class_zero_like_argmax():
    # Zero input, equal biases: logits tie exactly, argmax says class 0, so does the engine.
    h = np.zeros((4, 3), dtype=np.float32)
    w = np.array([[1, 2, 3], [3, 2, 1]], dtype=np.float32)
    b = np.zeros(2, dtype=np.float32)
    scorer = SubsetScorer(h, np.array([0, 0, 1, 1]), w, b, "accuracy")
    np.testing.assert_allclose(scorer.pair_scores(), 0.5)
    scorer = SubsetScorer(h, np.array([0, 0, 0, 0]), w, b, "accuracy")
    np.testing.assert_allclose(scorer.score([[0, 1, 2]]), 1.0)


def _skip_unless_compiled() -> None:
    """Skip, saying why, once torch.compile has failed in this process (then all runs eager)."""
    if compile_error() is not None:
        require_or_skip(
            "compile", f"torch.compile cannot build the subset kernel here: {compile_error()}"
        )


@pytest.mark.parametrize(("n_classes", "metric"), [(2, "f1"), (3, "mcc")])
def test_compiled_kernels_equal_eager(n_classes, metric):
    # The fused torch.compile kernel must give bit-identical scores and the same ranking as the
    # eager path. Where this machine cannot compile, the engine warns and runs eager: comparing
    # that with eager would prove nothing, so the test skips with the compiler's error instead,
    # and otherwise asserts (kernel_runs) that compiled code really scored the blocks.
    (h, y, w, b), pairs, ref2, triples, ref3 = _reference(n_classes, metric, False, True)
    _skip_unless_compiled()
    eager = SubsetScorer(h, y, w, b, metric, backend="eager")
    fused = SubsetScorer(h, y, w, b, metric, backend="compile")
    assert fused.will_compile(2) and fused.will_compile(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "compile failed, using eager"
        fused_pairs = fused.pair_scores()
    _skip_unless_compiled()
    compiled_pairs = fused.kernel_runs["compiled"]
    assert compiled_pairs > 0, f"no pair block ran compiled: {fused.kernel_runs}"
    np.testing.assert_array_equal(fused_pairs, eager.pair_scores())
    edges = histogram_edges(metric, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        got = fused.scan_triples(k=10, edges=edges)
    _skip_unless_compiled()
    assert fused.kernel_runs["compiled"] > compiled_pairs, fused.kernel_runs
    want = eager.scan_triples(k=10, edges=edges)
    assert eager.kernel_runs["compiled"] == 0 and eager.kernel_runs["eager"] > 0
    for g, e in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, e)
    np.testing.assert_allclose(got[1], np.sort(ref3)[::-1][:10], atol=1e-6)


def _skip_unless_native() -> None:
    if not native.available():
        require_or_skip("native", f"the C subset kernel cannot be built: {native.build_error()}")


def _obvious_counts(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a[:, None, :] + b[None, :, :]) > 0).sum(-1).to(torch.int32)


@pytest.mark.parametrize(
    ("rows_a", "rows_b", "n"),
    [(1, 1, 1), (3, 5, 15), (4, 4, 16), (5, 9, 17), (7, 70, 33), (130, 6, 40), (66, 131, 48)],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_native_counts_equal_the_obvious_sum(rows_a, rows_b, n, threads):
    # Tiles (4 x 4) and the 16-lane steps leave remainders in every shape above; half the values
    # are small dyadic integers, so a + b is exactly 0 often (a tie is "not > 0"), and +-0.0,
    # huge and tiny magnitudes check that b > -a is the sign of the rounded sum.
    _skip_unless_native()
    g = torch.Generator().manual_seed(rows_a * 1000 + rows_b * 10 + n)
    special = torch.tensor([0.0, -0.0, 1e30, -1e30, 1e-38, -1e-38, 3e-45, -3e-45])

    def values(rows: int) -> torch.Tensor:
        x = torch.randn(rows, n, generator=g)
        ints = torch.randint(-3, 4, (rows, n), generator=g).float() / 4
        x = torch.where(torch.rand(rows, n, generator=g) < 0.5, ints, x)
        pick = torch.rand(rows, n, generator=g) < 0.1
        return torch.where(pick, special[torch.randint(8, (rows, n), generator=g)], x)

    a, b = values(rows_a), values(rows_b)
    b[0] = -a[0]  # a row pair that ties everywhere
    want = _obvious_counts(a, b)
    assert 0 < int(((a[:, None] + b[None]) == 0).sum())  # exact ties do occur
    torch.testing.assert_close(native.binary_counts(a, b, threads=threads), want, rtol=0, atol=0)
    # a non-contiguous left operand and a row slice on the right, as the scan passes them
    wide = values(rows_b + 3)
    got = native.binary_counts(a.T.contiguous().T, wide[2 : 2 + rows_b], threads=threads)
    torch.testing.assert_close(got, _obvious_counts(a, wide[2 : 2 + rows_b]), rtol=0, atol=0)


@pytest.mark.parametrize("metric", ["accuracy", "f1"])
def test_native_kernel_scan_equals_eager(metric):
    # The default CPU path for binary heads: every pair, the triples' top-k and histogram, and
    # score(), bit for bit the eager kernels' (ties included), with native blocks really run.
    (h, y, w, b), pairs, ref2, triples, ref3 = _reference(2, "f1", False, True)
    _skip_unless_native()
    eager = SubsetScorer(h, y, w, b, metric, backend="eager")
    fast = SubsetScorer(h, y, w, b, metric, backend="native")
    np.testing.assert_array_equal(fast.pair_scores(), eager.pair_scores())
    edges = histogram_edges(metric, 10)
    for got, want in zip(
        fast.scan_triples(k=12, edges=edges), eager.scan_triples(k=12, edges=edges), strict=True
    ):
        np.testing.assert_array_equal(got, want)
    assert fast.kernel_runs["native"] > 0 and fast.kernel_runs["eager"] == 0
    assert eager.kernel_runs["native"] == 0
    auto = SubsetScorer(h, y, w, b, metric)  # "auto" prefers the C kernel where it applies
    assert auto._kernel_mode(1) == "native" and not auto.will_compile(3)


@pytest.mark.parametrize("metric", ["mcc", "f1", "macro_f1"])
def test_binary_score_table_equals_direct_metric(metric, monkeypatch):
    # Binary heads look scores up in a table of every count pair; big splits (no table) compute
    # the metric directly (accuracy's table is 1-d and always used). Both must agree bit for
    # bit, or rankings would depend on N.
    (h, y, w, b), pairs, ref2, triples, ref3 = _reference(2, "accuracy", False, True)
    tabled = SubsetScorer(h, y, w, b, metric)
    monkeypatch.setattr(scorer_module, "_MAX_TABLE", 0)
    direct = SubsetScorer(h, y, w, b, metric)
    assert tabled._table is not None and direct._table is None
    np.testing.assert_array_equal(tabled.pair_scores(), direct.pair_scores())
    edges = histogram_edges(metric, 13)
    for got, want in zip(tabled.scan_triples(9, edges), direct.scan_triples(9, edges), strict=True):
        np.testing.assert_array_equal(got, want)


def test_regression_closed_form_equals_direct_pearson():
    h, y, w, b = _problem(1, True, seed=3, n=500)
    scorer = SubsetScorer(h, y, w, b, "pearson", regression=True)
    rng = np.random.default_rng(0)
    subsets = np.stack([rng.choice(K, size=5, replace=False) for _ in range(20)])
    direct = []
    for s in subsets:
        pred = h[:, s].astype(np.float64) @ w[0, s].astype(np.float64) + b[0]
        direct.append(np.corrcoef(pred, y)[0, 1])
    np.testing.assert_allclose(scorer.score(subsets), direct, rtol=0, atol=1e-9)
    full = h.astype(np.float64) @ w[0].astype(np.float64)
    assert scorer.score_all_dims() == pytest.approx(np.corrcoef(full, y)[0, 1], abs=1e-9)


def test_regression_constant_prediction_scores_zero_like_metrics():
    h, y, w, b = _problem(1, True, seed=4)
    h[:, [2, 5]] = 0.75  # constant dimensions: their pair predicts a constant
    scorer = SubsetScorer(h, y, w, b, "pearson", regression=True)
    assert scorer.score([[2, 5]])[0] == 0.0
    assert _brute(h, y, w, b, "pearson", True, [(2, 5)])[0] == 0.0
    assert scorer.score([[2, 3]])[0] != 0.0


def test_metric_from_confusion_matches_sklearn():
    rng = np.random.default_rng(1)
    for n_classes in (2, 3, 4):
        for _ in range(20):
            yt = rng.integers(0, n_classes, 50)
            yp = np.where(rng.random(50) < 0.5, yt, rng.integers(0, n_classes, 50))
            if rng.random() < 0.3:
                yp[:] = yp[0]  # degenerate: one predicted class (MCC/F1 denominators vanish)
            conf = np.zeros((n_classes, n_classes))
            np.add.at(conf, (yt, yp), 1)
            metrics = ["accuracy", "mcc", "macro_f1"] + (["f1"] if n_classes == 2 else [])
            for metric in metrics:
                got = float(metric_from_confusion(torch.as_tensor(conf), metric))
                assert got == pytest.approx(score(metric, yt, yp), abs=1e-12), (metric, conf)


def test_sampling_is_seeded_distinct_and_within_all_combinations():
    a = sample_combinations(50, 3, 500, seed=7)
    b = sample_combinations(50, 3, 500, seed=7)
    c = sample_combinations(50, 3, 500, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == (500, 3)
    assert len({tuple(r) for r in a.tolist()}) == 500
    assert np.all(a[:, 0] < a[:, 1]) and np.all(a[:, 1] < a[:, 2])
    assert a.min() >= 0 and a.max() < 50
    ranks = rank_combinations(a, 50)
    assert np.all(np.diff(ranks) > 0)  # returned in lexicographic order
    everything = {tuple(r) for r in all_combinations(50, 3).tolist()}
    assert {tuple(r) for r in a.tolist()} <= everything
    # the whole population can be drawn, and no more
    assert len(sample_combinations(10, 2, 45, seed=0)) == 45
    with pytest.raises(ValueError, match="n must be"):
        sample_combinations(10, 2, 46, seed=0)


def test_paper_sample_sizes():
    assert n_combinations(768, 2) == 294_528
    assert n_combinations(768, 3) == 75_202_816
    assert [paper_sample_size(768, 2, r) for r in PAPER_PAIR_RATES] == [2_945, 14_726]
    sizes = [paper_sample_size(768, 3, r) for r in PAPER_TRIPLE_RATES]
    assert sizes == [75_202, 7_520, 752, 75]


def test_rank_unrank_roundtrip_and_lexicographic_order():
    for n_dims, size in [(7, 1), (9, 2), (10, 3), (8, 4)]:
        combos = all_combinations(n_dims, size)
        np.testing.assert_array_equal(combos, list(itertools.combinations(range(n_dims), size)))
        np.testing.assert_array_equal(rank_combinations(combos, n_dims), np.arange(len(combos)))
    big = np.array([[0, 1, 2], [100, 400, 767], [765, 766, 767]])
    ranks = rank_combinations(big, 768)
    assert ranks[0] == 0 and ranks[-1] == n_combinations(768, 3) - 1
    np.testing.assert_array_equal(unrank_combinations(ranks, 768, 3), big)


def test_sampled_search_ranks_the_sample_and_looks_up_test():
    (h, y, w, b), pairs, ref2, triples, ref3 = _reference(2, "accuracy", False, False)
    ht, yt, _, _ = _problem(2, False, seed=99)
    valid = SubsetScorer(h, y, w, b, "accuracy")
    test = SubsetScorer(ht, yt, w, b, "accuracy")
    res = search_subsets(valid, 3, k=5, test=test, n_samples=60, seed=3, bins=10)
    sample = sample_combinations(K, 3, 60, seed=3)
    np.testing.assert_array_equal(res.combos, sample)
    ref_sample = ref3[rank_combinations(sample, K)]
    np.testing.assert_allclose(res.scores, ref_sample, atol=1e-6)
    np.testing.assert_array_equal(res.dims, _full_order(sample, ref_sample)[:5])
    np.testing.assert_allclose(res.test, _brute(ht, yt, w, b, "accuracy", False, res.dims))
    assert res.counts.sum() == 60 and not res.exhaustive and res.seed == 3
    frame = res.top_frame()
    assert list(frame.columns) == ["rank", "dims", "valid", "test"]
    assert frame["dims"].iloc[0] == tuple(res.dims[0])


def test_effective_dimensions_find_the_informative_pair():
    # The label is decided by dimensions 3 and 8; the head leans on them and on noise.
    rng = np.random.default_rng(5)
    h = rng.normal(size=(400, K)).astype(np.float32)
    y = (h[:, 3] + h[:, 8] > 0).astype(np.int64)
    w = np.zeros((2, K), dtype=np.float32)
    w[1] = 0.3 * rng.normal(size=K)
    w[1, [3, 8]] = 2.0
    b = np.zeros(2, dtype=np.float32)
    valid = SubsetScorer(h, y, w, b, "accuracy")
    ht = rng.normal(size=(300, K)).astype(np.float32)
    test = SubsetScorer(ht, (ht[:, 3] + ht[:, 8] > 0).astype(np.int64), w, b, "accuracy")
    top = search_subsets(valid, 3, k=10)
    eff = effective_dimensions(valid, top.dims, test=test)
    assert {3, 8} <= set(eff.effective.tolist())
    assert eff.best_pair == (3, 8)
    assert eff.best_valid == pytest.approx(valid.score([[3, 8]])[0])
    assert eff.best_test == pytest.approx(test.score([[3, 8]])[0])
    ab = eff.ablation
    assert len(ab) == 30
    row = ab.iloc[0]
    pair = tuple(d for d in row["triple"] if d != row["removed"])
    assert row["drop"] == pytest.approx(row["triple_valid"] - valid.score([pair])[0])
    # Removing an informative dimension hurts far more than removing the third one.
    informative = ab[ab["removed"].isin([3, 8])]["drop"].min()
    other = ab[~ab["removed"].isin([3, 8])]["drop"].max()
    assert informative > other + 0.1
    # the threshold rule sees the same two dimensions here
    eff_t = effective_dimensions(valid, top.dims, rule="threshold", min_drop=0.1)
    assert eff_t.effective.tolist() == [3, 8]
    # pairs table: every pair of effective dimensions, valid-ranked
    assert len(eff.pairs) == n_combinations(len(eff.effective), 2)
    assert eff.pairs["valid"].is_monotonic_decreasing


def test_layer_redundancy_per_layer_summary():
    rng = np.random.default_rng(6)
    n_layers = 3
    layers = rng.normal(size=(n_layers, 300, K)).astype(np.float32)
    w = rng.normal(size=(2, K)).astype(np.float32)
    b = np.zeros(2, dtype=np.float32)
    y = (layers[-1] @ (w[1] - w[0]) > 0).astype(np.int64)  # only the last layer matches the head
    frame = layer_redundancy(layers, y, w, b, "accuracy", layers_test=layers, labels_test=y)
    assert frame["layer"].tolist() == [0, 1, 2]
    assert frame["all_dims"].iloc[-1] == 1.0
    assert frame["best_valid"].iloc[-1] > frame["best_valid"].iloc[0]
    last = SubsetScorer(layers[-1], y, w, b, "accuracy").pair_scores()
    assert frame["mean"].iloc[-1] == pytest.approx(last.mean())
    assert frame["q0.5"].iloc[-1] == pytest.approx(np.median(last))
    assert frame["best_valid"].iloc[-1] == pytest.approx(last.max())
    assert frame["best_test"].iloc[-1] == pytest.approx(frame["best_valid"].iloc[-1])
    sampled = layer_redundancy(layers, y, w, b, "accuracy", n_pairs=20, seed=1)
    assert (sampled["n_pairs"] == 20).all()
    combos = sample_combinations(K, 2, 20, seed=1)
    first = SubsetScorer(layers[0], y, w, b, "accuracy").score(combos)
    assert sampled["max"].iloc[0] == pytest.approx(first.max())


def test_histogram_matches_numpy_including_edges():
    rng = np.random.default_rng(2)
    for edges in (histogram_edges("accuracy", 100), histogram_edges("mcc", 7)):
        x = np.concatenate([rng.uniform(-1.5, 1.5, 5000), edges, np.arange(873) / 872])
        np.testing.assert_array_equal(score_histogram(x, edges), np.histogram(x, edges)[0])
    uneven = np.array([-0.5, 0.0, 0.1, 0.7, 0.9])
    x = np.concatenate([rng.uniform(-1, 1, 1000), uneven])
    np.testing.assert_array_equal(score_histogram(x, uneven), np.histogram(x, uneven)[0])


def test_clear_errors():
    h, y, w, b = _problem(3, False, seed=0)
    with pytest.raises(ValueError, match="binary"):
        SubsetScorer(h, y, w, b, "f1")
    with pytest.raises(ValueError, match="transposed"):
        SubsetScorer(h, y, w.T, b, "accuracy")
    with pytest.raises(ValueError, match="labels must be in"):
        SubsetScorer(h, y + 3, w, b, "accuracy")
    with pytest.raises(ValueError, match="regression"):
        SubsetScorer(h, y, w[:1], b[:1], "accuracy", regression=True)
    scorer = SubsetScorer(h, y, w, b, "accuracy")
    with pytest.raises(ValueError, match="repeats"):
        scorer.score([[1, 1]])
    with pytest.raises(ValueError, match="must be in 0"):
        scorer.score([[0, K]])
    with pytest.raises(ValueError, match="size 2 or 3"):
        search_subsets(scorer, 4)


# ------------------------------------------------- large K, small chunks: the tiling at scale

# K = 72: the pairs span three 32-row blocks (the last one ragged), the C(72, 3) = 59,640
# triples seventy middle-index blocks, and the running top-k merges across all of them.
KB = 72
# Eager chunks far below one row of the widest block (71 columns x 40-75 examples per class), so
# the eager kernels and score() cut every block into many chunks, most ending in a ragged one.
SMALL_CHUNK, SMALL_CHUNK_MULTICLASS = 3_000, 2_000

BIG_CASES = [
    # (classes, metric, regression, examples)
    (2, "accuracy", False, 150),
    (2, "mcc", False, 150),
    (3, "accuracy", False, 120),
    (3, "macro_f1", False, 120),
    (3, "mcc", False, 120),
    (1, "pearson", True, 200),
]


def _np_confusion(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``[M, C_true, C_pred]`` counts of labels ``y [N]`` against predictions ``pred [M, N]``."""
    m = len(pred)
    flat = (np.arange(m)[:, None] * n_classes + y[None, :]) * n_classes + pred
    return np.bincount(flat.ravel(), minlength=m * n_classes**2).reshape(m, n_classes, n_classes)


def _np_metric(conf: np.ndarray, metric: str) -> np.ndarray:
    """scikit-learn's accuracy / macro-F1 / MCC (R_K) of each confusion matrix, in numpy."""
    conf = conf.astype(np.float64)
    n = conf.sum((1, 2))
    tp = np.diagonal(conf, axis1=1, axis2=2)
    true, pred = conf.sum(2), conf.sum(1)
    if metric == "accuracy":
        return tp.sum(1) / n
    if metric == "macro_f1":  # averaged over the classes in the labels or the predictions
        den = true + pred
        f1 = np.where(den > 0, 2 * tp / np.maximum(den, 1), 0.0)
        return f1.sum(1) / (den > 0).sum(1)
    assert metric == "mcc"
    cov_tp = tp.sum(1) * n - (true * pred).sum(1)
    den = (n * n - (pred * pred).sum(1)) * (n * n - (true * true).sum(1))
    return np.where(den > 0, cov_tp / np.sqrt(np.maximum(den, 1)), 0.0)


def _masked_head_scores(h, y, w, b, metric, regression, combos, chunk=2_048) -> np.ndarray:
    """Brute force in numpy: every subset scored by the head fed h with the other dims zeroed.

    Zeroing input d is zeroing weight column d, so a chunk of subsets is one matmul per class,
    ``logits[m, n, c] = (mask[m] * w[c]) . h[n] + b[c]``, in float64 (exact for dyadic data).
    Predictions are numpy's argmax (first maximum); metrics are scikit-learn's formulas,
    checked against ``tuneatlas.metrics`` by ``test_numpy_brute_force_equals_torch_head``.
    """
    h64, w64, b64 = (np.asarray(x, dtype=np.float64) for x in (h, w, b))
    combos = np.asarray(combos)
    out = np.empty(len(combos))
    for r0 in range(0, len(combos), chunk):
        c = combos[r0 : r0 + chunk]
        mask = np.zeros((len(c), w.shape[1]))
        mask[np.arange(len(c))[:, None], c] = 1.0
        logits = np.stack([(mask * w64[k]) @ h64.T + b64[k] for k in range(len(w))], axis=-1)
        if regression:
            pred = logits[..., 0]
            pc = pred - pred.mean(1, keepdims=True)
            yc = y - y.mean()
            r = (pc @ yc) / np.sqrt((pc * pc).sum(1) * (yc @ yc))
            out[r0 : r0 + len(c)] = np.where(pred.std(1) == 0, 0.0, r)
        else:
            conf = _np_confusion(y, logits.argmax(-1), len(w))
            out[r0 : r0 + len(c)] = _np_metric(conf, metric)
    return out


@cache
def _big_reference(n_classes: int, metric: str, regression: bool, n: int):
    """A K=72 problem (dyadic for classification: exact ties) + brute force of every subset."""
    h, y, w, b = _problem(
        n_classes, regression, seed=40 + n_classes, dyadic=not regression, n=n, k=KB
    )
    pairs, triples = all_combinations(KB, 2), all_combinations(KB, 3)
    ref = lambda combos: _masked_head_scores(h, y, w, b, metric, regression, combos)  # noqa: E731
    return (h, y, w, b), pairs, ref(pairs), triples, ref(triples)


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(kernels, "EAGER_CHUNK_ELEMENTS", SMALL_CHUNK)
    monkeypatch.setattr(kernels, "EAGER_CHUNK_ELEMENTS_MULTICLASS", SMALL_CHUNK_MULTICLASS)


@pytest.mark.parametrize(
    ("n_classes", "metric", "regression", "n"),
    [pytest.param(*case, id=f"{case[0]}class-{case[1]}") for case in BIG_CASES],
)
def test_numpy_brute_force_equals_torch_head(n_classes, metric, regression, n):
    # Anchor for the large-K test: its vectorised reference is the masked nn.Linear head scored
    # by tuneatlas.metrics (scikit-learn), on a sample of pairs and triples.
    (h, y, w, b), pairs, ref2, triples, ref3 = _big_reference(n_classes, metric, regression, n)
    rng = np.random.default_rng(1)
    for combos, ref in ((pairs, ref2), (triples, ref3)):
        pick = rng.choice(len(combos), 60, replace=False)
        want = _brute(h, y, w, b, metric, regression, combos[pick])
        # float32 head vs float64 reference: only regression's float data rounds differently
        np.testing.assert_allclose(ref[pick], want, rtol=0, atol=1e-5 if regression else 1e-12)


@pytest.mark.parametrize(
    ("n_classes", "metric", "regression", "n", "table"),
    [pytest.param(*case, True, id=f"{case[0]}class-{case[1]}") for case in BIG_CASES]
    + [pytest.param(2, "mcc", False, 150, False, id="2class-mcc-no-table")],
)
def test_large_k_small_chunks_match_brute_force(
    n_classes, metric, regression, n, table, small_chunks, monkeypatch
):
    # The fast path at K=72 with the eager chunk constants made small (and, once, the binary
    # score table switched off): pair blocks, triple blocks, chunk loops, running top-k with
    # ties across blocks, histogram and score() must all agree with brute force.
    (h, y, w, b), pairs, ref2, triples, ref3 = _big_reference(n_classes, metric, regression, n)
    if not table:
        monkeypatch.setattr(scorer_module, "_MAX_TABLE", 0)
    scorer = SubsetScorer(h, y, w, b, metric, regression=regression, backend="eager")
    if n_classes == 2:
        assert (scorer._table is not None) == table
    if not regression:
        assert np.ptp(ref2) > 0 and np.ptp(ref3) > 0
        smallest = int(scorer.class_sizes[scorer.class_sizes > 0].min())
        chunk = SMALL_CHUNK if n_classes == 2 else SMALL_CHUNK_MULTICLASS
        assert (KB - 1) * smallest > chunk  # a row of the widest block spans several chunks
    tol = 1e-9 if regression else 1e-12
    # Reference ranking: score descending, then ids; rounding merges scores that are equal
    # but for the last bits of a different formula (MCC, macro-F1, Pearson).
    rounded2, rounded3 = np.round(ref2, 10), np.round(ref3, 10)

    pair_scores = scorer.pair_scores()
    np.testing.assert_allclose(pair_scores, ref2, rtol=0, atol=tol)
    for rows in (1, 7):  # other tilings of the pairs give the same scores bit for bit
        tiled = [blk.cpu().numpy() for *_, blk in scorer._pair_blocks(rows=rows)]
        np.testing.assert_array_equal(np.concatenate(tiled), pair_scores)
    np.testing.assert_allclose(scorer.score(pairs), ref2, rtol=0, atol=tol)
    sample = np.sort(np.random.default_rng(0).choice(len(triples), 2_000, replace=False))
    np.testing.assert_allclose(scorer.score(triples[sample]), ref3[sample], rtol=0, atol=tol)

    k = 40
    edges = histogram_edges(metric, 20)
    top, top_scores, counts = scorer.scan_triples(k=k, edges=edges)
    np.testing.assert_array_equal(top, _full_order(triples, rounded3)[:k])
    np.testing.assert_allclose(top_scores, np.sort(ref3)[::-1][:k], rtol=0, atol=tol)
    np.testing.assert_array_equal(counts, np.histogram(ref3, edges)[0])
    assert counts.sum() == len(triples)
    if not regression:
        assert scorer.kernel_runs["compiled"] == 0 and scorer.kernel_runs["eager"] > 0
    if metric == "accuracy":
        # the top-k's cut-off splits a group of tied triples spread over several blocks: the
        # id order among ties decided which got in
        cut = rounded3[rank_combinations(top[-1:], KB)[0]]
        tied = triples[rounded3 == cut]
        inside = int((np.round(top_scores, 10) == cut).sum())
        assert len(tied) > inside and len(np.unique(tied[:, 1])) > 1

    res = search_subsets(scorer, 2, k=15, bins=10)
    np.testing.assert_array_equal(res.dims, _full_order(pairs, rounded2)[:15])
    assert res.counts.sum() == len(pairs)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_large_k_top_k_among_mass_ties_keeps_lowest_ids(n_classes, small_chunks):
    # Only 4 of the 72 dimensions carry signal, so a triple's score depends only on which of
    # them it holds: tie groups of thousands of triples fill whole blocks, and the top-k must
    # keep the lowest ids among them, inside a block and across blocks.
    h, y, w, b = _problem(n_classes, False, seed=5, dyadic=True, n=60, k=KB)
    h[:, np.setdiff1d(np.arange(KB), [3, 30, 31, 70])] = 0.0
    triples = all_combinations(KB, 3)
    ref3 = _masked_head_scores(h, y, w, b, "accuracy", False, triples)
    want = _full_order(triples, ref3)
    scorer = SubsetScorer(h, y, w, b, "accuracy", backend="eager")
    for k in (1, 7, 100):
        top, top_scores, _ = scorer.scan_triples(k=k)
        np.testing.assert_array_equal(top, want[:k])
        np.testing.assert_array_equal(top_scores, np.sort(ref3)[::-1][:k])
    cut = np.sort(ref3)[::-1][99]
    assert (ref3 == cut).sum() > (top_scores == cut).sum() > 1  # the cut splits a tie group
