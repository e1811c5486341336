"""The one-backward Fisher engine equals N separate backward passes (float64 Grams), per layer:
"exact" precision on every eigenvalue above 1e-6 of its layer's largest, "fast" where S2 reads
the spectra (erank, and every eigenvalue above 1e-3 of the largest)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tuneatlas.analysis.fisher.grams import (
    _blocks,
    choose_strategy,
    find_layers,
    layer_grams,
    linear_costs,
)
from tuneatlas.analysis.fisher.reference import reference_grams
from tuneatlas.analysis.fisher.spectrum import (
    effective_rank,
    eigenvalues,
    fisher_spectrum,
    relative_error,
)
from tuneatlas.models.classifier import SequenceClassifier

N, T, VOCAB = 8, 12, 60
TOL = 1e-4  # relative, on eigenvalues above FLOOR[precision] of the largest of their layer
FLOOR = {"exact": 1e-6, "fast": 1e-3}


def assert_spectra_match(got: torch.Tensor, ref: torch.Tensor, precision: str) -> None:
    """The Grams' spectra agree as `precision` promises: eigenvalues above FLOOR of their
    layer's largest within TOL relative; "fast" also has each layer's erank of the reference
    (the only way S2 reads the spectrum besides its sums)."""
    ev, ev_ref = eigenvalues(got), eigenvalues(ref)
    err = relative_error(ev, ev_ref, floor=FLOOR[precision])
    assert err <= TOL, f"{precision}: eigenvalue relative error {err:.2e}"
    assert effective_rank(ev).tolist() == effective_rank(ev_ref).tolist()


def tiny_bert() -> SequenceClassifier:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32, pad_token_id=0,
    )  # fmt: skip
    model = SequenceClassifier(BertModel(config, add_pooling_layer=False), 3)
    return model.eval()


def tiny_llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=24, max_position_embeddings=32,
        pad_token_id=0, attention_bias=True,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def padded_batch(seed: int = 1, n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    """n rows of random tokens, right-padded (token 0) to T; lengths 4..T, one full row."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, T), generator=g)
    lengths = torch.randint(4, T + 1, (n,), generator=g)
    lengths[0] = T
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    return ids * mask, mask


def bert_logprob(ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor):
    def fn(model: nn.Module) -> torch.Tensor:
        logits = model(ids, mask).logits
        return logits.log_softmax(-1).gather(1, labels[:, None]).squeeze(1)

    return fn


def llama_loglik(ids: torch.Tensor, mask: torch.Tensor):
    """Per-example causal-LM log-likelihood of the non-padded next tokens."""

    def fn(model: nn.Module) -> torch.Tensor:
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        lp = logits.log_softmax(-1).gather(2, ids[:, 1:, None]).squeeze(2)
        return (lp * mask[:, 1:]).sum(1)

    return fn


def bert_case():
    ids, mask = padded_batch()
    labels = torch.arange(N) % 3
    return tiny_bert(), bert_logprob(ids, mask, labels)


def llama_case():
    ids, mask = padded_batch(2)
    return tiny_llama(), llama_loglik(ids, mask)


CASES = {"bert": bert_case, "llama": llama_case}


@pytest.mark.parametrize("precision", ["fast", "exact"])
@pytest.mark.parametrize("strategy", ["auto", "per_example", "ghost"])
@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_layer_grams_match_n_backward_reference(arch, strategy, precision):
    model, fn = CASES[arch]()
    ref = reference_grams(model, fn)
    got = layer_grams(model, fn, strategy=strategy, precision=precision)
    assert got.grams.shape == ref.shape == (2, N, N)
    n_linear = 6 if arch == "bert" else 7  # q k v o + FFN (BERT 2, LLaMA gate/up/down)
    assert len(got.strategies) == 2 * n_linear
    if strategy != "auto":
        assert set(got.strategies.values()) == {strategy}
    assert float(eigenvalues(ref)[:, 0].min()) > 0
    assert_spectra_match(got.grams, ref, precision)
    # the matrices themselves, not only their spectra
    scale = ref.abs().amax((1, 2), keepdim=True)
    assert float(((got.grams - ref).abs() / scale).max()) <= TOL


@pytest.mark.parametrize("precision", ["fast", "exact"])
def test_layer_grams_of_a_batch_larger_than_one_gram_block(precision):
    """N = 70 spans three row blocks of the symmetric Gram (32, 32, 6): the mirrored lower
    blocks must equal the reference too. A fresh head makes one direction dominate: this
    spectrum spans 1e6, where float32 products cannot give the smallest eigenvalues to 1e-4
    (the error is in the products, not the float32 gradients), so "fast" promises only those
    above 1e-3 of the largest, and the erank."""
    ids, mask = padded_batch(3, n=70)
    model, fn = tiny_bert(), bert_logprob(ids, mask, torch.arange(70) % 3)
    assert len(_blocks(70)) == 3
    ref = reference_grams(model, fn)
    ev_ref = eigenvalues(ref)
    assert float((ev_ref[:, 0] / ev_ref[:, -1]).min()) > 1e5  # the span the docstring says
    got = layer_grams(model, fn, precision=precision).grams
    assert torch.equal(got, got.transpose(1, 2))
    scale = ref.abs().amax((1, 2), keepdim=True)
    assert float(((got - ref).abs() / scale).max()) <= TOL
    assert_spectra_match(got, ref, precision)


def test_spectra_check_fails_on_a_changed_erank_or_a_large_eigenvalue():
    """The criterion bites: a 2e-4 change of an eigenvalue above 1e-3 of the largest fails
    "fast", one below it fails only "exact", a moved erank fails "fast"."""
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64, generator=_gen()))

    def gram(spec: list[float]) -> torch.Tensor:
        return (q @ torch.diag(torch.tensor(spec, dtype=torch.float64)) @ q.T)[None]

    # erank 3: the top 3 (159.4) hold more than 99% while the rest (1.6) is below 159.4 / 99
    base = [100.0, 50.0, 9.4, 1.45, 0.05, 0.05, 0.05, 0.0]
    assert_spectra_match(gram(base), gram(base), "exact")
    above, below = list(base), list(base)
    above[3] *= 1 + 2e-4  # 1.45e-2 of the largest
    below[6] *= 1 + 2e-4  # 5e-4 of the largest
    with pytest.raises(AssertionError, match="fast"):
        assert_spectra_match(gram(above), gram(base), "fast")
    assert_spectra_match(gram(below), gram(base), "fast")
    with pytest.raises(AssertionError, match="exact"):
        assert_spectra_match(gram(below), gram(base), "exact")
    # eigenvalues below 1e-3 of the largest move the mass past 99%: erank 4, caught by erank
    moved = [100.0, 50.0, 9.4, 1.45, 0.09, 0.09, 0.09, 0.0]
    assert relative_error(eigenvalues(gram(moved)), eigenvalues(gram(base)), floor=1e-3) < 1e-12
    assert effective_rank(torch.tensor(moved)) == 4
    with pytest.raises(AssertionError):
        assert_spectra_match(gram(moved), gram(base), "fast")


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_unknown_precision_is_refused():
    model, fn = bert_case()
    with pytest.raises(ValueError, match="precision"):
        layer_grams(model, fn, precision="float16")


def test_layer_grams_cover_every_layer_parameter_kind():
    """Each kind of parameter contributes: dropping the norms' or the biases' contributions
    (by comparing with a reference over Linear weights only) changes the Gram."""
    model, fn = bert_case()
    full = reference_grams(model, fn)
    got = layer_grams(model, fn).grams
    for p in model.parameters():
        p.requires_grad_(False)
    weights_only = []
    for layer in find_layers(model):
        ws = [m.weight for m in layer.modules() if isinstance(m, nn.Linear)]
        with torch.enable_grad():
            for w in ws:
                w.requires_grad_(True)
            out = fn(model)
            rows = []
            for i in range(N):
                gs = torch.autograd.grad(out[i], ws, retain_graph=i < N - 1)
                rows.append(torch.cat([x.reshape(-1) for x in gs]).double())
            for w in ws:
                w.requires_grad_(False)
        g = torch.stack(rows)
        weights_only.append(g @ g.T)
    partial = torch.stack(weights_only)
    assert float((full - partial).abs().max()) > 1e-3 * float(full.abs().max())
    assert float((got - full).abs().max()) <= TOL * float(full.abs().max())


def test_padding_tokens_do_not_change_the_grams():
    """Masked positions get exactly zero output gradients: any token there gives the same K."""
    ids, mask = padded_batch()
    labels = torch.arange(N) % 3
    model = tiny_bert()
    k0 = layer_grams(model, bert_logprob(ids, mask, labels)).grams
    other = torch.where(mask.bool(), ids, torch.full_like(ids, 7))
    k1 = layer_grams(model, bert_logprob(other, mask, labels)).grams
    assert torch.equal(k0, k1)
    # ... while a real token change does change it
    changed = ids.clone()
    changed[0, 2] = (changed[0, 2] % (VOCAB - 1)) + 1
    k2 = layer_grams(model, bert_logprob(changed, mask, labels)).grams
    assert not torch.allclose(k0, k2)


def test_layer_grams_leave_parameter_grads_untouched():
    model, fn = bert_case()
    layer_grams(model, fn)
    assert all(p.grad is None for p in model.parameters())


def test_choose_strategy_prefers_ghost_only_for_short_sequences():
    assert choose_strategy(n=16, t=4, d_in=384, d_out=384) == "ghost"
    assert choose_strategy(n=16, t=64, d_in=384, d_out=384) == "per_example"
    c = linear_costs(8, 10, 5, 7)
    assert c["per_example"] == 2 * 8 * 10 * 5 * 7 + 2 * 64 * 5 * 7
    assert c["ghost"] == 2 * 64 * 100 * 13


def test_effective_rank_of_a_hand_made_spectrum():
    # sum 100: top-3 hold 95 %, top-4 exactly 99 % (not more), top-5 99.5 %
    spec = torch.tensor([50.0, 30.0, 15.0, 4.0, 0.5, 0.5, 0.0, 0.0])
    assert int(effective_rank(spec)) == 5
    assert int(effective_rank(spec, mass=0.9)) == 3
    assert int(effective_rank(torch.zeros(8))) == 0
    # through a Gram in a random basis, one layer per row. Its eigenvalues carry rounding noise,
    # so this spectrum keeps clear of the 99 % line: top-4 hold 98.9 %, top-5 99.5 %
    spec = torch.tensor([50.0, 30.0, 15.0, 3.9, 0.6, 0.5, 0.0, 0.0], dtype=torch.float64)
    basis = torch.randn(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    q, _ = torch.linalg.qr(basis)
    grams = torch.stack([q @ torch.diag(spec) @ q.T, torch.eye(8, dtype=torch.float64)])
    s = fisher_spectrum(grams)
    assert s.erank.tolist() == [5, 8]
    assert s.normalised_erank.tolist() == [5 / 8, 1.0]
    assert s.model_rank == 13
    assert torch.allclose(s.eigenvalues[0], spec, atol=1e-9)


def test_find_layers_bert_llama_and_error():
    bert = tiny_bert()
    assert find_layers(bert) is bert.encoder.encoder.layer
    llama = tiny_llama()
    assert find_layers(llama) is llama.model.layers
    with pytest.raises(ValueError, match="layers="):
        find_layers(nn.Sequential(nn.Linear(2, 2)))


def test_unsupported_layer_parameter_is_named():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.scale = nn.Parameter(torch.ones(4))

        def forward(self, x):
            return self.lin(x) * self.scale

    layers = nn.ModuleList([Odd()])
    x = torch.randn(3, 2, 4)
    with pytest.raises(ValueError, match="scale"):
        layer_grams(layers, lambda m: m[0](x).sum((1, 2)), layers=layers)
