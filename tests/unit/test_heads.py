"""The fine-tuning heads (`train.head`): each against a forward pass computed by hand from its
weights, BERT's pooler read from the checkpoint (also through a SimCSE model's base), and the
errors that name the setting."""

from __future__ import annotations

import json

import pytest
import torch

from tuneatlas.data.tasks import fine_tuning_task
from tuneatlas.models.classifier import SequenceClassifier, build_classifier, pretrained_pooler
from tuneatlas.models.hub import BUILD_INFO
from tuneatlas.plan import train_spec

H, C = 16, 3


def bert(pooler: bool = True):
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=40,
        hidden_size=H,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    torch.manual_seed(0)
    return BertModel(config, add_pooling_layer=pooler)


def batch():
    ids = torch.tensor([[2, 5, 7, 9, 3], [2, 11, 3, 0, 0]])
    return ids, (ids != 0).long()


def cls_of(model: SequenceClassifier, ids, mask) -> torch.Tensor:
    return model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]


@pytest.mark.parametrize("head", ["linear", "pooler", "roberta"])
def test_each_head_computes_its_formula_in_eval_mode(head):
    torch.manual_seed(1)
    model = SequenceClassifier(bert(pooler=False), C, head=head).eval()
    ids, mask = batch()
    with torch.no_grad():
        h = cls_of(model, ids, mask)
        got = model(ids, mask).logits
        if head == "linear":
            W, b = model.head.weight, model.head.bias
            expected = h @ W.T + b
        else:  # dense -> tanh -> out: pooler (BERT) and roberta differ only in dropout placing
            W1, b1 = model.head[0].weight, model.head[0].bias
            W2, b2 = model.head[3].weight, model.head[3].bias
            expected = torch.tanh(h @ W1.T + b1) @ W2.T + b2
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert model(ids, mask).pooled.shape == (2, H)  # the raw CLS, whatever the head


def test_dropout_sits_where_bert_and_roberta_put_it():
    """pooler: no dropout before BERT's pooler, one after; roberta: one before the dense and one
    after the tanh. With p = 0.5 in train mode the masks show where they act."""
    ids, mask = batch()
    for head, before in (("pooler", False), ("roberta", True)):
        model = SequenceClassifier(bert(pooler=False), C, head=head, dropout=0.5)
        model.train()
        seen = {}
        model.head[0].register_forward_hook(
            lambda m, i, o, seen=seen: seen.__setitem__("dense_in", i[0])
        )
        model.head[3].register_forward_hook(
            lambda m, i, o, seen=seen: seen.__setitem__("out_in", i[0])
        )
        torch.manual_seed(0)
        model(ids, mask)
        raw_zeros = int((seen["dense_in"] == 0).sum())
        assert (raw_zeros > 0) == before, head  # dropout zeroes about half the entries
        assert int((seen["out_in"] == 0).sum()) > 0, head


def test_pooler_head_starts_from_the_checkpoints_pooler(tmp_path):
    from transformers import BertTokenizerFast

    base = bert(pooler=True)
    base.save_pretrained(tmp_path / "base")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefgh"]))
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(tmp_path / "base")
    found = pretrained_pooler(tmp_path / "base")
    torch.testing.assert_close(found["weight"], base.pooler.dense.weight.detach())
    torch.testing.assert_close(found["bias"], base.pooler.dense.bias.detach())
    # a SimCSE model has no pooler of its own: its base model's is used
    simcse = tmp_path / "simcse"
    bert(pooler=False).save_pretrained(simcse)
    (simcse / BUILD_INFO).write_text(
        json.dumps({"source": "simcse", "base": str(tmp_path / "base")})
    )
    torch.testing.assert_close(pretrained_pooler(simcse)["weight"], found["weight"])

    task = fine_tuning_task("sst2")
    spec = train_spec("r", "sst2", "d", "m", [{"head": "pooler", "max_length": 16}])
    model = build_classifier(spec, task, tmp_path / "base", None).eval()
    ids, mask = batch()
    with torch.no_grad():
        h = base.eval()(input_ids=ids, attention_mask=mask)
        W, b = model.head[3].weight, model.head[3].bias
        # BertForSequenceClassification: classifier(dropout(pooler_output))
        expected = h.pooler_output @ W.T + b
        torch.testing.assert_close(model(ids, mask).logits, expected, rtol=1e-5, atol=1e-6)

    bert(pooler=False).save_pretrained(tmp_path / "bare")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(tmp_path / "bare")
    with pytest.raises(
        ValueError, match=r"head 'pooler' needs BERT's pretrained pooler.*train\.head"
    ):
        build_classifier(spec, task, tmp_path / "bare", None)


def test_unknown_heads_and_a_pooler_on_maxnorm_are_refused():
    with pytest.raises(ValueError, match="unknown head 'mean'"):
        SequenceClassifier(bert(pooler=False), C, head="mean")
    with pytest.raises(ValueError, match="use pooling cls"):
        SequenceClassifier(bert(pooler=False), C, head="pooler", pooling="maxnorm")
