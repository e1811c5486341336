"""S2: the sweep tables against direct computations, the Fisher trial against the N-backward
reference on a built model, and the plan of the sweep and the Fisher trials."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from tests.factories import train_spec
from tuneatlas.analysis.fisher.reference import reference_grams
from tuneatlas.analysis.fisher.spectrum import effective_rank, eigenvalues, relative_error
from tuneatlas.analysis.fisher.trials import FISHER_COLUMNS, fisher_trial, log_probs, trial_rows
from tuneatlas.data.labelled import tokenize_splits
from tuneatlas.data.tasks import fine_tuning_task
from tuneatlas.engine.recipes.mlm import build_bert
from tuneatlas.io import read_parquet_meta, write_parquet
from tuneatlas.models.classifier import build_classifier
from tuneatlas.spec import TrainSpec
from tuneatlas.studies import s2

# --- the sweep tables ------------------------------------------------------------------------
ACC = {  # (model, lr) -> accuracy per seed
    ("vanilla", 1e-3): [0.80, 0.50, 0.75],
    ("vanilla", 3e-3): [0.45, 0.50, 0.52],
    ("simcse-p0.1", 1e-3): [0.78, 0.79, 0.80],
    ("simcse-p0.1", 3e-3): [0.70, 0.60, 0.56],
}


@pytest.fixture
def sweep(tmp_path):
    results = tmp_path / "results"
    data = results / "data" / "rte"
    data.mkdir(parents=True)
    # 13 of 25 labels are 1: majority share 0.52
    pd.DataFrame({"label": [1] * 13 + [0] * 12}).to_parquet(data / "valid.parquet")
    runs = {}
    for (model, lr), values in ACC.items():
        for seed, value in enumerate(values):
            run = f"s2-{model}-lr{lr:g}-s{seed}"
            runs[run] = {"model_label": model, "lr": lr, "seed": seed}
            ev = pd.DataFrame(
                {
                    "run": run,
                    "task": "rte",
                    "split": ["valid", "valid"],
                    "metric": ["accuracy", "macro_f1"],
                    "value": [value, 0.1],
                }
            )
            write_parquet(ev, results / "runs" / run / "eval.parquet")
    params = {
        "models": ["vanilla", "simcse-p0.1"],
        "lrs": [1e-3, 3e-3],
        "dataset": "rte",
        "failure_threshold": None,
        "runs": runs,
    }
    return {"runs": list(runs), "params": params}, results


def test_t1_matches_a_direct_computation_and_counts_failures_at_the_majority_share(sweep):
    spec, results = sweep
    t1 = s2.table_t1(spec, results)
    assert list(t1[["model", "lr"]].itertuples(index=False, name=None)) == list(ACC)
    for row in t1.itertuples():
        values = np.array(ACC[row.model, row.lr])
        assert row.mean == pytest.approx(values.mean())
        assert row.stability == pytest.approx(math.sqrt(((values - values.mean()) ** 2).sum() / 2))
        assert row.max == pytest.approx(values.max())
        assert row.failures == int((values <= 0.52).sum())
        assert row.n_seeds == 3 and row.threshold == pytest.approx(0.52)
        # 95% t interval with 2 degrees of freedom: t = 4.302653
        half = 4.302653 * values.std(ddof=1) / math.sqrt(3)
        interval = (values.mean() - half, values.mean() + half)
        assert (row.ci_low, row.ci_high) == pytest.approx(interval)
    # 0.50 <= 0.52 fails, 0.52 itself fails (at or below), 0.56 does not
    assert t1.set_index(["model", "lr"])["failures"].to_dict() == {
        ("vanilla", 1e-3): 1,
        ("vanilla", 3e-3): 3,
        ("simcse-p0.1", 1e-3): 0,
        ("simcse-p0.1", 3e-3): 0,
    }


def test_a_configured_failure_threshold_replaces_the_majority_share(sweep):
    spec, results = sweep
    spec["params"]["failure_threshold"] = 0.75
    f1 = s2.table_f1(spec, results)
    assert f1["failed"].sum() == sum(v <= 0.75 for vs in ACC.values() for v in vs)
    assert f1["majority"].to_numpy() == pytest.approx(np.full(12, 0.52))


def test_f1_has_one_row_per_run_with_the_catalogued_columns(sweep):
    spec, results = sweep
    f1 = s2.table_f1(spec, results)
    assert len(f1) == 12 and {"model", "lr", "seed", "metric", "value"} <= set(f1.columns)
    assert (f1["metric"] == "accuracy").all() and (f1["split"] == "valid").all()


def test_a_run_without_a_valid_score_is_named(sweep):
    spec, results = sweep
    run = spec["runs"][0]
    ev = pd.DataFrame({"run": run, "task": "rte", "split": ["test"], "metric": ["accuracy"]})
    write_parquet(ev.assign(value=0.5), results / "runs" / run / "eval.parquet")
    with pytest.raises(ValueError, match=f"{run}/eval.parquet: no valid accuracy"):
        s2.table_f1(spec, results)


def test_sweep_figures_are_drawn(sweep, tmp_path):
    spec, results = sweep
    for plot, table in ((s2.plot_t1, s2.table_t1), (s2.plot_f1, s2.table_f1)):
        out = tmp_path / f"{plot.__name__}.png"
        plot(table(spec, results), [out])
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mean_ci_of_one_value_has_no_bounds():
    mean, low, high = s2.mean_ci(np.array([0.7]))
    assert mean == 0.7 and math.isnan(low) and math.isnan(high)


# --- Fisher trials ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("s2")
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    words = "red green blue cyan magenta yellow black white grey pink".split()
    rows = []
    for i in range(40):
        a, b = " ".join(rng.choice(words, 5)), " ".join(rng.choice(words, 3))
        rows.append((i, a, b, int(rng.integers(2))))
    pd.DataFrame(rows, columns=["idx", "text_a", "text_b", "label"]).to_parquet(
        data / "train.parquet"
    )
    cfg = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, vocab_size=60)
    model = build_bert(cfg, [" ".join(r[1:3]) for r in rows], root / "base", seed=0)
    head = train_spec(run="f", task="rte", dataset="rte", model="base").to_dict()
    spec = {"label": "vanilla", "trial": 3, "batch_size": 8, "energy": 0.99, "train": head}
    return {"root": root, "data": data, "model": model, "spec": spec}


@pytest.mark.parametrize(("precision", "floor"), [(None, 1e-6), ("exact", 1e-6), ("fast", 1e-3)])
def test_fisher_trial_equals_the_n_backward_reference_of_the_same_head_and_batch(
    base, precision, floor
):
    """A spec without `precision` (planned before the key) is computed as "exact"."""
    out = base["root"] / f"trial-{precision}.parquet"
    spec = base["spec"] if precision is None else {**base["spec"], "precision": precision}
    df = fisher_trial(spec, base["data"], base["model"], out)
    assert list(df.columns) == FISHER_COLUMNS and list(df["layer"]) == [0, 1]
    # rebuild the trial independently: the head seeded with the trial, its 8 rows, N backwards
    train = TrainSpec.from_dict({**base["spec"]["train"], "seed": 3})
    torch.manual_seed(3)
    model = build_classifier(train, fine_tuning_task("rte"), base["model"], None).eval()
    split = tokenize_splits(base["data"], model.tokenizer, 16, fine_tuning_task("rte"))["train"]
    rows = trial_rows(len(split), 8, 3)
    batch = split.batch(rows)
    ref = eigenvalues(reference_grams(model, lambda m: log_probs(m, batch)))
    ours = torch.tensor(np.stack(df["eigenvalues"].to_numpy()))
    assert relative_error(ours, ref, floor=floor) <= 1e-4
    expected = effective_rank(ref, 0.99)
    assert df["erank"].tolist() == expected.tolist()
    np.testing.assert_allclose(df["normalised_erank"], expected.double() / 8)
    assert json.loads(read_parquet_meta(out)["rows"]) == rows.tolist()


def test_fisher_trials_are_reproducible_and_differ_between_trials(base):
    root = base["root"]
    a = fisher_trial(base["spec"], base["data"], base["model"], root / "a.parquet")
    b = fisher_trial(base["spec"], base["data"], base["model"], root / "b.parquet")
    c = fisher_trial({**base["spec"], "trial": 4}, base["data"], base["model"], root / "c.parquet")
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(np.stack(a["eigenvalues"]), np.stack(c["eigenvalues"]))


def test_a_mini_batch_larger_than_the_training_split_names_the_key(base):
    with pytest.raises(ValueError, match="studies.s2.fisher.batch_size"):
        fisher_trial(
            {**base["spec"], "batch_size": 41}, base["data"], base["model"], base["root"] / "x"
        )


def test_f3_and_t2_from_trial_files(tmp_path):
    results = tmp_path
    trials = {}
    values = {("vanilla", 0): [0.5, 0.25], ("vanilla", 1): [0.75, 0.25], ("simcse", 0): [1, 1]}
    for (model, trial), per_layer in values.items():
        fid = f"s2-{model}-t{trial}"
        trials[fid] = {"model": model, "trial": trial}
        df = pd.DataFrame(
            {
                "model": model,
                "trial": trial,
                "layer": [0, 1],
                "n": 4,
                "erank": [int(v * 4) for v in per_layer],
                "normalised_erank": per_layer,
                "eigenvalues": [[1.0] * 4, [1.0] * 4],
            }
        )
        write_parquet(df, results / "fisher" / f"{fid}.parquet")
    spec = {"params": {"models": ["vanilla", "simcse"], "trials": trials}}
    f3 = s2.table_f3(spec, results)
    assert len(f3) == 6 and list(dict.fromkeys(f3["model"])) == ["vanilla", "simcse"]
    t2 = s2.table_t2(spec, results).set_index("model")
    assert t2.loc["vanilla", "value"] == pytest.approx((0.75 + 1.0) / 2)
    assert t2.loc["simcse", "value"] == 2.0 and t2.loc["vanilla", "trials"] == 2
    half = 12.706205 * np.std([0.75, 1.0], ddof=1) / math.sqrt(2)
    assert t2.loc["vanilla", "ci_high"] == pytest.approx(0.875 + half)
    for plot, table in ((s2.plot_f3, f3), (s2.plot_t2, s2.table_t2(spec, results))):
        out = tmp_path / f"{plot.__name__}.png"
        plot(table, [out])
        assert out.stat().st_size > 1000
