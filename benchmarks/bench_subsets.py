"""Benchmark the S1 subset-search engine against the naive masked-head loop.

The naive way scores one combination at a time: zero every input dimension outside the subset
and run the real ``nn.Linear`` head on all N examples. The engine (``tuneatlas.analysis.subsets``) sums
per-dimension contributions instead, and fuses the triple kernel with ``torch.compile``.

    .venv/bin/python benchmarks/bench_subsets.py              # K=768, N=872 (the paper's SST-2)
    .venv/bin/python benchmarks/bench_subsets.py --quick      # K=96 smoke run
    .venv/bin/python benchmarks/bench_subsets.py --fresh-cache   # include a cold compile

Random data (binary accuracy). Prints a table and one JSON line. Other processes on the
machine slow both sides; the load average before/after is part of the output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

TARGETS = {"pairs_s": 0.3, "triples_s": 15.0, "speedup": 1000.0}


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=768, help="dimensions K (default 768)")
    p.add_argument("--n", type=int, default=872, help="examples N (default 872, SST-2 valid)")
    p.add_argument("--quick", action="store_true", help="smoke run: K=96, fewer naive combos")
    p.add_argument("--naive", type=int, default=3000, help="combinations timed in the naive loop")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--backend", default="auto", choices=["auto", "compile", "eager"])
    p.add_argument(
        "--fresh-cache",
        action="store_true",
        help="compile into an empty Inductor cache (measures a cold compile)",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.quick:
        args.k = min(args.k, 96)
        args.naive = min(args.naive, 500)
    return args


def main() -> int:
    args = _parse()
    if args.fresh_cache:
        # Must be set before torch is imported; the directory is left for inspection.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_subsets_inductor_")
    import numpy as np
    import torch

    from tuneatlas.analysis import subsets as ss

    if args.threads:
        torch.set_num_threads(args.threads)
    k_dims, n = args.k, args.n
    rng = np.random.default_rng(args.seed)
    hidden = rng.normal(size=(n, k_dims)).astype(np.float32)
    weight = (0.05 * rng.normal(size=(2, k_dims))).astype(np.float32)
    bias = np.zeros(2, dtype=np.float32)
    # Labels follow a few dimensions through noise, so scores spread like a trained head's.
    labels = (hidden[:, :8].sum(1) + 2 * rng.normal(size=n) > 0).astype(np.int64)
    load_before = os.getloadavg()

    # ---- naive: mask, run the head, argmax, accuracy; one combination at a time
    head = torch.nn.Linear(k_dims, 2)
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight))
        head.bias.copy_(torch.as_tensor(bias))
    ht, yt = torch.as_tensor(hidden), torch.as_tensor(labels)
    combos = ss.sample_combinations(k_dims, 3, args.naive, seed=args.seed)
    naive_scores = np.empty(len(combos))
    t0 = time.perf_counter()
    with torch.no_grad():
        for row, combo in enumerate(combos):
            mask = torch.zeros(k_dims)
            mask[torch.as_tensor(combo)] = 1.0
            pred = head(ht * mask).argmax(1)
            naive_scores[row] = (pred == yt).to(torch.float64).mean().item()
    naive_s = time.perf_counter() - t0
    naive_rate = len(combos) / naive_s

    # ---- engine
    t0 = time.perf_counter()
    scorer = ss.SubsetScorer(hidden, labels, weight, bias, "accuracy", backend=args.backend)
    setup_s = time.perf_counter() - t0
    agree = bool(np.allclose(scorer.score(combos), naive_scores, rtol=0, atol=1e-12))

    pair_times = []
    for _ in range(3):
        t0 = time.perf_counter()
        pair_scores = scorer.pair_scores()
        pair_times.append(time.perf_counter() - t0)
    n_pairs = len(pair_scores)

    # Compile the triple kernel on a tiny problem first, so that compile and scan are timed
    # apart (one dynamic-shape graph serves every block size afterwards).
    compile_s = 0.0
    compiled = scorer.will_compile(3)
    if compiled:
        tiny = ss.SubsetScorer(
            hidden[:64, :8], labels[:64], weight[:, :8], bias, "accuracy", backend="compile"
        )
        t0 = time.perf_counter()
        tiny.scan_triples(k=1)
        compile_s = time.perf_counter() - t0
        compiled = ss.compile_error() is None

    edges = ss.histogram_edges("accuracy", 100)
    t0 = time.perf_counter()
    top, top_scores, counts = scorer.scan_triples(k=10, edges=edges)
    triples_s = time.perf_counter() - t0
    n_triples = ss.n_combinations(k_dims, 3)
    assert counts.sum() == n_triples

    n_sample = ss.paper_sample_size(k_dims, 3, 1e-3) or 1
    sample = ss.sample_combinations(k_dims, 3, n_sample, seed=args.seed)
    t0 = time.perf_counter()
    scorer.score(sample)
    sample_s = time.perf_counter() - t0
    load_after = os.getloadavg()

    rows = [
        ("naive masked nn.Linear loop (triples)", len(combos), naive_s),
        ("engine: all pairs (best of 3)", n_pairs, min(pair_times)),
        ("engine: all triples, scan only", n_triples, triples_s),
        ("engine: all triples incl. compile", n_triples, triples_s + compile_s),
        (f"engine: {n_sample:,} sampled triples", n_sample, sample_s),
    ]
    print(
        f"K={k_dims} N={n} binary accuracy | torch {torch.__version__} "
        f"threads={torch.get_num_threads()} cpus={os.cpu_count()} backend={args.backend} "
        f"compiled={compiled} | load avg before {load_before[0]:.2f} after {load_after[0]:.2f}"
    )
    print(f"{'approach':<42} {'combinations':>14} {'seconds':>9} {'combos/s':>14} {'x naive':>9}")
    for name, count, secs in rows:
        rate = count / secs
        print(f"{name:<42} {count:>14,} {secs:>9.3f} {rate:>14,.0f} {rate / naive_rate:>9,.0f}")
    cache = "cold" if args.fresh_cache else "warm or cold (shared Inductor cache)"
    print(f"compile (tiny problem, {cache}): {compile_s:.2f} s; scorer setup {setup_s:.3f} s")
    print(f"engine == naive on the {len(combos):,} timed combinations: {agree}")
    print(f"best triple {tuple(int(d) for d in top[0])} accuracy {top_scores[0]:.4f}")

    speedup = (n_triples / triples_s) / naive_rate
    result = {
        "bench": "subsets",
        "k": k_dims,
        "n": n,
        "metric": "accuracy",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "backend": args.backend,
        "compiled": compiled,
        "fresh_cache": args.fresh_cache,
        "load_before": round(load_before[0], 2),
        "load_after": round(load_after[0], 2),
        "naive_combos": len(combos),
        "naive_combos_per_s": round(naive_rate, 1),
        "pairs_s": round(min(pair_times), 4),
        "pairs_s_all": [round(t, 4) for t in pair_times],
        "compile_s": round(compile_s, 2),
        "triples_s": round(triples_s, 2),
        "triples_incl_compile_s": round(triples_s + compile_s, 2),
        "triples_combos_per_s": round(n_triples / triples_s),
        "speedup_triples_vs_naive": round(speedup),
        "sampled_triples": n_sample,
        "sampled_triples_s": round(sample_s, 4),
        "agree_with_naive": agree,
    }
    if k_dims == 768:
        result["targets_met"] = {
            "pairs_s<=0.3": result["pairs_s"] <= TARGETS["pairs_s"],
            "triples_s<=15": result["triples_s"] <= TARGETS["triples_s"],
            "triples_incl_compile_s<=15": result["triples_incl_compile_s"] <= TARGETS["triples_s"],
            "speedup>=1000": speedup >= TARGETS["speedup"],
        }
    print(json.dumps(result))
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
