"""Bundles: many short GPU jobs of one rule (S2's fine-tune sweep, its Fisher trials) as one job
that runs them one after another in one process (config `bundles`).

At paper scale S2 is 1,080 fine-tunes and 180 Fisher trials of a few GPU-minutes each; as one
sbatch each, a site throttles them and each pays ~30 s of start-up (imports, loading the model
files). A bundle is one submission and one start-up for up to `bundles.<study>.<rule>` of them.
Snakemake's own means were measured on tests/cluster's SLURM and lose finished work when one
member fails (tests/cluster/README.md, "Job arrays and groups"), so a bundle is a job of its own:

- rule `bundle` runs every member's usual `tuneatlas` command in this process, its outputs
  under ``results/bundles/<bundle>/stage/`` (each command writes atomically, as on its own),
  then writes ``results/bundles/<bundle>/done.json``;
- one local job per member (`adopt_<rule>`) moves the member's staged outputs to their usual
  paths, so every rule downstream reads what an unbundled run writes;
- a member that fails is logged and the others still run; the bundle then fails, and its next
  attempt (the profile's `retries`, or the next `snakemake`) reruns only the members without
  complete staged outputs of the same command. A SIGTERM (preemption, time limit) checkpoints
  the running member and ends the bundle with status 75, as a single training job does.

The members run in the order given, each on the global RNG state its own command seeds, so a
bundled member's outputs equal those of the same run as its own job.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tuneatlas.io import atomic_path, stable_hash, write_json

log = logging.getLogger(__name__)

RESULTS = "results"


@dataclass(frozen=True)
class Member:
    """One job of a bundle: its `tuneatlas` command line (outputs under the stage), the final
    paths of its outputs and log, and their staged twins."""

    name: str
    argv: list[str]
    outputs: list[str]
    log: str

    @staticmethod
    def from_json(text: str) -> Member:
        return Member(**json.loads(text))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def stage_dir(bundle: str) -> str:
    return f"{RESULTS}/bundles/{bundle}/stage"


def staged(path: str, bundle: str) -> str:
    """Where a bundle's member writes `path` (a path under results/)."""
    if not path.startswith(f"{RESULTS}/"):
        raise ValueError(f"a bundled output must lie under {RESULTS}/: {path}")
    return f"{stage_dir(bundle)}/{path[len(RESULTS) + 1 :]}"


def plan_bundles(group: str, names: list[str], size: int) -> dict[str, list[str]]:
    """Bundle id (``<group>-NN``) -> its members: the group's members, sorted, cut into
    ceil(n / size) contiguous bundles of near-equal size; none for a size of 1 (one job each)."""
    if size <= 1 or not names:
        return {}
    names = sorted(names)
    count = math.ceil(len(names) / size)
    step = len(names) / count
    return {
        f"{group}-{i:02d}": names[round(i * step) : round((i + 1) * step)] for i in range(count)
    }


def _fingerprint(member: Member, bundle: str) -> str:
    """The member's command with its final output paths: the same run in any bundle."""
    prefix = stage_dir(bundle) + "/"
    return stable_hash([a.replace(prefix, f"{RESULTS}/") for a in member.argv], length=16)


def _staged_marker(member: Member, bundle: str) -> Path:
    return Path(stage_dir(bundle)) / ".members" / f"{member.name}.json"


def _adopted_marker(member: Member) -> Path:
    return Path(RESULTS) / "bundles" / ".adopted" / f"{member.name}.json"


def _same_command(marker: Path, member: Member, bundle: str) -> bool:
    return marker.exists() and json.loads(marker.read_text()) == {
        "command": _fingerprint(member, bundle)
    }


def _staged_complete(member: Member, bundle: str) -> bool:
    """Whether the stage holds every output of this very command (an earlier attempt's)."""
    return _same_command(_staged_marker(member, bundle), member, bundle) and all(
        Path(staged(p, bundle)).exists() for p in member.outputs
    )


def _adopted(member: Member, bundle: str) -> bool:
    """Whether the final paths hold every output of this very command (an earlier bundle's):
    a bundle re-run for one changed member leaves its siblings as they are."""
    return _same_command(_adopted_marker(member), member, bundle) and all(
        Path(p).exists() for p in member.outputs
    )


@contextmanager
def _member_log(path: Path) -> Iterator[None]:
    """The member's log records also go to its own file (adopt copies it to the run's log)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


class BundleFailed(RuntimeError):
    """Some members failed; the others' staged outputs stay for the next attempt."""


def run_bundle(
    bundle: str, members: list[Member], out: Path, run_command: Callable[[list[str]], None]
) -> dict[str, Any]:
    """Run each member's command (`run_command(argv)`) unless the stage already holds its
    outputs, then write the manifest `out`. Raises BundleFailed after the last member when any
    failed, and lets Preempted (SIGTERM during a member's training) end the bundle at once."""
    from tuneatlas.engine.checkpoint import StopOnSigterm
    from tuneatlas.errors import Preempted, error_lines

    status: dict[str, str] = {}
    with StopOnSigterm() as sigterm:
        for i, member in enumerate(members, 1):
            if sigterm.requested:  # between members: the finished ones are the checkpoint
                raise Preempted(f"bundle {bundle}", i - 1, len(members))
            if _staged_complete(member, bundle) or _adopted(member, bundle):
                status[member.name] = "done earlier"
                continue
            log.info("bundle %s: member %d/%d %s", bundle, i, len(members), member.name)
            with _member_log(Path(staged(member.log, bundle))):
                try:
                    run_command(member.argv)
                except Preempted:
                    raise
                except Exception as exc:  # one member's failure leaves the others' outputs
                    for line in error_lines(exc):
                        log.error("member %s: %s", member.name, line)
                    status[member.name] = f"failed: {exc}"
                    continue
            _mark(_staged_marker(member, bundle), member, bundle)
            status[member.name] = "done"
    failed = sorted(n for n, s in status.items() if s.startswith("failed"))
    if failed:
        raise BundleFailed(
            f"bundle {bundle}: {len(failed)} of {len(members)} members failed ({', '.join(failed)};"
            f" their logs: {stage_dir(bundle)}/logs/); the others' outputs stay staged and the"
            " next attempt reruns only the failed ones"
        )
    manifest = {"bundle": bundle, "members": status}
    with atomic_path(out, ".json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def _mark(marker: Path, member: Member, bundle: str) -> None:
    marker.parent.mkdir(parents=True, exist_ok=True)
    write_json({"command": _fingerprint(member, bundle)}, marker)


def _touch_tree(path: Path) -> None:
    """Newer than the bundle's manifest, so snakemake's mtime check sees the outputs up to
    date (a moved file keeps the time it was written inside the bundle)."""
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in paths:
        os.utime(p)


def adopt(bundle: str, member: Member) -> None:
    """Move a member's staged outputs (and log) to their final paths (a local job), or leave
    the outputs an earlier bundle adopted for this very command."""
    if not _staged_complete(member, bundle):
        if not _adopted(member, bundle):
            raise FileNotFoundError(
                f"bundle {bundle} holds no outputs of {member.name} (were they deleted after"
                f" the bundle ran?): delete {RESULTS}/bundles/{bundle}/done.json and rerun, and"
                " the bundle runs the members whose outputs are missing"
            )
        for final in member.outputs:
            _touch_tree(Path(final))
        return
    for final in [*member.outputs, member.log]:
        source, target = Path(staged(final, bundle)), Path(final)
        if not source.exists():  # the log of a member run in an earlier attempt's process
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(source, target)
        _touch_tree(target)
    _mark(_adopted_marker(member), member, bundle)
    _staged_marker(member, bundle).unlink()
