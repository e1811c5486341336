"""S2's in-loop hooks: the polar trajectory against a direct computation from copies of the
weights, the in-loop Fisher against the N-backward reference on the saved model, exact resume,
and neither changes the training trajectory."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.factories import train_spec
from tuneatlas.analysis.fisher.reference import reference_grams
from tuneatlas.analysis.fisher.spectrum import effective_rank, eigenvalues, relative_error
from tuneatlas.analysis.fisher.trace import FISHER_FILE, FisherTrace
from tuneatlas.analysis.fisher.trials import log_probs, trial_rows
from tuneatlas.analysis.polar import POLAR_FILE, SNAPSHOT_DIR, PolarTrace, polar_point
from tuneatlas.spec import FisherSpec, TrainSpec
from tuneatlas.studies import s2

from .conftest import tiny_livedoor

EVERY = 3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Dropout on: a hook that left the model in eval mode, or drew random numbers, would
    change the trajectory."""
    cfg = dict(hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, vocab_size=300)
    return tiny_livedoor(tmp_path_factory.mktemp("inloop"), {**cfg, "dropout": 0.1})


SPEC = train_spec(
    run="inloop",
    task="livedoor",
    dataset="tiny",
    model="tiny",
    seed=5,
    max_steps=9,
    eval_batch_size=16,
    max_length=32,
    checkpoint_every=4,
    fisher=FisherSpec(every=EVERY, batch_size=8),
    polar_every=EVERY,
)


class Recorder:
    """Keeps a copy of the trainable weights at every measured step (the direct reference)."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def _keep(self, state) -> None:
        if state.step % EVERY == 0 or state.step == state.total_steps:
            self.weights[state.step] = {
                n: p.detach().clone() for n, p in state.model.named_parameters() if p.requires_grad
            }

    on_train_start = on_step_end = _keep


class Crash:
    def __init__(self, at: int | None) -> None:
        self.at = at

    def on_step_end(self, state) -> None:
        if state.step == self.at:
            raise KeyboardInterrupt(f"simulated kill at step {state.step}")


def _train(tiny, spec: TrainSpec, out: Path, hooks=()) -> dict:
    from tuneatlas.engine.recipes.finetune import finetune

    return finetune(spec, tiny["data"], tiny["model"], out, hooks=list(hooks), device="cpu")


def _hooks(spec: TrainSpec) -> list:
    return [FisherTrace(spec.fisher), PolarTrace(spec.polar_every)]


@pytest.fixture(scope="module")
def runs(tiny) -> dict:
    plain, measured = tiny["root"] / "plain", tiny["root"] / "measured"
    _train(tiny, replace(SPEC, fisher=FisherSpec(), polar_every=0), plain)
    recorder = Recorder()
    _train(tiny, SPEC, measured, [*_hooks(SPEC), recorder, Crash(None)])
    return {"plain": plain, "measured": measured, "weights": recorder.weights}


def test_in_loop_measurements_do_not_change_training(runs):
    for name in ("metrics.parquet", "eval.parquet"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(runs["plain"] / name), pd.read_parquet(runs["measured"] / name)
        )


def test_polar_trajectory_equals_the_direct_computation_and_leaves_no_snapshots(runs):
    polar = pd.read_parquet(runs["measured"] / "captures" / POLAR_FILE)
    weights = runs["weights"]
    assert polar["step"].tolist() == sorted(weights) == [0, 3, 6, 9]
    init, final = weights[0], weights[9]
    d0 = torch.cat([(init[k].double() - final[k].double()).ravel() for k in final])
    for row in polar.itertuples():
        d = torch.cat([(weights[row.step][k].double() - final[k].double()).ravel() for k in final])
        r = float(d.norm() / d0.norm())
        assert row.r == pytest.approx(r, rel=1e-12, abs=1e-15)
        if row.step < 9:
            phi = math.acos(float(d @ d0 / (d.norm() * d0.norm())))
            # arccos near 0 resolves angles to sqrt(2 x float64 eps) = 1.5e-8 only
            assert row.phi == pytest.approx(phi, rel=1e-9, abs=1e-7)
    assert polar["r"].iloc[0] == 1.0 and polar["phi"].iloc[0] == 0.0
    assert polar["r"].iloc[-1] == 0.0 and 0 < polar["phi"].iloc[1] < math.pi
    # the loss of a measured step is the training loss the engine logged for it
    metrics = pd.read_parquet(runs["measured"] / "metrics.parquet").dropna(subset=["loss"])
    logged = metrics.set_index("step")["loss"]
    assert polar["loss"].iloc[1:].tolist() == logged.loc[[3, 6, 9]].tolist()
    assert math.isnan(polar["loss"].iloc[0])
    assert not (runs["measured"] / SNAPSHOT_DIR).exists()


def test_in_loop_fisher_at_the_last_step_equals_the_reference_on_the_saved_model(tiny, runs):
    from tuneatlas.data.labelled import tokenize_splits
    from tuneatlas.data.tasks import fine_tuning_task
    from tuneatlas.models.classifier import SequenceClassifier

    df = pd.read_parquet(runs["measured"] / "captures" / FISHER_FILE)
    assert sorted(df["step"].unique()) == [0, 3, 6, 9] and sorted(df["layer"].unique()) == [0, 1]
    model = SequenceClassifier.load(runs["measured"] / "model").eval()
    task = fine_tuning_task("livedoor")
    split = tokenize_splits(tiny["data"], model.tokenizer, 32, task, splits=("train",))["train"]
    batch = split.batch(trial_rows(len(split), 8, SPEC.seed))
    ref = eigenvalues(reference_grams(model, lambda m: log_probs(m, batch)))
    last = df[df["step"] == 9].sort_values("layer")
    ours = torch.tensor(np.stack(last["eigenvalues"].to_numpy()))
    assert relative_error(ours, ref) <= 1e-4
    assert last["erank"].tolist() == effective_rank(ref, 0.99).tolist()
    np.testing.assert_allclose(last["normalised_erank"], last["erank"] / 8)
    # training changed the spectrum
    first = np.stack(df[df["step"] == 0].sort_values("layer")["eigenvalues"].to_numpy())
    assert not np.allclose(first, ours.numpy())


def test_a_resumed_run_ends_with_the_measurements_of_an_uninterrupted_one(tiny, runs, tmp_path):
    broken = tmp_path / "broken"
    with pytest.raises(KeyboardInterrupt):
        # killed at step 8: the checkpoint of step 5 holds the records of steps 0 and 3; the
        # snapshot of step 6 is on disk but its record is replayed
        _train(tiny, SPEC, broken, [*_hooks(SPEC), Crash(8)])
    assert (broken / SNAPSHOT_DIR).is_dir()
    assert _train(tiny, SPEC, broken, [*_hooks(SPEC), Crash(None)])["resumed_from"] == 5
    for name in (POLAR_FILE, FISHER_FILE):
        pd.testing.assert_frame_equal(
            pd.read_parquet(runs["measured"] / "captures" / name),
            pd.read_parquet(broken / "captures" / name),
            check_exact=True,
        )


def test_polar_point_of_hand_made_weights():
    init, final = {"w": np.array([2.0, 0.0])}, {"w": np.array([0.0, 0.0])}
    r, phi = polar_point({"w": np.array([1.0, 1.0])}, init, final)
    assert r == pytest.approx(math.sqrt(2) / 2) and phi == pytest.approx(math.pi / 4)
    assert polar_point(final, init, final) == (0.0, 0.0)
    assert polar_point({"w": np.array([-2.0, 0.0])}, init, final) == (1.0, pytest.approx(math.pi))
    with pytest.raises(ValueError, match="did not move"):
        polar_point(init, init, init)


def test_specs_carry_the_in_loop_keys_only_when_on():
    off = replace(SPEC, fisher=FisherSpec(), polar_every=0).to_dict()
    assert "fisher" not in off and "polar_every" not in off  # hashes of other runs unchanged
    assert TrainSpec.from_dict(SPEC.to_dict()) == SPEC


def test_f2_and_f4_tables_carry_each_runs_failure(tmp_path):
    results = tmp_path
    data = results / "data" / "rte"
    data.mkdir(parents=True)
    pd.DataFrame({"label": [1, 1, 0]}).to_parquet(data / "valid.parquet")  # majority 2/3
    runs = {}
    for seed, acc in enumerate([0.9, 0.6]):
        run = f"s2-vanilla-lr1e-3-s{seed}"
        runs[run] = {"model_label": "vanilla", "lr": 1e-3, "seed": seed}
        out = results / "runs" / run
        (out / "captures").mkdir(parents=True)
        ev = {"run": run, "task": "rte", "split": "valid", "metric": "accuracy", "value": acc}
        pd.DataFrame([ev]).to_parquet(out / "eval.parquet")
        base = {"run": run, "epoch": 0.0, "loss": 0.5}
        pd.DataFrame(
            [{**base, "step": t, "r": 1 - t / 10, "phi": t / 20} for t in (0, 5, 10)]
        ).to_parquet(out / "captures" / POLAR_FILE)
        pd.DataFrame(
            [
                {**base, "step": t, "layer": layer, "n": 4, "erank": 2, "normalised_erank": 0.5}
                for t in (0, 10)
                for layer in (0, 1)
            ]
        ).to_parquet(out / "captures" / FISHER_FILE)
    params = {"models": ["vanilla"], "lrs": [1e-3], "dataset": "rte", "failure_threshold": None}
    spec = {"runs": list(runs), "params": {**params, "runs": runs}}
    f2, f4 = s2.table_f2(spec, results), s2.table_f4(spec, results)
    assert len(f2) == 6 and len(f4) == 8
    assert f2.groupby("seed")["failed"].first().tolist() == [False, True]  # 0.6 <= 2/3
    assert f4.groupby("seed")["failed"].first().tolist() == [False, True]
    assert (f4["value"] == 0.5).all()
    assert set(f2["shown_as"]) == {"run"} and set(f4["shown_as"]) == {"mean"}  # the defaults
    assert f4.groupby("seed")["run_value"].first().tolist() == [0.9, 0.6]
    for plot, table in ((s2.plot_f2, f2), (s2.plot_f4, f4)):
        out = tmp_path / f"{plot.__name__}.png"
        plot(table, [out])
        assert out.stat().st_size > 5000
    # single runs as the paper's Fig. 4: auto pairs the failed and the successful seed
    auto = s2.table_f4({**spec, "params": {**spec["params"], "draw": "auto"}}, results)
    assert set(auto["shown_as"]) == {"run"}
    s2.plot_f4(auto, [tmp_path / "single.png"])
    assert (tmp_path / "single.png").stat().st_size > 5000
    one = s2.table_f2({**spec, "params": {**spec["params"], "draw": [1]}}, results)
    assert one.groupby("seed")["shown_as"].first().tolist() == ["", "run"]
    none = s2.table_f4({**spec, "params": {**spec["params"], "draw": [7]}}, results)
    with pytest.raises(ValueError, match="studies.s2.fisher.draw"):
        s2.plot_f4(none.assign(shown_as=""), [tmp_path / "none.png"])


def test_auto_draw_picks_each_cells_first_failed_and_first_successful_seed():
    runs = pd.DataFrame(
        [
            {"model": m, "lr": lr, "seed": seed, "run": f"{m}-{lr}-{seed}", "failed": failed}
            for m, lr, outcomes in (
                ("vanilla", 2e-5, [False, True, True, False]),
                ("vanilla", 1e-5, [False, False, False, False]),  # never failed: one run
                ("simcse", 2e-5, [True, True, False, False]),
            )
            for seed, failed in reversed(list(enumerate(outcomes)))  # order must not matter
        ]
    )
    auto = s2._shown_as(runs, "auto")
    picked = {r for r, how in zip(runs["run"], auto, strict=True) if how == "run"}
    assert picked == {
        "vanilla-2e-05-0",
        "vanilla-2e-05-1",
        "vanilla-1e-05-0",
        "simcse-2e-05-0",
        "simcse-2e-05-2",
    }
    listed = s2._shown_as(runs, [3])
    assert [r for r, how in zip(runs["run"], listed, strict=True) if how] == [
        "vanilla-2e-05-3",
        "vanilla-1e-05-3",
        "simcse-2e-05-3",
    ]
    assert set(s2._shown_as(runs, "mean")) == {"mean"} and set(s2._shown_as(runs, "all")) == {"run"}


def test_extra_steps_are_measured_besides_the_regular_ones(tiny, tmp_path):
    """fisher.extra_steps (the paper's Fig. 4: steps 1-4): measured at 0, 1, 2, every 3 and
    the last step; the spec round-trips and carries the key only when set."""
    spec = replace(
        SPEC, run="extra", fisher=FisherSpec(every=EVERY, batch_size=8, extra_steps=(1, 2))
    )
    trace = FisherTrace(spec.fisher)
    _train(tiny, spec, tmp_path / "extra", [trace])
    assert sorted({r["step"] for r in trace.records}) == [0, 1, 2, 3, 6, 9]
    assert TrainSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["fisher"]["extra_steps"] == [1, 2]
    assert "extra_steps" not in SPEC.to_dict()["fisher"]  # runs without them: spec unchanged
