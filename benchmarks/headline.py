"""The README's headline numbers, read from the tables of a finished `make demo`.

    .venv/bin/python benchmarks/headline.py [results]     # default: results/

Prints, for the commit and config hash the tables record: S1 the best CLS pair minus all
dimensions per task (test), S1.T4 CoLA frozen encoder + 2 FC vs fine-tuning (test MCC), S2 the
failure share per peak lr and the last-step Fisher erank / N of failed vs other runs per layer,
S3.T1 the share of trajectories with a stay point per class group and D. The output of one demo
is recorded in docs/headline.md, which the README cites.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from tuneatlas.io import read_parquet_meta


def s1_lines(tables: Path) -> list[str]:
    t2 = pd.read_parquet(tables / "s1_t2.parquet").query("split == 'test'")
    lines = ["S1.T2 best exhaustive pair - all dimensions (test):"]
    for task, part in t2.groupby("task", sort=False):
        all_dims = part[part["mode"] == "all"]["value"].item()
        pair = part[(part["mode"] == "exhaustive") & (part["rank"] == 1)]["value"].item()
        lines.append(f"  {task}: pair {pair:.3f} vs all {all_dims:.3f} ({pair - all_dims:+.3f})")
    t4 = pd.read_parquet(tables / "s1_t4.parquet").query("split == 'test' and task == 'cola'")
    by = t4.set_index("setting")["value"]
    lines.append(
        f"S1.T4 CoLA test MCC: frozen_2fc {by['frozen_2fc']:.2f}"
        f" vs unfrozen_1fc {by['unfrozen_1fc']:.2f}"
    )
    return lines


def s2_lines(tables: Path) -> list[str]:
    f1 = pd.read_parquet(tables / "s2_f1.parquet")
    lines = ["S2.F1 failed share per (model, lr):"]
    for (model, lr), part in f1.groupby(["model", "lr"]):
        lines.append(f"  {model} lr {lr:g}: {part['failed'].mean():.2f} of {len(part)}")
    f4 = pd.read_parquet(tables / "s2_f4.parquet")
    last = f4[f4["step"] == f4.groupby("run")["step"].transform("max")]
    mean = last.groupby(["failed", "layer"])["value"].mean().unstack("layer")
    lines.append("S2.F4 last-step erank / N per layer (mean over runs; 1/N = collapsed):")
    for failed, row in mean.iterrows():
        n = int(last["n"].iloc[0])
        values = " ".join(f"{v:.3f}" for v in row)
        lines.append(f"  {'failed' if failed else 'other '} runs: {values} (1/N = {1 / n:.3f})")
    return lines


def s3_lines(tables: Path) -> list[str]:
    t1 = pd.read_parquet(tables / "s3_t1.parquet").dropna(subset=["group"])
    lines = ["S3.T1 share of trajectories with a classic stay point, per D and class group:"]
    for d, part in t1.groupby("D"):
        shares = part.groupby("group")[["count", "n"]].sum()
        cells = ", ".join(f"{g} {r['count']}/{r['n']}" for g, r in shares.iterrows())
        lines.append(f"  D {d:g}: {cells}")
    return lines


def main(argv: list[str]) -> int:
    tables = Path(argv[0] if argv else "results") / "tables"
    meta = read_parquet_meta(tables / "s1_t2.parquet")
    print(f"tables of commit {meta.get('git_commit')}, config hash {meta.get('config_hash')}")
    for line in [*s1_lines(tables), *s2_lines(tables), *s3_lines(tables)]:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
