"""head_init: new heads initialised as the encoder family does (default) or as PyTorch does."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tuneatlas.data.tasks import fine_tuning_task
from tuneatlas.engine.recipes.mlm import build_bert
from tuneatlas.models.classifier import SequenceClassifier, build_classifier, initializer_range
from tuneatlas.plan import train_spec
from tuneatlas.spec import TrainSpec

HIDDEN = 256


def encoder(initializer_range: float = 0.05):
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=50,
        hidden_size=HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        initializer_range=initializer_range,
    )
    return BertModel(config, add_pooling_layer=False)


def linears(model: SequenceClassifier) -> list[nn.Linear]:
    return [m for m in model.head.modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("head", ["linear", "mlp2"])
def test_encoder_init_draws_weights_from_the_configs_initializer_range_with_zero_bias(head):
    torch.manual_seed(0)
    model = SequenceClassifier(encoder(0.05), 2, head=head)  # head_init defaults to "encoder"
    assert model.head_init == "encoder" and model.info()["head_init"] == "encoder"
    layers = linears(model)
    assert len(layers) == (1 if head == "linear" else 2)
    for layer in layers:
        w = layer.weight.detach()
        assert float(w.mean()) == pytest.approx(0.0, abs=0.01)
        # 512 weights (linear) or 65,536 (mlp2 first layer): the std is within ~6% of 0.05.
        assert float(w.std()) == pytest.approx(0.05, rel=0.15)
        assert torch.count_nonzero(layer.bias) == 0


def test_initializer_range_falls_back_to_berts_when_the_config_has_none():
    assert initializer_range(SimpleNamespace()) == 0.02
    assert initializer_range(SimpleNamespace(initializer_range=None)) == 0.02
    assert initializer_range(SimpleNamespace(initializer_range=0.01)) == 0.01


@pytest.mark.parametrize("head", ["linear", "mlp2"])
def test_pytorch_init_reproduces_the_old_head_and_rng_state_bit_for_bit(head):
    enc = encoder()
    torch.manual_seed(7)
    model = SequenceClassifier(enc, 3, head=head, head_init="pytorch")
    after_model = torch.get_rng_state()
    # The head as the code before `head_init` built it, from the same RNG state.
    torch.manual_seed(7)
    if head == "linear":
        old: nn.Module = nn.Linear(HIDDEN, 3)
    else:
        old = nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 3))
    assert torch.equal(torch.get_rng_state(), after_model)  # later draws (data order) agree
    new_state, old_state = model.head.state_dict(), old.state_dict()
    assert new_state.keys() == old_state.keys()
    for key in old_state:
        assert torch.equal(new_state[key], old_state[key]), key
    # the default bias is uniform in +-1/sqrt(H): not zero, unlike the encoder's scheme
    assert torch.count_nonzero(linears(model)[-1].bias) == 3


def test_unknown_head_init_is_refused():
    with pytest.raises(ValueError, match="unknown head_init 'xavier'"):
        SequenceClassifier(encoder(), 2, head_init="xavier")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "tiny"
    texts = [f"the movie was {w} {v}" for w in ("good", "bad", "fine") for v in ("a", "b", "c")]
    cfg = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=100)
    build_bert({**cfg, "max_position_embeddings": 32, "mlm_steps": 0}, texts, out, seed=0)
    return out


def test_head_init_reaches_the_model_through_the_plan(tiny_dir):
    task = fine_tuning_task("sst2")
    default = train_spec("r", "sst2", "sst2", "m", [{"lr": 5e-5, "max_length": 16}])
    assert default.head_init == "encoder"
    # config `train` sections merge key by key into the TrainSpec, later sections winning
    layers = [{"head_init": "encoder", "max_length": 16}, {"head_init": "pytorch"}]
    spec = train_spec("r", "sst2", "sst2", "m", layers)
    assert spec.head_init == "pytorch"
    spec = TrainSpec.from_dict(spec.to_dict())  # the rule's params round trip
    assert spec.head_init == "pytorch"

    torch.manual_seed(3)
    model = build_classifier(spec, task, tiny_dir, None)
    torch.manual_seed(3)
    want = nn.Linear(32, 2)
    assert model.head_init == "pytorch" and torch.equal(model.head.bias, want.bias)

    torch.manual_seed(3)
    model = build_classifier(default, task, tiny_dir, None)
    assert model.head_init == "encoder" and torch.count_nonzero(model.head.bias) == 0


def test_head_init_is_a_schema_key_and_in_every_planned_spec(repo):
    from tuneatlas.config import load_config, validate_config
    from tuneatlas.plan import make_plan

    config = load_config(repo / "config.yaml")
    config["train"]["head_init"] = "pytorch"

    plan = make_plan(validate_config(config))
    finetunes = [r for r in plan.runs.values() if r.kind == "finetune"]
    assert finetunes and all(r.spec["head_init"] == "pytorch" for r in finetunes)
    bad = load_config(repo / "config.yaml")
    bad["train"]["head_init"] = "uniform"
    with pytest.raises(Exception, match="head_init"):
        validate_config(bad)
