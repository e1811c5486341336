"""The workflow on a real SLURM cluster, through the users' profile (`--profile profiles/slurm`).

A toy subset of the real DAG (S1.T1 of tiny_slurm.yaml: prepare_data, build_model, two fine-tunes,
the table) runs through tests/cluster/cluster.sh's single-node cluster. The checks come from
SLURM's own records (`scontrol show job`, `squeue`): every rule job was an sbatch job, the
fine-tunes ran on the gpu partition with one GPU, the rest on the cpu partition; the outputs equal
those of a local run. Fault: `scancel` of a running fine-tune -> snakemake reports it, finished
outputs stay, a rerun runs only what is missing.

Only the command line adds test-only options (fast status polling, squeue as status command,
4 jobs at a time); the profile itself is used as users use it.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.support import REPO, snakemake, snakemake_command, snakemake_env

PROFILE = REPO / "profiles" / "slurm"
CONFIG = Path(__file__).with_name("tiny_slurm.yaml")
TARGET = "results/tables/s1_t1.parquet"
TRAIN_RUNS = ("s1-sst2-s42", "s1-sst2-maxnorm-s42")  # the fine-tunes S1.T1 needs in tiny_slurm
EXPECTED_JOBS = {"prepare_data": 1, "build_model": 1, "train": 2, "table": 1}
PARTITION = {
    "prepare_data": "cpu",
    "build_model": "cpu",
    "train": "gpu",
    "embed": "gpu",
    "table": "cpu",
    "figure": "cpu",
    "animation": "cpu",
}
GPU_RULES = {"train", "embed"}
# the profile's site settings: unset, so the defaults (cpu, gpu, no account, any GPU) apply
SITE_VARS = (
    "TUNEATLAS_CPU_PARTITION",
    "TUNEATLAS_GPU_PARTITION",
    "TUNEATLAS_SLURM_ACCOUNT",
    "TUNEATLAS_GPU_MODEL",
)
# test-only options, on the command line, not in the profile (see tests/cluster/README.md)
TEST_ONLY = [
    "--slurm-status-command",
    "squeue",  # no slurmdbd here, so no sacct
    "--slurm-init-seconds-before-status-checks",
    "1",
    "--seconds-between-status-checks",
    "1",
    "--jobs",
    "4",
    "--latency-wait",
    "5",
]
RUN_TIMEOUT = 600  # seconds; SIGINT makes snakemake cancel its SLURM jobs
LAUNCHER = ["timeout", "-s", "INT", "-k", "30", str(RUN_TIMEOUT)]

pytestmark = pytest.mark.cluster


# --------------------------------------------------------------------------- helpers
def slurm_args(*args: str, slurm: bool = True, config: Path = CONFIG) -> list[str]:
    """The test's config, on SLURM the users' profile and the test-only options, then `args`."""
    profile = ["--profile", str(PROFILE), *TEST_ONLY] if slurm else []
    return ["--configfile", str(config), *profile, *args]


def cluster_env(**extra: str) -> dict[str, str]:
    # the profile's site settings unset (so its defaults apply); sbatch --export=ALL passes the
    # venv's PATH on to the jobs' `python -m tuneatlas`
    return snakemake_env(drop=(*SITE_VARS, "SNAKEMAKE_PROFILE"), **extra)


def run_snakemake(workdir: Path, *args: str, slurm: bool = True, **env: str):
    t0 = time.monotonic()
    proc = snakemake(
        workdir,
        *slurm_args(*args, slurm=slurm),
        check=False,
        timeout=RUN_TIMEOUT + 60,
        env=cluster_env(**env),
        launcher=LAUNCHER,
    )
    return proc, time.monotonic() - t0


def job_counts(stdout: str) -> dict[str, int]:
    """The 'Job stats' table snakemake prints before it runs anything."""
    if "Job stats:" not in stdout:
        return {}
    block = stdout.split("Job stats:")[1].split("total")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}


def run_uuid(stdout: str) -> str | None:
    m = re.search(r"SLURM run ID: (\S+)", stdout)
    return m[1] if m else None


def submitted_ids(stdout: str) -> list[str]:
    return re.findall(r"has been submitted with SLURM jobid (\d+)", stdout)


def slurm(*args: str) -> str:
    return subprocess.run(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=True, timeout=60
    ).stdout


def job_record(job_id: str) -> dict[str, str]:
    """SLURM's record of one job: `scontrol -o -d show job` as key -> value (first occurrence)."""
    line = slurm("scontrol", "-o", "-d", "show", "job", job_id)
    record: dict[str, str] = {}
    for key, value in re.findall(r"(?:^|\s)([\w/:]+)=(\S*)", line):
        record.setdefault(key, value)
    return record


def rule_of(record: dict[str, str]) -> str:
    """The plugin comments each job `rule_<rule>` or `rule_<rule>_wildcards_<values>`."""
    m = re.fullmatch(r"rule_(.+?)(?:_wildcards_(.*))?", record.get("Comment", ""))
    assert m, f"job {record.get('JobId')} has no snakemake rule comment: {record.get('Comment')}"
    return m[1]


def wildcards_of(record: dict[str, str]) -> str:
    return re.fullmatch(r"rule_(.+?)(?:_wildcards_(.*))?", record["Comment"])[2] or ""


def job_table(records: list[dict[str, str]]) -> str:
    """The run's jobs as SLURM recorded them (scontrol): id, rule, partition, state, GPUs."""
    cols = [
        ("JOBID", "JobId"),
        ("RULE", "Comment"),
        ("PARTITION", "Partition"),
        ("STATE", "JobState"),
        ("EXIT", "ExitCode"),
        ("BATCH", "BatchFlag"),
        ("ELAPSED", "RunTime"),
        ("CPUS", "NumCPUs"),
        ("MEM", "MinMemoryNode"),
        ("TRES_PER_JOB", "TresPerJob"),
        ("GRES_ALLOC", "JOB_GRES"),
    ]
    rows = [[h for h, _ in cols]] + [[r.get(k, "-") for _, k in cols] for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def squeue_table(uuid: str) -> str:
    """squeue's own view of the run (finished jobs stay listed for MinJobAge)."""
    return slurm(
        "squeue",
        "-t",
        "all",
        "--name",
        uuid,
        "--sort",
        "i",
        "-O",
        "JobID:8,Partition:10,Comment:40,State:12,TimeUsed:8,NumCPUs:6,"
        "MinMemory:9,tres-per-job:14,ReasonList:20",
    )


@dataclass
class SlurmRun:
    workdir: Path
    returncode: int
    stdout: str
    seconds: float
    uuid: str | None
    job_ids: list[str] = field(default_factory=list)
    records: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def collect(cls, workdir: Path, returncode: int, stdout: str, seconds: float) -> SlurmRun:
        uuid = run_uuid(stdout)
        ids = submitted_ids(stdout)
        return cls(workdir, returncode, stdout, seconds, uuid, ids, [job_record(i) for i in ids])

    def report(self, title: str) -> str:
        text = (
            f"==== {title}: snakemake exit {self.returncode} after {self.seconds:.1f} s, "
            f"SLURM run {self.uuid}, {len(self.job_ids)} sbatch jobs\n"
        )
        if self.records:
            text += job_table(self.records) + "\n"
        if self.uuid:
            text += f"---- squeue -t all --name {self.uuid}\n" + squeue_table(self.uuid)
        return text

    def failure(self, what: str) -> str:
        return f"{what}\n{self.report('run')}\n---- snakemake output (tail)\n{self.stdout[-6000:]}"


def same_frames(a: Path, b: Path) -> None:
    pd.testing.assert_frame_equal(
        pd.read_parquet(a), pd.read_parquet(b), check_exact=True, obj=str(a.name)
    )


# --------------------------------------------------------------------------- fixtures
class Background:
    """A snakemake run in the background; its output is collected line by line."""

    def __init__(self, workdir: Path, *args: str, slurm: bool = True, config: Path = CONFIG):
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir, self.t0, self.lines = workdir, time.monotonic(), []
        command = snakemake_command(workdir, *slurm_args(*args, slurm=slurm, config=config))
        self.proc = subprocess.Popen(
            [*LAUNCHER, *command],
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=cluster_env(),
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def stdout(self) -> str:
        return "".join(self.lines)

    def wait(self) -> tuple[int, str, float]:
        try:
            self.proc.wait(timeout=RUN_TIMEOUT + 60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.reader.join(timeout=10)
        return self.proc.returncode, self.stdout, time.monotonic() - self.t0


class FaultRun(Background):
    """A SLURM run of one fine-tune whose train job is `scancel`ed while it trains."""

    RUN = TRAIN_RUNS[0]
    TARGET = f"results/runs/{RUN}/eval.parquet"  # prepare_data, build_model, then train

    def __init__(self, workdir: Path):
        # --retries 0: the profile's retries would resubmit the cancelled job (see the
        # preemption test); this scenario is the rerun by hand after a failure
        super().__init__(workdir, "--retries", "0", self.TARGET)
        self.cancelled: dict[str, str] | None = None
        self.watcher = threading.Thread(target=self._cancel_train, daemon=True)
        self.watcher.start()

    def _cancel_train(self) -> None:
        train_log = self.workdir / f"results/logs/train/{self.RUN}.log"
        deadline = time.monotonic() + RUN_TIMEOUT
        while self.proc.poll() is None and time.monotonic() < deadline:
            uuid = run_uuid(self.stdout)
            if uuid:
                try:
                    running = slurm("squeue", "-h", "--name", uuid, "-t", "RUNNING", "-o", "%i|%k")
                except subprocess.CalledProcessError:  # a busy slurmctld: ask again
                    running = ""
                for job_id, comment in (ln.split("|", 1) for ln in running.split()):
                    # RUNNING in SLURM and the fine-tune itself started (its log exists)
                    if comment.startswith("rule_train") and train_log.exists():
                        subprocess.run(["scancel", job_id], check=True, timeout=30)
                        self.cancelled = {"id": job_id, "comment": comment}
                        return
            time.sleep(0.25)

    def wait(self) -> tuple[int, str, float]:
        result = super().wait()
        self.watcher.join(timeout=30)
        return result


@pytest.fixture(scope="module")
def local_started(tmp_path_factory):
    """The same target run locally (`--cores 2`); runs beside the SLURM runs to save time."""
    run = Background(tmp_path_factory.mktemp("local"), "--cores", "2", TARGET, slurm=False)
    yield run
    run.wait()


@pytest.fixture(scope="module")
def fault_started(slurm_cluster, tmp_path_factory):
    """The fault scenario's first run; runs beside the main SLURM run to save time."""
    run = FaultRun(tmp_path_factory.mktemp("fault"))
    yield run
    run.wait()


@pytest.fixture(scope="module")
def local_reference(local_started, show) -> Path:
    returncode, stdout, seconds = local_started.wait()
    assert returncode == 0, f"the local run failed:\n{stdout[-6000:]}"
    show(f"==== local reference run of {TARGET} (--cores 2): {seconds:.1f} s")
    return local_started.workdir


@pytest.fixture(scope="module")
def slurm_run(
    slurm_cluster, local_started, fault_started, bundled_started, tmp_path_factory, show
) -> SlurmRun:
    workdir = tmp_path_factory.mktemp("slurm")
    proc, seconds = run_snakemake(workdir, TARGET)
    run = SlurmRun.collect(workdir, proc.returncode, proc.stdout, seconds)
    show(run.report(f"snakemake --profile profiles/slurm {TARGET}"))
    if run.returncode != 0:
        hint = ""
        if "Requested node configuration is not available" in run.stdout:
            hint = (
                "\nsbatch refused a job's size: the profile asks for more CPUs or memory than "
                "the test node declares (TUNEATLAS_SLURM_NODE_CPUS / _MEM_MB)."
            )
        pytest.fail(run.failure(f"the SLURM run failed{hint}"), pytrace=False)
    return run


# --------------------------------------------------------------------------- tests
def test_every_rule_job_ran_as_an_sbatch_job_on_its_partition(slurm_run):
    run = slurm_run
    assert run.uuid, run.failure("no SLURM run ID in snakemake's log")
    # what snakemake planned = what it submitted = what SLURM knows under the run's job name
    assert job_counts(run.stdout) == EXPECTED_JOBS, run.failure("unexpected DAG")
    assert "localrule" not in run.stdout, run.failure("a job ran on the submit host")
    known = slurm("squeue", "-h", "-t", "all", "--name", run.uuid, "-o", "%i").split()
    assert sorted(known) == sorted(run.job_ids), run.failure("SLURM and snakemake disagree")
    rules = [rule_of(r) for r in run.records]
    assert {r: rules.count(r) for r in set(rules)} == EXPECTED_JOBS, run.failure("rules")
    for rec in run.records:
        rule, where = rule_of(rec), f"job {rec['JobId']} ({rec['Comment']})"
        assert rec["BatchFlag"] == "1", f"{where} was not an sbatch job"
        assert rec["JobName"] == run.uuid, where
        assert rec["JobState"] == "COMPLETED" and rec["ExitCode"] == "0:0", (where, rec["JobState"])
        assert rec["Partition"] == PARTITION[rule], (where, rec["Partition"])
        if rule in GPU_RULES:
            assert rec.get("TresPerJob") == "gres:gpu:1", (where, rec.get("TresPerJob"))
            assert rec.get("JOB_GRES") == "gpu:1", (where, rec.get("JOB_GRES"))  # allocated
        else:
            assert "gpu" not in rec.get("TresPerJob", ""), (where, rec.get("TresPerJob"))
            assert rec.get("JOB_GRES", "(null)") == "(null)", (where, rec.get("JOB_GRES"))
    assert sorted(wildcards_of(r) for r in run.records if rule_of(r) == "train") == sorted(
        TRAIN_RUNS
    )


def test_outputs_equal_those_of_a_local_run(slurm_run, local_reference):
    same_frames(slurm_run.workdir / TARGET, local_reference / TARGET)
    for run in TRAIN_RUNS:
        for name in ("eval.parquet", "metrics.parquet"):
            path = f"results/runs/{run}/{name}"
            same_frames(slurm_run.workdir / path, local_reference / path)


def test_scancel_of_a_running_train_job_then_rerun_completes_only_what_is_missing(
    fault_started, local_reference, show
):
    fault, run, target = fault_started, FaultRun.RUN, FaultRun.TARGET
    workdir = fault.workdir
    first = SlurmRun.collect(workdir, *fault.wait())
    cancelled = fault.cancelled
    what = f"{cancelled['id']} ({cancelled['comment']})" if cancelled else "nothing"
    show(first.report(f"fault run of {target}: scancel {what} while it trains"))
    assert cancelled, first.failure("no train job was seen RUNNING")

    # snakemake notices and reports the failure, and exits non-zero
    assert first.returncode == 1, first.failure("snakemake did not fail")
    assert "Error in rule train" in first.stdout and "CANCELLED" in first.stdout, first.failure(
        "no error report"
    )
    states = {(rule_of(r), r["JobState"], r["Partition"]) for r in first.records}
    assert states == {
        ("prepare_data", "COMPLETED", "cpu"),
        ("build_model", "COMPLETED", "cpu"),
        ("train", "CANCELLED", "gpu"),
    }, first.failure("unexpected SLURM states")
    assert wildcards_of(job_record(cancelled["id"])) == run
    # the finished jobs' outputs stay; the cancelled job left nothing snakemake would trust
    for done in ("results/data/sst2", "results/models/bert-tiny"):
        assert (workdir / done).is_dir() and any((workdir / done).iterdir()), done
    assert not (workdir / target).exists()

    # the rerun runs exactly what is missing, on SLURM again, and completes
    proc, seconds = run_snakemake(workdir, target)
    rerun = SlurmRun.collect(workdir, proc.returncode, proc.stdout, seconds)
    show(rerun.report(f"rerun of {target} after the scancel"))
    assert rerun.returncode == 0, rerun.failure("the rerun failed")
    assert job_counts(rerun.stdout) == {"train": 1}, rerun.failure("the rerun ran more")
    assert [(rule_of(r), wildcards_of(r)) for r in rerun.records] == [("train", run)]
    rec = rerun.records[0]
    assert rec["JobState"] == "COMPLETED" and rec["Partition"] == "gpu", rec
    for name in ("eval.parquet", "metrics.parquet"):
        path = f"results/runs/{run}/{name}"
        same_frames(workdir / path, local_reference / path)


# --------------------------------------------------------------------------- preemption
def long_config(path: Path) -> Path:
    """tiny_slurm.yaml with a fine-tune long enough to be signalled mid-run and no periodic
    checkpoint: the only checkpoint a retry can resume from is the one the SIGTERM made."""
    config = yaml.safe_load(CONFIG.read_text())
    config["train"].update(epochs=40, checkpoint_every="none")
    path.write_text(yaml.safe_dump(config))
    return path


class PreemptRun(Background):
    """A SLURM run of one long fine-tune whose train job gets `scancel --signal=TERM` (what
    SLURM sends on preemption and before the time limit) while it trains."""

    RUN = TRAIN_RUNS[0]
    TARGET = f"results/runs/{RUN}/eval.parquet"

    def __init__(self, workdir: Path, config: Path):
        super().__init__(workdir, self.TARGET, config=config)
        self.signalled: dict[str, str] | None = None
        self.watcher = threading.Thread(target=self._signal_train, daemon=True)
        self.watcher.start()

    def _signal_train(self) -> None:
        train_log = self.workdir / f"results/logs/train/{self.RUN}.log"
        deadline = time.monotonic() + RUN_TIMEOUT
        while self.proc.poll() is None and time.monotonic() < deadline:
            uuid = run_uuid(self.stdout)
            started = train_log.exists() and "recipe finetune" in train_log.read_text()
            if uuid and started:
                running = slurm("squeue", "-h", "--name", uuid, "-t", "RUNNING", "-o", "%i|%k")
                for job_id, comment in (ln.split("|", 1) for ln in running.split()):
                    if comment.startswith("rule_train"):
                        time.sleep(1.5)  # some steps into the training
                        subprocess.run(["scancel", "--signal=TERM", job_id], check=True, timeout=30)
                        self.signalled = {"id": job_id, "comment": comment}
                        return
            time.sleep(0.25)

    def wait(self) -> tuple[int, str, float]:
        result = super().wait()
        self.watcher.join(timeout=30)
        return result


@pytest.fixture(scope="module")
def preempt_config(tmp_path_factory) -> Path:
    return long_config(tmp_path_factory.mktemp("preempt-config") / "long.yaml")


@pytest.fixture(scope="module")
def preempt_started(slurm_cluster, preempt_config, tmp_path_factory):
    run = PreemptRun(tmp_path_factory.mktemp("preempt"), preempt_config)
    yield run
    run.wait()


@pytest.fixture(scope="module")
def preempt_local(preempt_config, tmp_path_factory):
    """The same long fine-tune run locally without interruption: the reference."""
    target = PreemptRun.TARGET
    run = Background(
        tmp_path_factory.mktemp("preempt-local"),
        "--cores",
        "1",
        target,
        slurm=False,
        config=preempt_config,
    )
    yield run
    run.wait()


def test_sigterm_to_a_running_train_job_checkpoints_and_the_retry_resumes(
    preempt_started, preempt_local, show
):
    run = preempt_started
    first = SlurmRun.collect(run.workdir, *run.wait())
    signalled = run.signalled
    what = f"{signalled['id']} ({signalled['comment']})" if signalled else "nothing"
    show(first.report(f"preemption run of {run.TARGET}: scancel --signal=TERM {what}"))
    assert signalled, first.failure("no train job was seen RUNNING")
    # the profile's retries resubmit the stopped job within the same snakemake run
    assert first.returncode == 0, first.failure("snakemake did not finish after the retry")
    trains = [r for r in first.records if rule_of(r) == "train"]
    assert [(r["JobId"], r["JobState"]) for r in trains] == [
        (signalled["id"], "FAILED"),
        (trains[-1]["JobId"], "COMPLETED"),
    ], first.failure("expected the signalled train job FAILED, then its retry COMPLETED")
    assert all(r["Partition"] == "gpu" for r in trains)
    # the retry resumed from the step the signal stopped it at (checkpoint_every: none, so
    # the SIGTERM wrote that checkpoint)
    log = (run.workdir / f"results/logs/train/{run.RUN}.log").read_text()
    resumed = re.search(r"resuming from checkpoint at step (\d+)/(\d+)", log)
    assert resumed and 0 < int(resumed[1]) < int(resumed[2]), log[-2000:]
    returncode, stdout, _ = preempt_local.wait()
    assert returncode == 0, stdout[-4000:]
    for name in ("eval.parquet", "metrics.parquet"):
        path = f"results/runs/{run.RUN}/{name}"
        same_frames(run.workdir / path, preempt_local.workdir / path)


# ---------------------------------------------------------------- bundles (config `bundles`)
@pytest.fixture(scope="module")
def bundled_started(slurm_cluster, tmp_path_factory):
    """tiny_slurm.yaml with S1's four fine-tunes as one bundle, through the profile; beside the
    main SLURM run (the node has a GPU for each)."""
    config = yaml.safe_load(CONFIG.read_text()) | {"bundles": {"s1": {"train": 8}}}
    config_file = tmp_path_factory.mktemp("bundled-config") / "bundled.yaml"
    config_file.write_text(yaml.safe_dump(config))
    run = Background(tmp_path_factory.mktemp("bundled"), TARGET, config=config_file)
    yield run
    run.wait()


OTHER_S1_RUNS = ("s1-sst2-frozen-s42", "s1-sst2-nodrop-s42")  # S1's other fine-tunes: 4 in all


def test_a_bundle_is_one_sbatch_for_four_fine_tunes_with_the_outputs_of_one_job_each(
    bundled_started, local_reference, show
):
    run = SlurmRun.collect(bundled_started.workdir, *bundled_started.wait())
    show(run.report(f"bundled run of {TARGET} (bundles: {{s1: {{train: 8}}}})"))
    assert run.returncode == 0, run.failure("the bundled SLURM run failed")
    counts = job_counts(run.stdout)
    adopted = sum(n for rule, n in counts.items() if rule.startswith("adopt_train"))
    # the bundle trains all four; the target adopts the two it reads (TRAIN_RUNS)
    assert counts.get("bundle") == 1 and "train" not in counts, counts
    assert adopted == len(TRAIN_RUNS), counts
    done = json.loads((run.workdir / "results/bundles/s1-train-00/done.json").read_text())
    assert done["members"] == dict.fromkeys([*TRAIN_RUNS, *OTHER_S1_RUNS], "done"), done
    rules = sorted(rule_of(r) for r in run.records)  # what reached SLURM: one job per sbatch
    assert rules == ["build_model", "bundle", "prepare_data", "table"], run.failure("sbatch jobs")
    (bundle,) = [r for r in run.records if rule_of(r) == "bundle"]
    assert bundle["Partition"] == "gpu" and bundle.get("JOB_GRES") == "gpu:1", bundle
    assert all(r["JobState"] == "COMPLETED" for r in run.records), run.failure("states")
    # the adopt jobs ran on the submit host, moving the members' outputs into place
    assert "localrule adopt_train" in run.stdout, run.failure("no local adopt job")
    same_frames(run.workdir / TARGET, local_reference / TARGET)
    for name in TRAIN_RUNS:
        for file in ("eval.parquet", "metrics.parquet"):
            path = f"results/runs/{name}/{file}"
            same_frames(run.workdir / path, local_reference / path)


def test_profile_site_values_come_from_the_environment(tmp_path):
    """Partitions, account and GPU model change without editing a file (a dry-run, no cluster)."""
    site = {
        "TUNEATLAS_CPU_PARTITION": "short",
        "TUNEATLAS_GPU_PARTITION": "a100q",
        "TUNEATLAS_SLURM_ACCOUNT": "proj42",
        "TUNEATLAS_GPU_MODEL": "a100",
    }
    proc, _ = run_snakemake(tmp_path, "-n", TARGET, **site)
    assert proc.returncode == 0, proc.stdout[-4000:]
    jobs = re.findall(r"^rule (\w+):\n(?:.*\n)*?\s+resources: (.*)$", proc.stdout, re.M)
    assert {rule for rule, _ in jobs} == set(EXPECTED_JOBS), proc.stdout[-4000:]
    for rule, resources in jobs:
        res = dict(kv.split("=", 1) for kv in resources.split(", "))
        gpu = rule in GPU_RULES
        assert res["slurm_partition"] == ("a100q" if gpu else "short"), (rule, res)
        assert res["slurm_account"] == "proj42", (rule, res)
        assert res.get("gpu") == ("1" if gpu else None), (rule, res)
        assert res.get("gpu_model") == ("a100" if gpu else None), (rule, res)
        # SIGTERM 120 s before the time limit, so a training job can save its checkpoint
        assert res["slurm_extra"] == "--signal=TERM@120", (rule, res)
