"""Bundles (tuneatlas.bundles): how jobs are cut into bundles, what a bundle does when a member
fails or SIGTERM arrives, and how a member's outputs reach their final paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tuneatlas.bundles import BundleFailed, Member, adopt, plan_bundles, run_bundle, staged
from tuneatlas.config import validate_config
from tuneatlas.errors import ConfigError, Preempted
from tuneatlas.estimate import JobEstimate, bundle_resources, job_resources, settings_for
from tuneatlas.plan import make_plan

BUNDLE = "s2-train-00"


def test_a_group_is_cut_into_near_equal_contiguous_bundles():
    names = [f"r{i:02d}" for i in range(10)]
    # ceil(10 / 4) = 3 bundles of 3-4, in name order
    assert plan_bundles("s2-train", names[::-1], 4) == {
        "s2-train-00": names[0:3],
        "s2-train-01": names[3:7],
        "s2-train-02": names[7:10],
    }
    assert plan_bundles("s2-train", names, 1) == {}  # 1: one job per run
    assert plan_bundles("s2-train", [], 4) == {}


def test_the_plan_bundles_runs_started_from_another_run_in_a_later_wave(repo):
    config = yaml.safe_load((repo / "config.yaml").read_text())
    config["bundles"] = {
        "s1": {"train": 5},
        "s2": {"train": 9, "fisher": 4},
        "s4": {"pretrain": 7, "lm_eval": 5},
    }
    plan = make_plan(validate_config(config))
    members = {
        rule: sorted(m for b in plan.bundles.values() if b["rule"] == rule for m in b["members"])
        for rule in ("train", "fisher", "pretrain", "lm_eval")
    }
    finetunes = [r for r, run in plan.runs.items() if run.kind == "finetune"]
    alone = [r for r in finetunes if r not in members["train"]]
    assert sorted(alone) == sorted(r for r in finetunes if plan.runs[r].study not in ("s1", "s2"))
    assert members["fisher"] == sorted(plan.fishers)
    pretrains = [r for r, run in plan.runs.items() if run.kind == "pretrain"]
    assert members["pretrain"] == sorted(pretrains)
    assert len([b for b in plan.bundles if b.startswith("s4-pretrain-")]) == 3  # 16 runs, 7 a job
    assert members["lm_eval"] == sorted(plan.lm_evals) == members["pretrain"]
    assert len([b for b in plan.bundles if b.startswith("s4-lm_eval-")]) == 4  # 16 runs, 5 a job
    for bundle_id, bundle in plan.bundles.items():
        study = bundle_id.split("-")[0]
        assert all(m.startswith(f"{study}-") for m in bundle["members"]), bundle_id
        assert plan.bundle_of(bundle["rule"], bundle["members"][0]) == bundle_id
    # S1's sequential runs: in the second wave, each after the first-wave bundle of its start
    sequential = [r for r in finetunes if plan.runs[r].spec["init_from"]]
    assert sequential and alone
    for run in sequential:
        start = plan.runs[run].spec["init_from"]
        assert plan.bundle_of("train", run).startswith("s1-train-w1-"), run
        assert not plan.bundle_of("train", start).startswith("s1-train-w"), start
    assert plan.bundle_of("train", alone[0]) is None


def test_pretraining_on_several_gpus_is_not_bundled(repo):
    config = yaml.safe_load((repo / "config.yaml").read_text())
    config["bundles"] = {"s4": {"pretrain": 4}}
    config["studies"]["s4"]["gpus"] = 2
    with pytest.raises(ConfigError, match="'bundles.s4.pretrain': a pre-training run on several"):
        validate_config(config)
    config["studies"]["s4"]["gpus"] = 1
    validate_config(config)


@pytest.mark.parametrize(
    ("bundles", "key"),
    [
        ({"s9": {"train": 2}}, "bundles"),
        ({"s2": {"embed": 2}}, "bundles.s2.embed"),
        ({"s2": {"train": 0}}, "bundles.s2.train"),
    ],
)
def test_a_bad_bundles_key_is_refused_naming_it(repo, bundles, key):
    config = yaml.safe_load((repo / "config.yaml").read_text())
    config["bundles"] = bundles
    with pytest.raises(ConfigError) as err:
        validate_config(config)
    assert f"'{key}'" in str(err.value)


def _member(name: str) -> Member:
    final = f"results/runs/{name}"
    return Member(
        name,
        ["train", "--spec", f'{{"id": "{name}"}}', "--out", staged(final, BUNDLE)],
        [f"{final}/eval.parquet", f"{final}/model"],
        f"results/logs/train/{name}.log",
    )


class FakeCommand:
    """Writes a member's outputs like `tuneatlas train` would; fails or stops where told."""

    def __init__(self, fail: set[str] = frozenset(), preempt: set[str] = frozenset()):
        self.fail, self.preempt, self.ran = fail, preempt, []

    def __call__(self, argv: list[str]) -> None:
        out = Path(argv[argv.index("--out") + 1])
        name = out.name
        self.ran.append(name)
        if name in self.preempt:
            raise Preempted(name, 3, 10)
        if name in self.fail:
            raise ValueError(f"{name} diverged")
        (out / "model").mkdir(parents=True)
        (out / "eval.parquet").write_text(name)


def test_a_failed_member_leaves_its_siblings_and_the_next_attempt_runs_only_it(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    members = [_member(n) for n in ("a", "b", "c")]
    manifest = Path(f"results/bundles/{BUNDLE}/done.json")
    first = FakeCommand(fail={"b"})
    with pytest.raises(BundleFailed, match=r"1 of 3 members failed \(b;"):
        run_bundle(BUNDLE, members, manifest, first)
    assert first.ran == ["a", "b", "c"] and not manifest.exists()
    for name in ("a", "c"):  # the finished siblings stay staged
        assert Path(staged(f"results/runs/{name}/eval.parquet", BUNDLE)).read_text() == name
    second = FakeCommand()
    result = run_bundle(BUNDLE, members, manifest, second)
    assert second.ran == ["b"] and manifest.exists()
    assert result["members"] == {"a": "done earlier", "b": "done", "c": "done earlier"}


def test_sigterm_in_a_member_ends_the_bundle_at_once_and_the_retry_resumes_there(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    members = [_member(n) for n in ("a", "b", "c")]
    manifest = Path(f"results/bundles/{BUNDLE}/done.json")
    first = FakeCommand(preempt={"b"})
    with pytest.raises(Preempted):
        run_bundle(BUNDLE, members, manifest, first)
    assert first.ran == ["a", "b"]  # c never started
    retry = FakeCommand()
    run_bundle(BUNDLE, members, manifest, retry)
    assert retry.ran == ["b", "c"]


def test_a_changed_command_is_not_taken_for_its_staged_outputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    manifest = Path(f"results/bundles/{BUNDLE}/done.json")
    run_bundle(BUNDLE, [_member("a")], manifest, FakeCommand())
    changed = _member("a")
    changed.argv[2] = '{"id": "a", "lr": 0.1}'
    again = FakeCommand()
    (Path(staged("results/runs/a", BUNDLE)) / "model").rmdir()  # the command writes afresh
    run_bundle(BUNDLE, [changed], manifest, again)
    assert again.ran == ["a"]


def test_adopt_moves_the_outputs_newer_than_the_manifest_and_a_rerun_keeps_them(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    members = [_member(n) for n in ("a", "b")]
    manifest = Path(f"results/bundles/{BUNDLE}/done.json")
    run_bundle(BUNDLE, members, manifest, FakeCommand())
    old = manifest.stat().st_mtime - 10
    for member in members:  # as if written well before the manifest
        for out in member.outputs:
            os.utime(staged(out, BUNDLE), (old, old))
        adopt(BUNDLE, member)
        assert Path(member.outputs[0]).read_text() == member.name
        assert all(Path(p).stat().st_mtime >= manifest.stat().st_mtime for p in member.outputs)
        assert not Path(staged(member.outputs[0], BUNDLE)).exists()
    # the bundle again (one member's spec changed, say): adopted members are not retrained
    rerun = FakeCommand()
    run_bundle(BUNDLE, members, manifest, rerun)
    assert rerun.ran == []
    adopt(BUNDLE, members[0])  # nothing staged, the adopted outputs stay
    assert Path(members[0].outputs[0]).read_text() == "a"


def test_adopt_without_outputs_says_how_to_bring_the_bundle_back(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"delete results/bundles/{BUNDLE}/done.json"):
        adopt(BUNDLE, _member("a"))


def test_a_bundle_asks_for_its_members_hours_added_and_the_largest_members_memory():
    settings = settings_for("h100", max_hours=48)
    ests = [
        JobEstimate("train", f"r{i}", "s2", params, 1e15, 6.0, 1, hours, hours)
        for i, (params, hours) in enumerate([(3e8, 0.25), (1e8, 0.5), (2e8, 0.25)])
    ]
    got = bundle_resources(ests, 1, settings, {"runtime": 240, "mem_mb": 16000})
    largest = job_resources(ests[0], 1, settings, {})["mem_mb"]
    assert got == {"runtime": 120, "mem_mb": largest}  # 2 x (0.25 + 0.5 + 0.25) h
    assert bundle_resources(ests, 2, settings, {})["runtime"] == 240
    # one 15-minute start-up floor for the bundle, not one per member (3 x 15 = 45)
    tiny = [JobEstimate("fisher", f"t{i}", "s2", 1e8, 1e12, 6.0, 1, 0.01, 0.01) for i in range(3)]
    assert bundle_resources(tiny, 1, settings, {})["runtime"] == 15
    assert bundle_resources([None, None], 1, settings, {"runtime": 30, "mem_mb": 16000}) == {
        "runtime": 60,
        "mem_mb": 16000,
    }
