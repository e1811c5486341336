"""`tuneatlas estimate`: its FLOPs against torch's own count, its peak memory against a measured
CPU peak, and the refusal of a job that cannot fit its GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from tests.support import REPO
from tuneatlas.cli import main
from tuneatlas.config import validate_config
from tuneatlas.estimate import (
    Arch,
    estimate_plan,
    matmul_precision,
    settings_for,
    training_mfu,
)
from tuneatlas.plan import make_plan

SEQ = 32


def _llama(widths, hidden=64, heads=4, vocab=500):
    from tuneatlas.models.llama_ffn import FFNLlamaConfig, FFNLlamaForCausalLM

    config = FFNLlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=max(widths),
        num_hidden_layers=len(widths),
        num_attention_heads=heads,
        ffn_widths=list(widths),
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    config._attn_implementation = "eager"  # attention as matmuls, which the counter sees
    return FFNLlamaForCausalLM(config), Arch(len(widths), hidden, tuple(widths), heads, vocab, True)


def _bert(layers=2, hidden=64, ffn=128, heads=4, vocab=500):
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        attn_implementation="eager",
    )
    model = BertModel(config, add_pooling_layer=False)
    return model, Arch(layers, hidden, (ffn,) * layers, heads, vocab)


def _counted_flops(model, ids, causal: bool) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        if causal:
            loss = model(input_ids=ids, labels=ids).loss
        else:
            loss = model(input_ids=ids).last_hidden_state.square().mean()
        loss.backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_training_flops_match_torchs_count_of_a_tiny_model(kind):
    """6·N_mm + 12·L·d·s per token (forward + backward) against FlopCounterMode, which counts
    every matrix product (linear layers, attention scores, LM head) of the step."""
    torch.manual_seed(0)
    model, arch = _llama([64, 0, 128]) if kind == "llama" else _bert()
    ids = torch.randint(0, arch.vocab, (2, SEQ))
    counted = _counted_flops(model, ids, causal=kind == "llama")
    estimated = arch.flops_per_token(SEQ, backward=True) * ids.numel()
    assert estimated == pytest.approx(counted, rel=0.03)
    # and the parameter count it works with is the model's own, less BERT's position table
    # (0.4% of bert-base: a tiny model's is larger), biases and norms
    own = sum(p.numel() for n, p in model.named_parameters() if "position_embeddings" not in n)
    assert arch.params == pytest.approx(own, rel=0.05)


MEASURE = textwrap.dedent(
    """
    import json, sys, torch
    sys.path.insert(0, sys.argv[2])
    from tests.unit.test_estimate import _bert, _llama
    torch.set_num_threads(1)
    torch.manual_seed(0)
    kind, batch, seq = sys.argv[1], int(sys.argv[3]), int(sys.argv[4])
    model, arch = _llama([1024] * 4, 256, 4, 5000) if kind == "llama" else _bert(
        4, 256, 1024, 4, 5000)
    model.train()

    def step(n):
        ids = torch.randint(0, arch.vocab, (n, seq))
        opt = torch.optim.AdamW(model.parameters())
        out = model(input_ids=ids, labels=ids) if kind == "llama" else model(input_ids=ids)
        loss = out.loss if kind == "llama" else out.last_hidden_state.square().mean()
        loss.backward()
        opt.step()
        return opt

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    opt = step(1)  # loads the kernels' libraries; its state and grads are dropped below
    del opt
    model.zero_grad(set_to_none=True)
    base = status("VmRSS:")
    open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to now
    opt = step(batch)
    print(json.dumps({"delta": status("VmHWM:") - base}))
    """
)


def test_mfu_counts_the_lm_head_and_divides_by_the_peak_of_the_precision_used():
    """A vocabulary much wider than the model, so the LM head is most of the step: the FLOPs
    behind the MFU are torch's direct count of a training step (not 6 N without the head),
    and the peak is the GPU's at bf16, TF32 or fp32, as the run computed."""
    torch.manual_seed(0)
    model, arch = _llama([64, 64], hidden=32, heads=4, vocab=4000)
    ids = torch.randint(0, arch.vocab, (2, SEQ))
    counted = _counted_flops(model, ids, causal=True) / ids.numel()
    head = 6 * arch.vocab * arch.hidden
    assert head > 0.5 * counted  # the head dominates: leaving it out would fail below
    rate = 1e6  # tokens/s
    for precision, tf32, peak in (("bf16", False, 989), ("fp32", True, 494), ("fp32", False, 67)):
        used = matmul_precision(precision, tf32)
        tflops, mfu = training_mfu(rate, arch, SEQ, "NVIDIA H100 80GB HBM3", used)
        assert tflops == pytest.approx(rate * counted / 1e12, rel=0.03)
        assert mfu == pytest.approx(tflops / peak)
    assert training_mfu(rate, arch, SEQ, "NVIDIA A100-SXM4-40GB", "bf16")[1] == pytest.approx(
        tflops / 312
    )
    assert training_mfu(rate, arch, SEQ, "Some Other GPU", "bf16")[1] is None


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_peak_memory_matches_a_measured_cpu_training_step(kind):
    """Gradients + AdamW moments + the activations of one step, against the peak resident memory
    a real step adds (a fresh process; the weights were resident before). On CPU in fp32 with
    eager attention the scores are materialised, so the estimate counts them (scores=True);
    tolerance 25%: the allocator's rounding and the temporaries of the backward pass."""
    batch, seq = 16, 128
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE, kind, str(REPO), str(batch), str(seq)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        cwd=REPO,
    )
    measured = json.loads(proc.stdout.strip().splitlines()[-1])["delta"]
    _, arch = _llama([1024] * 4, 256, 4, 5000) if kind == "llama" else _bert(4, 256, 1024, 4, 5000)
    estimated = arch.params * 12 + batch * arch.activation_bytes(seq, 4, scores=True)
    print(f"{kind}: estimated {estimated / 1e6:.0f} MB, measured {measured / 1e6:.0f} MB")
    assert estimated == pytest.approx(measured, rel=0.25), (estimated, measured)


def _paper(tmp_path: Path, **sizes) -> Path:
    raw = yaml.safe_load((REPO / "paper.yaml").read_text())
    for size, micro in sizes.items():
        raw["studies"]["s4"]["sizes"][size]["micro_batch_size"] = micro
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_full_batch_forward_pass_is_refused_with_the_job_memory_and_key(tmp_path, capsys):
    config = _paper(tmp_path, **{"285M": 278})  # the whole global batch in one pass
    with pytest.raises(SystemExit) as exit_:
        main(["estimate", str(config), "--gpu", "h100"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "s4-285m-baseline does not fit" in x)
    assert "lower studies.s4.sizes.285M.micro_batch_size (now 278)" in line
    needs = float(line.split("needs ")[1].split(" GB")[0])
    # 0.414e9 parameters x 18 bytes (fp32 weights, grads, AdamW, bf16 copies) + 278 sequences
    # of 1,024 tokens: 12 layers x 2 bytes x (10 x 1280 + 4 x 4480), 50,257 logits x 14 bytes
    per_token = 12 * 2 * (10 * 1280 + 4 * 4480) + 50257 * 14 + 3 * 1280
    assert needs == pytest.approx((414e6 * 18 + 278 * 1024 * per_token) / 1e9, rel=0.01)
    assert err.count("does not fit") == 16  # every 285M variant, nothing else


def test_paper_scale_fits_an_80gb_gpu_and_says_how_long_the_2b_runs_take(capsys):
    config = validate_config(yaml.safe_load((REPO / "paper.yaml").read_text()))
    found = estimate_plan(config, make_plan(config), settings_for("h100"))
    assert {e.verdict for e in found} == {"fits", "exceeds runtime"}
    slow = [e for e in found if e.verdict == "exceeds runtime"]
    assert sorted(e.job for e in slow) == ["s4-2b-baseline", "s4-2b-final_90", "s4-2b-middle_70"]
    # 6 x 2.54e9 parameters x 40e9 tokens (+ attention) at 40% of 989 TFLOPS: ~427 h
    assert all(400 < e.hours < 460 and "studies.s4.gpus" in e.note for e in slow)
    # every planned GPU job has an estimate: 1,202 + 6 fine-tunes, 5 SimCSE, 180 Fisher trials,
    # 16 embeddings, 35 pre-trainings and 35 harness runs (S5 clusters with tf-idf: no GPU)
    assert config["studies"]["s5"]["embedder"]["kind"] == "tfidf"
    assert len(found) == 1202 + 6 + 5 + 180 + 16 + 35 + 35
    assert main(["estimate", str(REPO / "paper.yaml"), "--json"]) is None
    doc = json.loads(capsys.readouterr().out)
    assert doc["totals"]["study"]["s4"]["jobs"] == 70 and doc["assumptions"]["mfu"] == 0.4


def test_a_jobs_resources_follow_its_estimate_and_grow_with_each_attempt():
    from tuneatlas.estimate import JobEstimate, job_resources

    settings = settings_for("h100", max_hours=48)
    est = JobEstimate("pretrain", "x", "s4", 414_000_000, 1e19, 31.0, 1, 9.15, 9.15)
    first = job_resources(est, 1, settings, {"runtime": 60, "mem_mb": 4000})
    assert first == {"runtime": 1098, "mem_mb": 8000 + 3312}  # 2 x 9.15 h; 8 GB + 8 B/param
    second = job_resources(est, 2, settings, {})
    assert second["mem_mb"] == 2 * first["mem_mb"] and second["runtime"] == 2 * 1098
    assert job_resources(est, 3, settings, {})["runtime"] == 48 * 60  # the site's limit
    short = JobEstimate("fisher", "y", "s2", 3e8, 1e12, 6.0, 1, 0.01, 0.01)
    assert job_resources(short, 1, settings, {})["runtime"] == 15  # a floor for start-up
    unknown = JobEstimate("train", "z", "s3", 0, 0.0, 0.0, 1, 0.0, 0.0, "unknown")
    assert job_resources(unknown, 2, settings, {"runtime": 240}) == {"runtime": 480}
