"""Bundles in a real snakemake run: S2's fine-tunes and Fisher trials as 4 bundle jobs instead
of 12 jobs, one member failing on the first attempt, and S4's pre-training runs as 2; in the end,
the same outputs as one job per run (the tiny run). test_workflow's bundled rerun bundles every
study and compares every table."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import yaml
from pandas.testing import assert_frame_equal

from tests.support import snakemake
from tests.workflow.conftest import TINY
from tuneatlas.config import validate_config
from tuneatlas.plan import make_plan

BUNDLES = {"s2": {"train": 4, "fisher": 2}, "s4": {"pretrain": 2}}


def _job_stats(stdout: str) -> dict[str, int]:
    stats = stdout[stdout.index("Job stats:") :]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)}


def test_a_bundled_s2_sweep_survives_a_failed_member_and_equals_one_job_per_run(tmp_path, tiny_run):
    config = yaml.safe_load(TINY.read_text()) | {"bundles": BUNDLES}
    config_file = tmp_path / "bundled.yaml"
    config_file.write_text(yaml.safe_dump(config))
    plan = make_plan(validate_config(config))
    runs = [r for r, run in plan.runs.items() if run.study == "s2" and run.kind == "finetune"]
    pretrains = [r for r, run in plan.runs.items() if run.kind == "pretrain"]
    outputs = [
        f"results/runs/{r}/{f}"
        for r in runs + pretrains
        for f in ("eval.parquet", "metrics.parquet")
    ]
    outputs += [f"results/fisher/{t}.parquet" for t in plan.fishers]
    bundle, members = next(
        (b, v["members"]) for b, v in plan.bundles.items() if b.startswith("s2-train-")
    )
    failing = members[1]
    # a plain file where the member's checkpoint directory goes: that member fails
    work = tmp_path / "work"
    blocker = work / f"results/bundles/{bundle}/stage/runs/{failing}/ckpt"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a directory")
    args = ["--configfile", str(config_file), "--cores", "2", "--retries", "0", "--keep-going"]

    first = snakemake(work, *args, *outputs, check=False)
    assert first.returncode != 0
    stats = _job_stats(first.stdout)
    assert stats["bundle"] == 6, stats  # S2: 2 + 2, S4: 2
    assert not {"train", "fisher", "pretrain"} & set(stats), stats
    adopted = stats.get("adopt_train", 0) + stats.get("adopt_train_with_predictions", 0)
    assert adopted == len(runs) and stats["adopt_pretrain"] == len(pretrains) == 3, stats
    bundle_log = work / f"results/logs/bundle/{bundle}.log"
    assert f"1 of {len(members)} members failed ({failing};" in bundle_log.read_text()
    for sibling in set(members) - {failing}:  # finished, kept, not yet in place
        assert (work / f"results/bundles/{bundle}/stage/runs/{sibling}/eval.parquet").exists()
        assert not (work / f"results/runs/{sibling}/eval.parquet").exists()

    blocker.unlink()
    second = snakemake(work, *args, *outputs)
    assert _job_stats(second.stdout)["bundle"] == 1, second.stdout[-3000:]
    rerun_log = bundle_log.read_text()
    assert f"member 2/{len(members)} {failing}" in rerun_log  # the only member trained again
    assert rerun_log.count(f"bundle {bundle}: member") == 1, rerun_log
    for path in outputs:
        assert_frame_equal(pd.read_parquet(work / path), pd.read_parquet(tiny_run / path))
    train_log = work / f"results/logs/train/{failing}.log"
    assert "done in" in train_log.read_text()  # the member's own log, where a single job's goes
    # nothing left to do: the adopted outputs are up to date for snakemake
    dry = snakemake(work, *args, "-n", *outputs)
    assert "Nothing to be done" in dry.stdout, dry.stdout[-2000:]
    assert Path(work / f"results/runs/{failing}/spec.yaml").exists()
