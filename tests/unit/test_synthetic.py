"""Synthetic task suite: determinism, balance, corpora, and learnability by a tiny random BERT."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tuneatlas.data import synthetic
from tuneatlas.data.tasks import get_task
from tuneatlas.metrics import predictions, score

LABELLED = ("sst2", "mrpc", "qqp", "qnli", "rte", "mnli", "stsb", "cola", "livedoor")


# --- determinism and schema ------------------------------------------------------------------


@pytest.mark.parametrize("task", LABELLED)
def test_same_seed_same_frame_other_seed_other_frame(task):
    a = synthetic.generate(task, 200, seed=3)
    pd.testing.assert_frame_equal(a, synthetic.generate(task, 200, seed=3))
    assert not a.equals(synthetic.generate(task, 200, seed=4))
    # the first rows do not depend on how many are asked for
    pd.testing.assert_frame_equal(a.iloc[:50], synthetic.generate(task, 50, seed=3))


@pytest.mark.parametrize("task", LABELLED)
def test_schema_and_vocabulary(task):
    t = get_task(task)
    df = synthetic.generate(task, 300, seed=0)
    assert list(df.columns) == ["idx", "text_a", "text_b", "label"]
    assert list(df["idx"]) == list(range(300))
    assert df["label"].dtype == (np.float64 if t.is_regression else np.int64)
    assert df["text_b"].notna().all() if t.is_pair else df["text_b"].isna().all()
    texts = list(df["text_a"]) + list(df["text_b"].dropna())
    assert all(s.strip() for s in texts)
    used = {w for s in texts for w in s.split()}
    assert used <= synthetic.vocabulary()  # the tokenizer text covers every word used
    assert not df.duplicated(["text_a", "text_b"]).any()


def test_tasks_sharing_a_generator_still_differ():
    assert not synthetic.generate("mrpc", 50, 0).equals(synthetic.generate("rte", 50, 0))


def test_splits_are_disjoint_exact_and_independent_of_key_order():
    sizes = {"validation": 150, "train": 600, "test": 100}
    a = synthetic.generate_splits("mnli", sizes, seed=1)
    b = synthetic.generate_splits("mnli", dict(reversed(list(sizes.items()))), seed=1)
    assert {k: len(v) for k, v in a.items()} == sizes
    for k in sizes:
        pd.testing.assert_frame_equal(a[k], b[k])
    keys = [set(zip(a[k]["text_a"], a[k]["text_b"], strict=True)) for k in sizes]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    ids = np.concatenate([a[k]["idx"] for k in sizes])
    assert len(set(ids)) == len(ids)


def test_generator_that_cannot_produce_enough_distinct_rows_fails(monkeypatch):
    monkeypatch.setitem(synthetic.GENERATORS, "sentiment", lambda rng: ("same", None, 1))
    with pytest.raises(ValueError, match=r"cannot draw 5 distinct examples \(got 1\)"):
        synthetic.generate("sst2", 5, seed=0)


def test_corpus_tasks_are_refused_by_generate():
    with pytest.raises(ValueError, match="is a corpus"):
        synthetic.generate("simcse", 10, 0)
    with pytest.raises(ValueError, match="unknown task"):
        synthetic.generate("sst3", 10, 0)


# --- label balance ---------------------------------------------------------------------------


def _shares(task: str, n: int = 3000) -> np.ndarray:
    labels = synthetic.generate(task, n, seed=0)["label"]
    return np.bincount(labels, minlength=get_task(task).num_labels) / n


@pytest.mark.parametrize("task", ["sst2", "mrpc", "rte"])
def test_binary_tasks_are_balanced(task):
    assert abs(_shares(task)[1] - 0.5) < 0.03


def test_cola_is_imbalanced_like_cola():
    assert 0.65 < _shares("cola")[1] < 0.75


def test_mnli_and_livedoor_classes_are_balanced():
    assert np.all(np.abs(_shares("mnli") - 1 / 3) < 0.03)
    assert np.all(np.abs(_shares("livedoor") - 1 / 9) < 0.02)


def test_stsb_scores_cover_the_range():
    y = synthetic.generate("stsb", 2000, seed=0)["label"].to_numpy()
    assert y.min() >= 0 and y.max() <= 5
    counts = np.bincount(np.minimum(y, 4.999).astype(int), minlength=5)
    assert np.all(counts > 200)  # every unit interval of [0, 5] holds >= 10% of the scores


# --- corpora and tokenizer text --------------------------------------------------------------


def test_sentence_corpus_is_deterministic_and_non_empty():
    a = synthetic.sentence_corpus(100, seed=2)
    pd.testing.assert_frame_equal(a, synthetic.sentence_corpus(100, seed=2))
    assert list(a.columns) == ["idx", "text"] and len(a) == 100
    assert a["text"].str.strip().astype(bool).all()


def test_pretrain_documents_state_every_fact_several_times():
    docs, facts = synthetic.pretrain_corpus(200, seed=0)
    assert list(facts.columns) == ["idx", "subject", "relation", "question", "answer"]
    assert len(facts) == 100 and set(facts["relation"]) == set(synthetic.RELATIONS)
    sentences = [set(s.split()) for doc in docs["text"] for s in doc.split(" . ")]
    for row in facts.itertuples():
        assert row.subject in row.question and row.answer not in row.question
        # the answer is stated together with its subject, in at least two sentences
        stated = sum(row.subject in s and row.answer in s for s in sentences)
        assert stated >= 2, row
    assert facts["answer"].is_unique and facts.groupby(["subject", "relation"]).size().max() == 1
    d2, f2 = synthetic.pretrain_corpus(200, seed=0)
    pd.testing.assert_frame_equal(docs, d2)
    pd.testing.assert_frame_equal(facts, f2)
    assert not synthetic.pretrain_corpus(200, seed=1)[1].equals(facts)


def test_pretrain_corpus_options_make_a_small_world_stated_often():
    # the toy S4 corpus (config.yaml): few facts, some in the probe's wording, documents that
    # end on a fact so that the toy LAMBADA target is a fact's object
    docs, facts = synthetic.pretrain_corpus(
        400, seed=3, n_facts=16, qa_wording=True, end_with_fact=True
    )
    assert len(facts) == 16 and len(docs) == 400
    text = " ".join(docs["text"])
    words = text.split()
    answers = set(facts["answer"])
    for row in facts.itertuples():
        # 3 statements per document over 16 facts, in turn: each fact exactly 3 x 400 / 16 times
        assert words.count(row.answer) == 3 * 400 // 16, row
        assert f"{row.question} {row.answer} ." in text, row
    # every document's last word (before its final " .") is a name of a fact: its answer, or
    # its subject in a wording that ends on the subject ("X founded Y .")
    names = answers | set(facts["subject"])
    last = [doc.removesuffix(" .").split()[-1] for doc in docs["text"]]
    assert set(last) <= names and len(set(last) & answers) >= 12
    # the defaults leave the corpus as it was: no question wording, fillers may end a document
    plain, _ = synthetic.pretrain_corpus(400, seed=3, n_facts=16)
    assert not any(q in " ".join(plain["text"]) for q in facts["question"])
    assert not {doc.removesuffix(" .").split()[-1] for doc in plain["text"]} <= names
    again = synthetic.pretrain_corpus(400, seed=3, n_facts=16, qa_wording=True, end_with_fact=True)
    pd.testing.assert_frame_equal(docs, again[0])
    pd.testing.assert_frame_equal(facts, again[1])
    with pytest.raises(ValueError, match="n_facts must be >= 8"):
        synthetic.pretrain_corpus(400, seed=3, n_facts=4)


def test_tokenizer_texts_cover_the_whole_vocabulary():
    words = {w for line in synthetic.tokenizer_texts(seed=0, n_per_task=20) for w in line.split()}
    assert synthetic.vocabulary() <= words
    assert set(synthetic.syllables()) <= words


# --- learnability ----------------------------------------------------------------------------
# A tiny random-init BERT must beat the majority baseline by a wide margin on held-out data for
# every task type within a few hundred steps; pair tasks must need both sentences.

# task -> (steps, minimum score); regression (STS) leaves its plateau later than classification.
LEARN = {
    "sst2": (250, None),
    "cola": (250, 0.5),
    "livedoor": (200, None),
    "mrpc": (400, None),
    "mnli": (400, None),
    "stsb": (600, 0.7),
}
MARGIN = 0.2  # accuracy tasks: at least the majority-class share + MARGIN


def _train_and_score(task_name: str, steps: int, seed: int = 0):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    task = get_task(task_name)
    splits = synthetic.generate_splits(task_name, {"train": 3000, "test": 600}, seed=seed)
    train, test = splits["train"], splits["test"]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    tok.train_from_iterator(
        list(train["text_a"]) + list(train["text_b"].dropna()),
        trainers.WordLevelTrainer(special_tokens=specials, show_progress=False),
    )
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")

    def encode(df: pd.DataFrame):
        rows = []
        for a, b in zip(df["text_a"], df["text_b"], strict=True):
            ids, types = [cls, *tok.encode(a).ids, sep], None
            types = [0] * len(ids)
            if isinstance(b, str):
                tail = [*tok.encode(b).ids, sep]
                ids, types = ids + tail, types + [1] * len(tail)
            rows.append((ids[:32], types[:32]))
        width = max(len(i) for i, _ in rows)  # <= 32; shorter windows train faster
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        types = torch.zeros_like(ids)
        for r, (i, t) in enumerate(rows):
            ids[r, : len(i)], types[r, : len(t)] = torch.tensor(i), torch.tensor(t)
        return ids, types, (ids != 0).long()

    x_train = encode(train)
    y_train = torch.tensor(
        train["label"].to_numpy(), dtype=torch.float32 if task.is_regression else torch.long
    )
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        num_labels=task.num_labels,
    )
    model = transformers.BertForSequenceClassification(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # a short linear warm-up: at a constant 1e-3 from step 0 some seeds stall for good
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        b = torch.randint(0, len(train), (32,), generator=gen)
        out = model(
            input_ids=x_train[0][b],
            token_type_ids=x_train[1][b],
            attention_mask=x_train[2][b],
            labels=y_train[b],
        )
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        sched.step()
    model.eval()

    def evaluate(df: pd.DataFrame) -> float:
        x = encode(df)
        with torch.no_grad():
            logits = model(input_ids=x[0], token_type_ids=x[1], attention_mask=x[2]).logits
        pred = predictions(logits.numpy(), task.is_regression)
        return score(task.metric, test["label"].to_numpy(), pred)

    return task, test, evaluate


@pytest.mark.parametrize("task_name", list(LEARN))
def test_tiny_bert_learns_every_task_type(task_name):
    steps, minimum = LEARN[task_name]
    task, test, evaluate = _train_and_score(task_name, steps)
    got = evaluate(test)
    if task.metric == "accuracy":
        majority = np.bincount(test["label"]).max() / len(test)
        minimum = majority + MARGIN
    assert got >= minimum, f"{task_name}: {task.metric} {got:.3f} < {minimum:.3f}"
    if task.is_pair:
        # pairing each sentence with another pair's partner must destroy the score
        rng = np.random.default_rng(0)
        for col in ("text_a", "text_b"):
            shuffled = test.copy()
            shuffled[col] = test[col].to_numpy()[rng.permutation(len(test))]
            drop = got - evaluate(shuffled)
            assert drop >= 0.2, f"{task_name}: shuffling {col} only costs {drop:.3f}"
