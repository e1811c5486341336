"""S4's model, tokens and pre-training recipe: FFN-inactive layers are attention-only, the model
round-trips through the Auto classes (also in a fresh process), the BPE is deterministic, the
packed blocks are the corpus's tokens, and pre-training lowers the validation loss and resumes
exactly."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from tuneatlas.data import synthetic
from tuneatlas.data.tokens import EOS, META_FILE, TokenBlocks, pack, train_bpe
from tuneatlas.engine.recipes.causal_lm import pretrain
from tuneatlas.models.layouts import llama_params
from tuneatlas.models.llama_ffn import FFNLlamaConfig, FFNLlamaForCausalLM
from tuneatlas.spec import OptimSpec, PretrainSpec, ScheduleSpec


def _config(widths):
    return FFNLlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=len(widths),
        num_attention_heads=4,
        ffn_widths=widths,
        max_position_embeddings=32,
    )


def test_an_ffn_inactive_layer_is_attention_plus_residual_only():
    torch.manual_seed(0)
    model = FFNLlamaForCausalLM(_config([0, 96])).eval()
    assert sum(p.numel() for p in model.parameters()) == llama_params(32, [0, 96], 97)
    layer = model.model.layers[0]
    assert layer.mlp is None and layer.post_attention_layernorm is None
    assert model.model.layers[1].mlp.up_proj.out_features == 96
    h = torch.randn(2, 5, 32)
    pos = torch.arange(5).unsqueeze(0)
    emb = model.model.rotary_emb(h, position_ids=pos)
    mask = torch.full((5, 5), float("-inf")).triu(1)[None, None]
    attended, _ = layer.self_attn(
        hidden_states=layer.input_layernorm(h),
        attention_mask=mask,
        position_ids=pos,
        position_embeddings=emb,
    )
    out = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=emb)
    torch.testing.assert_close(out, h + attended)


def test_the_model_round_trips_through_the_auto_classes_in_a_fresh_process(tmp_path):
    torch.manual_seed(0)
    model = FFNLlamaForCausalLM(_config([128, 0, 64])).eval()
    model.save_pretrained(tmp_path)
    ids = torch.randint(0, 97, (1, 7))
    expected = model(ids).logits[0, -1].tolist()
    code = (
        "import sys, json, torch; import tuneatlas.models.llama_ffn;"
        " from transformers import AutoModelForCausalLM;"
        f" m = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r}).eval();"
        f" logits = m(torch.tensor({ids.tolist()})).logits[0, -1].tolist();"
        " print(json.dumps([m.config.ffn_widths, logits]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    widths, logits = json.loads(out.stdout.strip().splitlines()[-1])
    assert widths == [128, 0, 64]
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


def test_a_config_with_the_wrong_number_of_widths_is_refused():
    with pytest.raises(Exception, match="ffn_widths has 2 entries for 3 layers"):  # hub wraps it
        FFNLlamaConfig(
            num_hidden_layers=3, hidden_size=32, num_attention_heads=4, ffn_widths=[1, 2]
        )


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokens")
    docs, _ = synthetic.pretrain_corpus(300, seed=0)
    texts = docs["text"].tolist()
    tok = train_bpe(texts, 400, root)
    meta = pack(texts, tok, root)
    return {"dir": root, "texts": texts, "tokenizer": tok, "meta": meta}


def test_the_bpe_is_deterministic(tokens, tmp_path):
    train_bpe(tokens["texts"], 400, tmp_path)
    assert (tmp_path / "tokenizer.json").read_text() == (
        tokens["dir"] / "tokenizer.json"
    ).read_text()


def test_packed_tokens_are_the_documents_tokens_each_followed_by_eos(tokens):
    tok, meta = tokens["tokenizer"], tokens["meta"]
    eos = tok.convert_tokens_to_ids(EOS)
    n_valid = meta["valid_documents"]
    train_docs = tokens["texts"][:-n_valid]
    expected = [
        t for d in train_docs for t in (*tok(d, add_special_tokens=False)["input_ids"], eos)
    ]
    packed = np.fromfile(tokens["dir"] / "train.bin", dtype=meta["dtype"])
    assert packed.tolist() == expected and meta["train_tokens"] == len(expected)
    assert json.loads((tokens["dir"] / META_FILE).read_text())["vocab_size"] == len(tok) == 400
    blocks = TokenBlocks.open(tokens["dir"], "train", 16)
    assert len(blocks) == (len(expected) - 1) // 16
    batch = blocks.batch([0, 2])["input_ids"]
    assert batch.shape == (2, 17) and batch[1].tolist() == expected[32:49]


SPEC = PretrainSpec(
    run="pre",
    task="pretrain",
    dataset="corpus",
    tokens="tokens",
    seed=0,
    epochs=50,
    max_steps=12,
    batch_size=8,
    micro_batch_size=4,
    eval_batch_size=16,
    seq_len=32,
    hidden_size=32,
    num_layers=3,
    num_heads=4,
    ffn_widths=[0, 0, 192],
    optim=OptimSpec(lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1),
    schedule=ScheduleSpec(name="cosine", warmup_steps=3),
    checkpoint_every=5,
)


class Crash:
    """Raises at step `at` (a simulated kill; never with None). A checkpoint resumes only with
    the hooks it was written with, so the resumed run carries one that does not fire."""

    def __init__(self, at: int | None) -> None:
        self.at = at

    def on_step_end(self, state):
        if state.step == self.at:
            raise KeyboardInterrupt("simulated kill")


def test_pretraining_lowers_the_loss_saves_a_loadable_model_and_resumes_exactly(tokens, tmp_path):
    from transformers import AutoModelForCausalLM

    full = pretrain(SPEC, tokens["dir"], tmp_path / "full", device="cpu")
    assert full["valid"]["loss"] < np.log(400)  # below a uniform guess over the vocabulary
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "full" / "model")
    assert model.config.ffn_widths == [0, 0, 192]
    assert (tmp_path / "full" / "model" / "tokenizer.json").exists()
    with pytest.raises(KeyboardInterrupt):
        pretrain(SPEC, tokens["dir"], tmp_path / "broken", hooks=[Crash(8)], device="cpu")
    resumed = pretrain(SPEC, tokens["dir"], tmp_path / "broken", hooks=[Crash(None)], device="cpu")
    assert resumed["resumed_from"] == 5 and resumed["valid"] == full["valid"]


def test_gradient_accumulation_gives_the_full_batch_update(tokens, tmp_path):
    """paper.yaml's micro_batch_size splits S4's 278-1,953-sequence steps: in fp32 on CPU, 8
    sequences as micro-batches of 3, 3, 2 (weighted by their share) update the model as one
    forward pass of 8 does."""
    from safetensors.torch import load_file

    base = replace(SPEC, max_steps=4, checkpoint_every="none")
    runs = {mb: tmp_path / f"mb{mb}" for mb in (None, 3)}
    for mb, out in runs.items():
        pretrain(replace(base, micro_batch_size=mb), tokens["dir"], out, device="cpu")
    full, acc = (load_file(out / "model" / "model.safetensors") for out in runs.values())
    assert set(full) == set(acc)
    assert max(float((full[k] - acc[k]).abs().max()) for k in full) < 1e-5
    # unequal micro-batches (3, 3, 2) averaged as equals would turn the gradient: it must not
    losses = [pd.read_parquet(out / "metrics.parquet")["loss"].dropna() for out in runs.values()]
    np.testing.assert_allclose(losses[0].to_numpy(), losses[1].to_numpy(), rtol=1e-5)


def test_a_retokenised_corpus_of_the_same_size_never_resumes_a_stale_checkpoint(tokens, tmp_path):
    import shutil

    from tuneatlas.data.tokens import content_hash

    spec = replace(SPEC, max_steps=8)
    with pytest.raises(KeyboardInterrupt):
        pretrain(spec, tokens["dir"], tmp_path / "run", hooks=[Crash(7)], device="cpu")
    # a changed corpus that packs to exactly as many tokens: its train.bin reversed, with the
    # hash `tokenize` would write for it
    changed = tmp_path / "changed"
    shutil.copytree(tokens["dir"], changed)
    meta = json.loads((changed / META_FILE).read_text())
    ids = np.fromfile(changed / "train.bin", dtype=meta["dtype"])[::-1].copy()
    ids.tofile(changed / "train.bin")
    meta["train_sha256"] = hashlib.sha256(ids.tobytes()).hexdigest()
    (changed / META_FILE).write_text(json.dumps(meta))
    assert (changed / "train.bin").stat().st_size == (tokens["dir"] / "train.bin").stat().st_size
    assert content_hash(changed)["train"] != content_hash(tokens["dir"])["train"]
    # pack records the hash of the bytes it wrote; a file without one is hashed when read
    original = json.loads((tokens["dir"] / META_FILE).read_text())["train_sha256"]
    assert original == hashlib.sha256((tokens["dir"] / "train.bin").read_bytes()).hexdigest()
    resumed = pretrain(spec, changed, tmp_path / "run", hooks=[Crash(None)], device="cpu")
    assert resumed["resumed_from"] in (None, 0)
    # the same tokens do resume
    with pytest.raises(KeyboardInterrupt):
        pretrain(spec, tokens["dir"], tmp_path / "again", hooks=[Crash(7)], device="cpu")
    again = pretrain(spec, tokens["dir"], tmp_path / "again", hooks=[Crash(None)], device="cpu")
    assert again["resumed_from"] == 5


def test_compiled_pretraining_follows_the_eager_run_and_resumes(tokens, tmp_path):
    """`compile: true` (torch.compile, Inductor's C++ kernels on CPU) trains the same model as
    eager up to rounding, and its checkpoint (the eager module's weights) resumes."""
    spec = replace(SPEC, max_steps=6, micro_batch_size=None, checkpoint_every=3)
    eager = pretrain(spec, tokens["dir"], tmp_path / "eager", device="cpu")
    compiled = replace(spec, compile=True)
    with pytest.raises(KeyboardInterrupt):
        pretrain(compiled, tokens["dir"], tmp_path / "compiled", hooks=[Crash(4)], device="cpu")
    resumed = pretrain(
        compiled, tokens["dir"], tmp_path / "compiled", hooks=[Crash(None)], device="cpu"
    )
    assert resumed["resumed_from"] == 3
    losses = [
        pd.read_parquet(tmp_path / run / "metrics.parquet")["loss"].dropna().to_numpy()
        for run in ("eager", "compiled")
    ]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)
    assert resumed["valid"]["loss"] == pytest.approx(eager["valid"]["loss"], rel=1e-4)


def test_keep_best_is_refused_for_pretraining(tokens, tmp_path):
    with pytest.raises(ValueError, match="keep_best"):
        pretrain(replace(SPEC, keep_best=True), tokens["dir"], tmp_path, device="cpu")


def test_torchrun_with_two_gloo_processes_matches_one_process(tokens, tmp_path):
    """`tuneatlas pretrain` under torchrun: each rank takes half of every global batch (gloo on
    CPU); the per-step loss is the global batch's, as in one process."""
    import os
    import shutil

    import pandas as pd

    spec = replace(SPEC, max_steps=6, micro_batch_size=None, checkpoint_every="none")
    args = ["pretrain", "--spec", json.dumps(spec.to_dict()), "--tokens", str(tokens["dir"])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TUNEATLAS_DEVICE": "cpu"}
    cli = ["-m", "tuneatlas", "--threads", "1", *args]
    one = subprocess.run(
        [sys.executable, *cli, "--out", str(tmp_path / "one")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    two = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", *cli, "--out", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 processes" in two.stderr

    def losses(run):
        m = pd.read_parquet(tmp_path / run / "metrics.parquet")
        return m.dropna(subset=["loss"])["loss"].to_numpy()

    assert len(losses("one")) == 6
    np.testing.assert_allclose(losses("two"), losses("one"), rtol=2e-5)
