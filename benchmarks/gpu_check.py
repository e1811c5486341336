"""GPU check (`make gpu-check`): the tiny DAG, subset scores, Fisher, SimCSE and LM on CUDA.

Never part of `make test` or CI: it needs an NVIDIA GPU and takes a few minutes (budget 8 min on
one GPU). Steps, each timed:

1. the tiny DAG (tests/workflow/tiny.yaml) with ``device: cuda``, fp32, in a temp directory;
2. the same DAG with ``train.precision: bf16`` in another temp directory;
3. every subset scan the fp32 DAG ran on CUDA (``results/subsets/<run>/``) recomputed on the
   CPU from the same embeddings file and scan spec, compared frame by frame: counts-based
   metrics (accuracy, MCC, F1, macro-F1) must be equal exactly, Pearson to 1e-9;
4. `tuneatlas.analysis.subsets.SubsetScorer` on CUDA vs CPU on the same synthetic embeddings
   (binary accuracy at SST-2's shape K=768, N=872; 3-class macro-F1; regression): all pairs, a
   seeded triple sample (the paper's 0.1 %) and an exhaustive triple scan at K=384 (top-10 and
   histogram), plus the timing of the exhaustive K=768 triple scan on CUDA;
5. the engines the DAG's toy config does not reach on the device, through their public entry
   points, each a PASS/FAIL line: a tiny BERT's per-layer Fisher spectra (``layer_grams``) vs
   the float64 CPU reference (N backward passes): effective ranks identical, the top-5
   eigenvalues within 1e-3 relative; 30 SimCSE steps (``simcse``) of a toy BERT built offline
   and 30 causal-LM pre-training steps (``pretrain``) of a 2-layer LLaMA, in bf16 where the
   GPU has it: every loss finite and the loss falling (``LOSS_DROP``), the CPU fp32 run of the
   same spec reported beside each.

Prints a timing summary table and, last, one JSON line; exits 0 when every check passes, 1 when
one fails, 2 when CUDA is absent. ``--device cpu`` runs the same script on the CPU (CPU vs CPU
comparisons, a smoke test of the script itself); ``--quick`` builds two tables instead of the
whole DAG (on the CPU only the fp32 DAG) and uses smaller synthetic problems.

    .venv/bin/python benchmarks/gpu_check.py                     # on a GPU machine
    .venv/bin/python benchmarks/gpu_check.py --device cpu --quick  # smoke run anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]  # tuneatlas, and tests.support (the DAG runner)
TINY = REPO / "tests" / "workflow" / "tiny.yaml"
QUICK_TARGETS = ("results/tables/s1_t2.parquet", "results/tables/s3_f7.parquet")
COUNT_METRICS = ("accuracy", "mcc", "f1", "macro_f1")
PEARSON_RTOL = 1e-9
# Fisher: the device's float32 gradients (cuBLAS and SDPA sum in other orders than the CPU) vs
# a float64 reference; the unit tests hold the CPU to 1e-4 on every eigenvalue above 1e-6 of
# the largest, the check allows 10x that on the top FISHER_TOP of each layer.
FISHER_RTOL = 1e-3
FISHER_TOP = 5
# Training: TRAIN_STEPS steps must lower the loss (the last 5 steps' mean at most LOSS_DROP x
# the first 3 steps'), where a broken device path (NaN, no gradient, a frozen optimiser) leaves
# it flat or not finite. Measured on the CPU: the LLaMA falls from 5.41 to 3.47 (0.64); the toy
# SimCSE encoder only falls to its plateau near ln(batch) = 3.47, from 3.69 to 3.38 (0.91).
# The same thresholds hold on a GPU, whose runs draw other dropout masks (bf16 adds ~1e-2
# relative noise): the CPU fp32 run is reported beside them, not compared step by step.
TRAIN_STEPS = 30
LOSS_DROP = {"simcse": 0.97, "pretrain": 0.9}
WORDS = "the a film plot actor music song band good bad long short story scene".split()


class CheckFailed(RuntimeError):
    pass


def say(msg: str) -> None:
    print(f"[gpu-check] {msg}", flush=True)


def cuda_info(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }
    if device == "cuda":
        if not torch.cuda.is_available():
            why = (
                "this torch is a CPU-only build"
                if torch.version.cuda is None
                else f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU"
                f" (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')},"
                f" nvidia-smi {'found' if shutil.which('nvidia-smi') else 'not found'})"
            )
            print(
                f"gpu-check: CUDA is not available: {why}.\n"
                "  make gpu-check needs a machine with an NVIDIA GPU and a CUDA build of torch\n"
                "  (e.g. pip install torch==2.13.0 from the CUDA index). For a CPU smoke run of\n"
                "  this script: .venv/bin/python benchmarks/gpu_check.py --device cpu --quick",
                file=sys.stderr,
            )
            raise SystemExit(2)
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    return info


# --- 1-2: the tiny DAG --------------------------------------------------------------------------
def run_dag(
    name: str, workdir: Path, device: str, precision: str, cores: int, targets, timeout: float
) -> dict[str, Any]:
    from tests.support import snakemake

    config = yaml.safe_load(TINY.read_text())
    config["device"] = device
    config.setdefault("train", {})["precision"] = precision
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "config.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    say(f"{name}: snakemake in {workdir} (device {device}, {precision}, {cores} cores)")
    t0 = time.perf_counter()
    log = workdir / "snakemake.log"
    args = ("--configfile", str(cfg), "--cores", str(cores), *targets)
    try:
        proc = snakemake(workdir, *args, check=False, timeout=max(timeout, 1), log=log)
    except subprocess.TimeoutExpired:
        raise CheckFailed(
            f"{name}: the DAG ran past the remaining budget ({timeout:.0f} s); log: {log}"
        ) from None
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        raise CheckFailed(f"{name}: snakemake failed ({proc.returncode}); log {log}:\n{tail}")
    # what the training jobs really ran on (the engine logs it), and with which precision
    devices = set()
    for train_log in (workdir / "results" / "logs" / "train").glob("*.log"):
        devices.update(re.findall(r"device (\S+)", train_log.read_text()))
    precisions = {
        (yaml.safe_load(p.read_text()) or {}).get("precision")
        for p in (workdir / "results" / "runs").glob("*/spec.yaml")
    }
    if device == "cuda" and not any(d.startswith("cuda") for d in devices):
        raise CheckFailed(f"{name}: training ran on {sorted(devices)}, not on CUDA")
    if precisions != {precision}:
        raise CheckFailed(f"{name}: run specs have precision {sorted(map(str, precisions))}")
    say(f"{name}: done in {seconds:.1f} s; training devices {sorted(devices)}")
    return {
        "seconds": round(seconds, 2),
        "per_rule": rule_seconds(workdir),
        "train_devices": sorted(devices),
    }


def rule_seconds(workdir: Path) -> dict[str, dict[str, float]]:
    """Per rule: its jobs and their summed wall seconds (the rules' `benchmark:` files)."""
    per_rule: dict[str, dict[str, float]] = {}
    for tsv in sorted((workdir / "results" / "benchmarks").glob("*/*.tsv")):
        rule = tsv.parent.name
        s = float(tsv.read_text().splitlines()[1].split("\t")[0])
        r = per_rule.setdefault(rule, {"jobs": 0, "seconds": 0.0})
        r["jobs"] += 1
        r["seconds"] += s
    return per_rule


def table_differences(a: Path, b: Path) -> dict[str, float]:
    """Max |value difference| per table both DAGs built (fp32 vs bf16: information only)."""
    import pandas as pd

    out = {}
    for ta in sorted((a / "results" / "tables").glob("*.parquet")):
        tb = b / "results" / "tables" / ta.name
        if not tb.exists():
            continue
        da, db = pd.read_parquet(ta), pd.read_parquet(tb)
        if "value" in da and len(da) == len(db):
            diff = (da["value"].astype(float) - db["value"].astype(float)).abs().max()
            out[ta.stem] = round(float(diff), 6)
    return out


# --- 3: the DAG's CUDA subset scans vs the CPU --------------------------------------------------
def compare_scans(workdir: Path, device: str) -> list[dict[str, Any]]:
    import pandas as pd

    from tuneatlas.analysis.subsets.scan import scan_run
    from tuneatlas.analysis.subsets.scan_files import SCAN_FILES
    from tuneatlas.data.tasks import get_task
    from tuneatlas.io import read_parquet_meta

    rows = []
    for run_dir in sorted((workdir / "results" / "subsets").iterdir()):
        meta = read_parquet_meta(run_dir / SCAN_FILES[0])
        spec = meta["spec"] if isinstance(meta["spec"], dict) else json.loads(meta["spec"])
        if meta.get("device") != device:
            raise CheckFailed(f"scan {run_dir.name} ran on {meta.get('device')}, not {device}")
        embeddings = Path(meta["embeddings"])  # relative to the DAG's working directory
        t0 = time.perf_counter()
        cpu = scan_run(embeddings if embeddings.is_absolute() else workdir / embeddings, spec,
                       device="cpu")  # fmt: skip
        seconds = time.perf_counter() - t0
        exact = get_task(spec["task"]).metric in COUNT_METRICS
        problems = []
        for stem, ref in cpu.items():
            got = pd.read_parquet(run_dir / f"{stem}.parquet")
            try:
                pd.testing.assert_frame_equal(
                    got.reset_index(drop=True),
                    ref.reset_index(drop=True),
                    check_exact=exact,
                    rtol=0 if exact else PEARSON_RTOL,
                    atol=0 if exact else PEARSON_RTOL,
                    check_dtype=False,
                )
            except AssertionError as err:
                problems.append(f"{stem}: {str(err).splitlines()[0]}")
        rows.append(
            {
                "run": run_dir.name,
                "metric": get_task(spec["task"]).metric,
                "exact": exact,
                "equal": not problems,
                "problems": problems,
                "cpu_seconds": round(seconds, 2),
            }
        )
        say(f"scan {run_dir.name}: {device} vs cpu {'equal' if not problems else problems}")
    if not rows:
        raise CheckFailed(f"no subset scans under {workdir / 'results' / 'subsets'}")
    return rows


# --- 4: SubsetScorer on synthetic embeddings ----------------------------------------------------
def problem(kind: str, n: int, k: int, seed: int) -> dict[str, Any]:
    """Embeddings with a signal: labels from a noisy linear teacher, the head near the teacher."""
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((n, k)).astype(np.float32)
    c = {"binary": 2, "multiclass": 3, "regression": 1}[kind]
    teacher = rng.standard_normal((c, k)).astype(np.float32) / np.sqrt(k)
    logits = h @ teacher.T + 0.5 * rng.standard_normal((n, c)).astype(np.float32)
    w = teacher + 0.05 * rng.standard_normal((c, k)).astype(np.float32)
    b = 0.01 * rng.standard_normal(c).astype(np.float32)
    if kind == "regression":
        return dict(hidden=h, labels=logits[:, 0], weight=w, bias=b, metric="pearson",
                    regression=True)  # fmt: skip
    metric = "accuracy" if kind == "binary" else "macro_f1"
    return dict(hidden=h, labels=logits.argmax(1), weight=w, bias=b, metric=metric,
                regression=False)  # fmt: skip


def _timed(fn):
    import torch

    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def _same(a, b, exact: bool) -> tuple[bool, float]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return False, float("inf")
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    if exact:
        return bool(np.array_equal(a, b)), diff
    return bool(np.allclose(a, b, rtol=PEARSON_RTOL, atol=PEARSON_RTOL)), diff


def compare_scorers(device: str, quick: bool) -> tuple[list[dict[str, Any]], dict[str, float]]:
    from tuneatlas.analysis.subsets.combinatorics import (
        n_combinations,
        paper_sample_size,
        sample_combinations,
    )
    from tuneatlas.analysis.subsets.scorer import SubsetScorer

    k_big, k_scan = (96, 48) if quick else (768, 384)
    cases = [
        ("binary", 872, k_big),  # SST-2's valid split at bert-base width
        ("multiclass", 1000, 128 if not quick else 32),
        ("regression", 1500, 256 if not quick else 32),
    ]
    rows, timings = [], {}
    for kind, n, k in cases:
        p = problem(kind, n, k, seed=len(rows))
        exact = p["metric"] in COUNT_METRICS
        scorers = {d: SubsetScorer(**p, device=d) for d in ("cpu", device)}
        n_tri = max(paper_sample_size(k, 3, 1e-3), 1000)
        tri = sample_combinations(k, 3, n_tri, seed=0)
        res = {}
        for d, s in scorers.items():
            pairs, tp = _timed(s.pair_scores)
            sample, ts = _timed(lambda s=s, tri=tri: s.score(tri))
            res[d] = (pairs, sample)
            timings[f"{kind} K={k}: all pairs on {d}"] = tp
            timings[f"{kind} K={k}: {n_tri} sampled triples on {d}"] = ts
        for what, i in (("all pairs", 0), (f"{n_tri} sampled triples", 1)):
            ok, diff = _same(res["cpu"][i], res[device][i], exact)
            rows.append({"case": f"{kind} K={k} N={n} {p['metric']}", "what": what,
                         "n": len(res["cpu"][i]), "equal": ok, "max_diff": diff})  # fmt: skip
    # exhaustive triples: top-10 and histogram, both devices (block tiling + compiled kernels)
    p = problem("binary", 872, k_scan, seed=7)
    scans = {}
    for d in ("cpu", device):
        s = SubsetScorer(**p, device=d)
        scans[d], t = _timed(lambda s=s: s.scan_triples(k=10, edges=50))
        timings[f"binary K={k_scan}: all {n_combinations(k_scan, 3)} triples on {d}"] = t
    (dc, sc, hc), (dg, sg, hg) = scans["cpu"], scans[device]
    ok = bool(np.array_equal(dc, dg) and np.array_equal(sc, sg) and np.array_equal(hc, hg))
    rows.append({"case": f"binary K={k_scan} N=872 accuracy", "what": "all triples: top-10 + "
                 "histogram", "n": n_combinations(k_scan, 3), "equal": ok,
                 "max_diff": float(np.max(np.abs(sc - sg)))})  # fmt: skip
    if device == "cuda":  # the paper-scale scan, timed on the GPU only
        s = SubsetScorer(**problem("binary", 872, k_big, seed=8), device=device)
        _, t = _timed(lambda: s.scan_triples(k=10, edges=100))
        timings[f"binary K={k_big}: all {n_combinations(k_big, 3)} triples on cuda"] = t
    for r in rows:
        say(f"scorer {r['case']}, {r['what']}: {'equal' if r['equal'] else 'DIFFERENT'}"
            f" (max diff {r['max_diff']:.3g})")  # fmt: skip
    return rows, timings


# --- 5: the Fisher engine, SimCSE and pre-training on the device ------------------------------
def _tiny_bert():
    """The unit tests' tiny BERT classifier (tests/unit/test_fisher.py), fixed seed, eval mode."""
    import torch
    from transformers import BertConfig, BertModel

    from tuneatlas.models.classifier import SequenceClassifier

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32, pad_token_id=0,
    )  # fmt: skip
    return SequenceClassifier(BertModel(config, add_pooling_layer=False), 3).eval()


def _label_logprob(ids, mask, labels):
    def fn(model):
        logits = model(ids, mask).logits
        return logits.log_softmax(-1).gather(1, labels[:, None]).squeeze(1)

    return fn


def check_fisher(device: str) -> dict[str, Any]:
    """Per-layer Fisher spectra of a tiny BERT on ``device`` (``layer_grams``, its defaults) vs
    the float64 CPU reference (N separate backward passes of a float64 copy): effective ranks
    identical, the top eigenvalues within ``FISHER_RTOL``."""
    import copy

    import torch

    from tuneatlas.analysis.fisher.grams import layer_grams
    from tuneatlas.analysis.fisher.reference import reference_grams
    from tuneatlas.analysis.fisher.spectrum import fisher_spectrum

    n = 24
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 60, (n, 12), generator=g)
    mask = (torch.arange(12)[None, :] < torch.randint(4, 13, (n,), generator=g)[:, None]).long()
    ids, labels = ids * mask, torch.arange(n) % 3
    model = _tiny_bert()
    ref_model = copy.deepcopy(model).double()
    ref = fisher_spectrum(reference_grams(ref_model, _label_logprob(ids, mask, labels)))
    dev = torch.device(device)
    got = layer_grams(model.to(dev), _label_logprob(ids.to(dev), mask.to(dev), labels.to(dev)))
    spec = fisher_spectrum(got.grams.detach().to("cpu", torch.float64))
    top_ref, top = ref.eigenvalues[:, :FISHER_TOP], spec.eigenvalues[:, :FISHER_TOP]
    err = float(((top - top_ref).abs() / top_ref.abs().clamp_min(1e-30)).max())
    same_erank = spec.erank.tolist() == ref.erank.tolist()
    return {"erank": spec.erank.tolist(), "erank_reference": ref.erank.tolist(),
            "top_eigenvalue_max_rel_err": err,
            "ok": same_erank and err <= FISHER_RTOL}  # fmt: skip


def _texts(n: int, seed: int) -> list[str]:
    g = np.random.default_rng(seed)
    return [" ".join(g.choice(WORDS, size=int(g.integers(5, 10)))) for _ in range(n)]


def _step_losses(run_dir: Path) -> list[float]:
    """The training loss of every optimiser step (the loop's metrics.parquet)."""
    import pandas as pd

    m = pd.read_parquet(run_dir / "metrics.parquet")
    return m[m["split"].isna()].sort_values("step")["loss"].astype(float).tolist()


def _loss_verdict(losses: list[float], drop: float) -> dict[str, Any]:
    """Finite, and the mean of the last 5 steps at most `drop` x the mean of the first 3."""
    first, last = float(np.mean(losses[:3])), float(np.mean(losses[-5:]))
    finite = bool(np.all(np.isfinite(losses)))
    return {"steps": len(losses), "first3": round(first, 4), "last5": round(last, 4),
            "finite": finite, "ok": finite and last <= drop * first}  # fmt: skip


def train_simcse(root: Path, device: str, precision: str) -> list[float]:
    """A toy BERT built offline, then SimCSE steps through the recipe; the step losses."""
    import pandas as pd

    from tuneatlas.engine.recipes.mlm import build_bert
    from tuneatlas.engine.recipes.simcse import SimCSESpec, simcse
    from tuneatlas.spec import OptimSpec

    texts = _texts(200, seed=1)
    corpus = root / "corpus"
    if not corpus.exists():
        corpus.mkdir(parents=True)
        pd.DataFrame({"idx": range(len(texts)), "text": texts}).to_parquet(corpus / "train.parquet")
        cfg = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, vocab_size=60)
        build_bert({**cfg, "dropout": 0.1}, texts, root / "base", seed=0)
    spec = SimCSESpec(
        run=f"gpu-check-simcse-{device}", task="simcse", dataset="c", model="b", seed=3,
        epochs=100, max_steps=TRAIN_STEPS, batch_size=32, max_length=16, dropout=0.1,
        optim=OptimSpec(lr=1e-3), checkpoint_every=0, heldout=20, precision=precision,
    )  # fmt: skip
    run = root / f"run-{device}"
    simcse(spec, corpus, root / "base", root / f"model-{device}", run, device=device)
    return _step_losses(run)


def train_causal_lm(root: Path, device: str, precision: str) -> list[float]:
    """A BPE and packed tokens from toy sentences, then causal-LM pre-training steps of a
    2-layer LLaMA through the recipe; the step losses."""
    from tuneatlas.data.tokens import pack, train_bpe
    from tuneatlas.engine.recipes.causal_lm import pretrain
    from tuneatlas.spec import OptimSpec, PretrainSpec

    tokens = root / "tokens"
    if not tokens.exists():
        texts = _texts(400, seed=2)
        pack(texts, train_bpe(texts, 200, tokens), tokens)
    spec = PretrainSpec(
        run=f"gpu-check-pretrain-{device}", dataset="sentences", tokens="tokens", seed=0,
        epochs=1000, max_steps=TRAIN_STEPS, batch_size=16, eval_batch_size=16, seq_len=16,
        hidden_size=32, num_layers=2, num_heads=2, ffn_widths=[64, 0],
        optim=OptimSpec(lr=3e-3), checkpoint_every=0, precision=precision,
    )  # fmt: skip
    run = root / f"run-{device}"
    pretrain(spec, tokens, run, device=device)
    return _step_losses(run)


def check_training(name: str, train, root: Path, device: str, precision: str) -> dict[str, Any]:
    """`train` on the device (its precision): finite, decreasing losses. On a GPU the CPU fp32
    run of the same spec is reported beside it (information, see LOSS_DROP)."""
    out = _loss_verdict(train(root / name, device, precision), LOSS_DROP[name])
    out["precision"] = precision
    if device != "cpu":
        out["cpu_fp32"] = _loss_verdict(train(root / name, "cpu", "fp32"), LOSS_DROP[name])
    return out


def check_engines(args, root: Path, steps: dict[str, float], result: dict[str, Any]) -> list[str]:
    """Step 5: the Fisher engine, SimCSE and pre-training on the device; a PASS/FAIL line
    each. Fills `steps` and `result`; returns the failures."""
    import torch

    bf16 = args.device == "cuda" and torch.cuda.is_bf16_supported()
    precision = "bf16" if bf16 else "fp32"
    checks = {
        "fisher spectrum": lambda: check_fisher(args.device),
        f"simcse ({precision})": lambda: check_training(
            "simcse", train_simcse, root, args.device, precision
        ),
        f"causal-LM pre-training ({precision})": lambda: check_training(
            "pretrain", train_causal_lm, root, args.device, precision
        ),
    }
    failures = []
    for name, run in checks.items():
        t0 = time.perf_counter()
        try:
            res = run()
        except Exception as exc:  # noqa: BLE001 - a crash is this check's FAIL, not the script's
            res = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
        steps[f"{name} on {args.device}"] = time.perf_counter() - t0
        result.setdefault("engines", {})[name] = res
        detail = {k: v for k, v in res.items() if k != "ok"}
        say(f"{'PASS' if res['ok'] else 'FAIL'} {name} on {args.device}: {detail}")
        if not res["ok"]:
            failures.append(f"{name}: {detail}")
    return failures


# --- main ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--quick", action="store_true", help="two tables, small synthetic problems")
    ap.add_argument("--cores", type=int, default=min(os.cpu_count() or 1, 16))
    ap.add_argument("--budget", type=float, default=480, help="seconds for the whole check")
    ap.add_argument("--keep", default=None, help="work directory to keep (default: a temp dir)")
    ap.add_argument("--skip-dag", action="store_true", help="no DAG (steps 1-3)")
    ap.add_argument(
        "--skip-engines", action="store_true", help="no Fisher, SimCSE, pre-training (step 5)"
    )
    return ap.parse_args(argv)


def check_dags(
    args, root: Path, left, steps: dict[str, float], result: dict[str, Any]
) -> list[str]:
    """Steps 1-3: the DAG in fp32 and bf16, then its subset scans recomputed on the CPU.
    Fills `steps` and `result`; returns the failures."""
    targets = QUICK_TARGETS if args.quick else ()
    dags = [("dag_fp32", "fp32"), ("dag_bf16", "bf16")]
    if args.quick and args.device == "cpu":
        # bf16 is autocast on CUDA only: on the CPU the second DAG would train in fp32 again
        dags = dags[:1]
        say("quick CPU run: the bf16 DAG is skipped (the CPU trains it in fp32)")
    for name, precision in dags:
        r = run_dag(name, root / name, args.device, precision, args.cores, targets, left())
        result[name] = r
        steps[f"tiny DAG, {precision}"] = r["seconds"]
    if len(dags) == 2:
        diffs = table_differences(root / "dag_fp32", root / "dag_bf16")
        result["fp32_vs_bf16_max_value_diff"] = diffs
    t0 = time.perf_counter()
    scans = compare_scans(root / "dag_fp32", args.device)
    steps["DAG subset scans recomputed on cpu"] = time.perf_counter() - t0
    result["scans"] = scans
    return [f"scan {r['run']}: {r['problems']}" for r in scans if not r["equal"]]


def check_scorers(args, steps: dict[str, float], result: dict[str, Any]) -> list[str]:
    """Step 4: SubsetScorer on the device vs the CPU. Fills `steps` and `result`."""
    t0 = time.perf_counter()
    rows, timings = compare_scorers(args.device, args.quick)
    steps["SubsetScorer cpu vs device"] = time.perf_counter() - t0
    result["scorers"] = rows
    result["scorer_seconds"] = {k: round(v, 4) for k, v in timings.items()}
    return [f"scorer {r['case']}, {r['what']}" for r in rows if not r["equal"]]


def print_timings(steps: dict[str, float], result: dict[str, Any], total: float) -> None:
    print()
    print(f"{'step':<58} {'seconds':>9}")
    print("-" * 68)
    for name, s in steps.items():
        print(f"{name:<58} {s:>9.1f}")
    for dag in ("dag_fp32", "dag_bf16"):
        for rule, r in (result.get(dag) or {}).get("per_rule", {}).items():
            label = f"  {dag}: {rule} ({r['jobs']} jobs, summed)"
            print(f"{label:<58} {r['seconds']:>9.1f}")
    for name, s in (result.get("scorer_seconds") or {}).items():
        print(f"  {name:<56} {s:>9.3f}")
    print("-" * 68)
    print(f"{'total':<58} {total:>9.1f}")
    print()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    info = cuda_info(args.device)
    say(f"torch {info['torch']} (CUDA {info['torch_cuda']}); " + (
        f"GPU {info['gpu']}, {info['gpu_memory_gib']} GiB" if args.device == "cuda" else "CPU"
    ))  # fmt: skip
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="tuneatlas-gpu-check-"))
    steps: dict[str, float] = {}
    result: dict[str, Any] = {"device": args.device, "quick": args.quick, **info}
    failures: list[str] = []

    def left() -> float:
        return args.budget - (time.perf_counter() - t_start)

    try:
        if not args.skip_dag:
            failures += check_dags(args, root, left, steps, result)
        failures += check_scorers(args, steps, result)
        if not args.skip_engines:
            failures += check_engines(args, root / "engines", steps, result)
    except CheckFailed as err:
        failures.append(str(err))
    total = time.perf_counter() - t_start
    if total > args.budget:
        failures.append(f"the check took {total:.0f} s, over its budget of {args.budget:.0f} s")

    print_timings(steps, result, total)
    result.update(ok=not failures, failures=failures, total_seconds=round(total, 1),
                  steps={k: round(v, 2) for k, v in steps.items()}, workdir=str(root))  # fmt: skip
    if failures:
        print("gpu-check FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
    else:
        say("all checks passed")
    print(json.dumps(result, default=str))
    if not args.keep and not failures:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if not failures else 1


if __name__ == "__main__":
    raise SystemExit(main())
