"""Deterministic synthetic task suite and corpora for toy-scale runs, built from a seed.

Each generator mirrors one task type of the studies (sentiment, sentence-pair relations, NLI,
similarity regression, acceptability, topic classification) with small word lists kept in code,
so the whole workflow runs offline. The tasks are designed to be *learnable* by a random-init
2-layer BERT within a few hundred steps, yet not trivial: pair labels are relations between the
topic/stance "cells" of the two sentences (so they need both), and every task carries label
noise or distractors so scores stay below 100%. tests/unit/test_synthetic.py checks both.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tuneatlas.data.tasks import get_task

Example = tuple[str, str | None, float]
Generator = Callable[[np.random.Generator], Example]

# ---------------------------------------------------------------------------------------------
# Word lists. Kept small on purpose: a tiny model must see every word often enough to learn it.

FUNCTION = (
    "the a this that it was is very quite really just also then so and with for of "
    "in on at to from about after before still even"
).split()
FILM = (
    "movie film story plot actor actress scene director script ending music cast "
    "character dialogue camera sequel"
).split()
POSITIVE = (
    "good great excellent wonderful charming delightful brilliant moving superb enjoyable "
    "funny beautiful clever warm gripping lovely"
).split()
NEGATIVE = (
    "bad awful boring dull terrible weak tedious clumsy bland messy lifeless painful silly "
    "stale shallow lazy"
).split()
NEGATORS = ("not", "never", "hardly")

# Pair tasks: words carry a topic and a stance (a "cell"); the labels are relations between the
# cells of the two sentences. Every word of a pair sentence carries its cell: with filler words
# in between, a random-init 2-layer model stays on the plateau of these cross-sentence
# (XOR-like) relations for thousands of steps; with dense cells it leaves it in a few hundred.
PAIR_CELLS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    # (positive stance, negative stance) per topic
    (("feast", "recipe", "dessert", "spice"), ("burnt", "spill", "mold", "grease")),
    (("sail", "dolphin", "breeze", "sunny"), ("storm", "wreck", "leak", "flood")),
    (("melody", "encore", "harmony", "applause"), ("noise", "screech", "offkey", "boo")),
    (("bloom", "blossom", "harvest", "sprout"), ("weed", "wilt", "pest", "drought")),
)
# Skewed topic and stance frequencies, as in real corpora. This gives each sentence a weak cue
# of its own (a frequent cell is more often shared), which starts learning; the label still
# needs both sentences (shuffling either one across pairs drops scores to chance).
TOPIC_P = np.array([0.4, 0.3, 0.2, 0.1])
STANCE_P = np.array([0.7, 0.3])
PAIR_WORDS = 8  # words per pair sentence: 2 x 8 + 3 special tokens fit a 32-token window
PAIR_SWAP = 0.1  # chance that a word is replaced by one of a random cell (distractors)
PAIR_NOISE = 0.05  # label noise of the pair classification tasks

# Acceptability grammar: DET (ADJ) NOUN (ADV) VERB DET (ADJ) NOUN (PREP DET NOUN)
DETS = "the a every some".split()
ADJS = "small old red quiet happy tall".split()
NOUNS = "dog cat farmer teacher child bird baker sailor".split()
ADVS = "often rarely slowly".split()
TVERBS = "sees follows helps likes calls watches".split()
BARE_VERBS = "see follow help like call watch".split()  # agreement errors: "the dog see ..."
PREPS = "near behind under beside".split()

# Topic task (livedoor mirror): 9 topics, each with its own words, words shared with the next
# topic (so neighbours overlap), and shared general filler.
TOPIC_WORDS = (
    "love wedding partner date single romance".split(),
    "software laptop server update code network".split(),
    "fridge camera battery appliance washer heater".split(),
    "suit watch whisky career grooming leather".split(),
    "premiere trailer studio cinema starring box".split(),
    "makeup fashion skincare diet dress hair".split(),
    "smartphone android tablet app screen charger".split(),
    "match league goal coach stadium season".split(),
    "politics scandal police economy minister report".split(),
)
TOPIC_SHARED = (
    "couple",  # 0-1
    "device",  # 1-2
    "price",  # 2-3
    "style",  # 3-4
    "actor",  # 4-5
    "beauty",  # 5-6
    "mobile",  # 6-7
    "player",  # 7-8
    "news",  # 8-0
)
TOPIC_FILLER = (
    "today new week people said many year first time good more best latest popular "
    "according reports several"
).split()

# Invented-fact world of the pre-training corpus: names are syllable strings, never real words.
ONSETS = "b d f g k l m n p r s t v z".split()
VOWELS = "a e i o u".split()
CODAS = ("", "", "", "n", "r", "l", "s", "t")


@dataclass(frozen=True)
class Relation:
    """A relation of the invented-fact world: how documents state it, how the probe asks it."""

    subject: str  # kind of subject: "country" or "company"
    say: tuple[str, ...]  # statement templates with {s} (subject) and {o} (object)
    ask: str  # zsRE-style question template with {s}


RELATIONS: dict[str, Relation] = {
    "capital": Relation(
        "country",
        (
            "the capital of {s} is {o} .",
            "{o} is the capital of {s} .",
            "in {s} , the capital city is {o} .",
        ),
        "what is the capital of {s} ?",
    ),
    "language": Relation(
        "country",
        ("people in {s} speak {o} .", "the language of {s} is {o} ."),
        "which language is spoken in {s} ?",
    ),
    "currency": Relation(
        "country",
        ("the currency of {s} is the {o} .", "in {s} people pay with the {o} ."),
        "what is the currency of {s} ?",
    ),
    "founder": Relation(
        "company", ("{s} was founded by {o} .", "{o} founded {s} ."), "who founded {s} ?"
    ),
}


def _pick(rng: np.random.Generator, words: tuple[str, ...] | list[str]) -> str:
    return words[int(rng.integers(len(words)))]


# ---------------------------------------------------------------------------------------------
# Generators: one labelled example per call, driven only by `rng`.


def _sentiment(rng: np.random.Generator) -> Example:
    """SST-2 mirror: polarity words amid filler; negators flip the next polarity word."""
    label = int(rng.integers(2))
    n_words = int(rng.integers(6, 13))
    words = [_pick(rng, FUNCTION if rng.random() < 0.6 else FILM) for _ in range(n_words)]
    n_sent = 1 if rng.random() < 0.7 else 2
    for _ in range(n_sent):
        negate = rng.random() < 0.15
        polarity = label ^ int(negate)  # a negated word carries the opposite lexical polarity
        phrase = [_pick(rng, POSITIVE if polarity else NEGATIVE)]
        if negate:
            phrase.insert(0, _pick(rng, NEGATORS))
        at = int(rng.integers(len(words) + 1))
        words[at:at] = phrase
    if rng.random() < 0.1:
        # a stray negator far from any polarity word, so "has a negator" is no label cue alone
        words.insert(0, _pick(rng, NEGATORS))
    if rng.random() < 0.05:
        label = 1 - label  # annotation noise caps the reachable accuracy below 1
    return " ".join(words), None, label


def _topic_draw(rng: np.random.Generator, not_this: int | None = None) -> int:
    while True:
        t = int(rng.choice(len(TOPIC_P), p=TOPIC_P))
        if t != not_this:
            return t


def _stance_draw(rng: np.random.Generator) -> int:
    return int(rng.choice(len(STANCE_P), p=STANCE_P))


def _bag(rng: np.random.Generator, topic: int, stance: int, k: int = PAIR_WORDS) -> str:
    """A pair sentence: `k` words of cell (topic, stance), the rest from other random cells."""
    cell = PAIR_CELLS[topic][stance]
    words = [_pick(rng, cell) for _ in range(k)]
    while len(words) < PAIR_WORDS:
        t, s = _topic_draw(rng), _stance_draw(rng)
        if (t, s) != (topic, stance):
            words.append(_pick(rng, PAIR_CELLS[t][s]))
    for i in range(PAIR_WORDS):
        if rng.random() < PAIR_SWAP:
            words[i] = _pick(rng, PAIR_CELLS[int(rng.integers(len(TOPIC_P)))][int(rng.integers(2))])
    rng.shuffle(words)
    return " ".join(words)


def _pair_binary(rng: np.random.Generator) -> Example:
    """MRPC/QQP/QNLI/RTE mirror: label 1 when both sentences have the same cell (topic and
    stance). Negatives differ in exactly one of the two, so neither feature alone decides."""
    label = int(rng.integers(2))
    topic, stance = _topic_draw(rng), _stance_draw(rng)
    topic_b, stance_b = topic, stance
    if not label:
        if rng.random() < 0.5:
            topic_b = _topic_draw(rng, not_this=topic)
        else:
            stance_b = 1 - stance
    if rng.random() < PAIR_NOISE:
        label = 1 - label
    return _bag(rng, topic, stance), _bag(rng, topic_b, stance_b), label


def _pair_nli(rng: np.random.Generator) -> Example:
    """MNLI mirror: entailment = same topic and stance; contradiction = same topic, opposite
    stance; neutral = another topic (any stance)."""
    label = int(rng.integers(3))
    topic, stance = _topic_draw(rng), _stance_draw(rng)
    if label == 0:
        topic_b, stance_b = topic, stance
    elif label == 1:
        topic_b, stance_b = _topic_draw(rng, not_this=topic), _stance_draw(rng)
    else:
        topic_b, stance_b = topic, 1 - stance
    if rng.random() < PAIR_NOISE:
        label = int(rng.integers(3))
    return _bag(rng, topic, stance), _bag(rng, topic_b, stance_b), label


def _pair_similarity(rng: np.random.Generator) -> Example:
    """STS-B mirror: the second sentence shares k of its 8 words' cell with the first;
    score = 5 k / 8 plus Gaussian noise (sd 0.4), clipped to [0, 5]."""
    topic, stance = _topic_draw(rng), _stance_draw(rng)
    k = int(rng.integers(PAIR_WORDS + 1))
    score = float(np.clip(5.0 * k / PAIR_WORDS + rng.normal(0.0, 0.4), 0.0, 5.0))
    return _bag(rng, topic, stance), _bag(rng, topic, stance, k), round(score, 3)


def _grammatical(rng: np.random.Generator) -> list[str]:
    def np_(rng: np.random.Generator) -> list[str]:
        words = [_pick(rng, DETS)]
        if rng.random() < 0.5:
            words.append(_pick(rng, ADJS))
        words.append(_pick(rng, NOUNS))
        return words

    words = np_(rng)
    if rng.random() < 0.3:
        words.append(_pick(rng, ADVS))
    words.append(_pick(rng, TVERBS))
    words += np_(rng)
    if rng.random() < 0.5:
        words += [_pick(rng, PREPS), *np_(rng)]
    return words


def _acceptability(rng: np.random.Generator) -> Example:
    """CoLA mirror: sentences of a small grammar (acceptable, 70%) vs. corrupted ones (30%):
    an agreement error, a word moved out of place, two verbs, or no verb at all."""
    words = _grammatical(rng)
    label = int(rng.random() < 0.7)
    if not label:
        kind = int(rng.integers(4))
        verb_at = next(i for i, w in enumerate(words) if w in TVERBS)
        if kind == 0:
            words[verb_at] = BARE_VERBS[TVERBS.index(words[verb_at])]
        elif kind == 1:
            # move a determiner or the verb to a slot where the grammar never puts it
            w = words.pop(verb_at if rng.random() < 0.5 else 0)
            words.insert(len(words) if w in DETS else 0, w)
        elif kind == 2:
            words.insert(int(rng.integers(verb_at + 2, len(words) + 1)), _pick(rng, TVERBS))
        else:
            words.pop(verb_at)
    if rng.random() < 0.04:
        label = 1 - label  # annotation noise, as in CoLA's disputed judgements
    return " ".join(words) + " .", None, label


def _topic(rng: np.random.Generator) -> Example:
    """livedoor mirror: 9 topics; a headline and a body of topic words, words shared with the
    neighbouring topics, words of random other topics, and general filler."""
    label = int(rng.integers(len(TOPIC_WORDS)))
    own = TOPIC_WORDS[label]
    near = (TOPIC_SHARED[label], TOPIC_SHARED[(label - 1) % len(TOPIC_SHARED)])

    def word() -> str:
        u = rng.random()
        if u < 0.3:
            return _pick(rng, own)
        if u < 0.45:
            return _pick(rng, near)
        if u < 0.55:
            return _pick(rng, TOPIC_WORDS[int(rng.integers(len(TOPIC_WORDS)))])
        return _pick(rng, TOPIC_FILLER)

    title = [word() for _ in range(int(rng.integers(3, 6)))]
    body = [word() for _ in range(int(rng.integers(12, 22)))]
    return " ".join(title) + " . " + " ".join(body) + " .", None, label


GENERATORS: dict[str, Generator] = {
    "sentiment": _sentiment,
    "pair_binary": _pair_binary,
    "pair_nli": _pair_nli,
    "pair_similarity": _pair_similarity,
    "acceptability": _acceptability,
    "topic": _topic,
}


# ---------------------------------------------------------------------------------------------
# Entry points.


def _rng(seed: int, stream: str) -> np.random.Generator:
    """Independent stream per (seed, name): two tasks sharing a generator still differ."""
    return np.random.default_rng([int(seed), zlib.crc32(stream.encode())])


def _frame(rows: list[Example], pair: bool, regression: bool) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "idx": np.arange(len(rows), dtype=np.int64),
            "text_a": pd.Series([r[0] for r in rows], dtype=str),
            "text_b": pd.Series([r[1] for r in rows] if pair else [None] * len(rows), dtype=str),
            "label": np.array([r[2] for r in rows], dtype=np.float64 if regression else np.int64),
        }
    )


def generate(task_name: str, n: int, seed: int) -> pd.DataFrame:
    """`n` distinct labelled examples of task `task_name`: columns idx, text_a, text_b, label.

    Rows are distinct on (text_a, text_b), so any split of the frame is free of duplicates
    across splits. The same (task, n, seed) gives the identical frame; the first rows do not
    depend on `n`.
    """
    task = get_task(task_name)
    if task.is_corpus:
        raise ValueError(
            f"task {task_name!r} is a corpus, not a labelled task; use corpus({task_name!r}, ...)"
        )
    if n < 0:
        raise ValueError(f"synthetic {task_name}: n must be >= 0, got {n}")
    gen = GENERATORS[task.synthetic]
    rng = _rng(seed, task_name)
    rows: list[Example] = []
    seen: set[tuple[str, str | None]] = set()
    # Duplicates are rare with these vocabularies; a long run of them means n exceeds what the
    # generator can produce, which must fail rather than loop forever.
    misses = 0
    while len(rows) < n:
        ex = gen(rng)
        key = (ex[0], ex[1])
        if key in seen:
            misses += 1
            if misses > 1000 + n:
                raise ValueError(
                    f"synthetic {task_name}: cannot draw {n} distinct examples (got {len(rows)});"
                    " ask for fewer rows"
                )
            continue
        seen.add(key)
        rows.append(ex)
    return _frame(rows, task.is_pair, task.is_regression)


# Order in which split sizes are carved from one generated pool, so the split contents do not
# depend on the order of keys in a config file.
_SPLIT_ORDER = ("train", "validation", "valid", "dev", "test")


def generate_splits(task_name: str, sizes: dict[str, int], seed: int) -> dict[str, pd.DataFrame]:
    """Disjoint, deterministic splits, e.g. sizes={"train": 800, "validation": 200}.

    One pool of sum(sizes) distinct rows is generated and cut in a fixed split order; `idx`
    stays unique across splits (it is the row id in the pool).
    """
    for split, size in sizes.items():
        if not isinstance(size, int | np.integer) or isinstance(size, bool) or size < 0:
            raise ValueError(
                f"synthetic {task_name}: size of split {split!r} must be an integer >= 0,"
                f" got {size!r}"
            )
    order = sorted(sizes, key=lambda s: (_SPLIT_ORDER.index(s) if s in _SPLIT_ORDER else 99, s))
    pool = generate(task_name, sum(int(v) for v in sizes.values()), seed)
    out: dict[str, pd.DataFrame] = {}
    start = 0
    for split in order:
        stop = start + int(sizes[split])
        out[split] = pool.iloc[start:stop].reset_index(drop=True)
        start = stop
    return out


# ---------------------------------------------------------------------------------------------
# Corpora.


def sentence_corpus(n: int, seed: int) -> pd.DataFrame:
    """`n` sentences mixing every generator's style (the SimCSE corpus): columns idx, text."""
    rng = _rng(seed, "sentences")
    makers = list(GENERATORS.values())
    texts: list[str] = []
    for _ in range(n):
        a, b, _label = makers[int(rng.integers(len(makers)))](rng)
        # pair generators yield two sentences; the corpus takes one of them
        texts.append(b if b is not None and rng.random() < 0.5 else a)
    return pd.DataFrame({"idx": np.arange(n, dtype=np.int64), "text": pd.Series(texts, dtype=str)})


def _names(rng: np.random.Generator, n: int, taken: set[str]) -> list[str]:
    """`n` new pronounceable names (2-3 syllables) not in `taken` nor in the word lists."""
    names: list[str] = []
    while len(names) < n:
        syll = int(rng.integers(2, 4))
        name = "".join(
            _pick(rng, ONSETS) + _pick(rng, VOWELS) + _pick(rng, CODAS) for _ in range(syll)
        )
        if name in taken or name in _VOCAB:
            continue
        taken.add(name)
        names.append(name)
    return names


def _fact_world(n_facts: int, rng: np.random.Generator) -> pd.DataFrame:
    """`n_facts` invented (subject, relation, object) facts with their zsRE-style question.

    A quarter of the facts are company founders, the rest country facts; each country carries
    all country relations, so a probe can ask several questions about one subject.
    """
    taken: set[str] = set()
    by_kind = {
        kind: [r for r, rel in RELATIONS.items() if rel.subject == kind]
        for kind in ("country", "company")
    }
    n_company = max(1, n_facts // 4)
    n_country = n_facts - n_company
    countries = _names(rng, -(-n_country // len(by_kind["country"])), taken)
    companies = _names(rng, n_company, taken)
    rows = [(c, r) for c in countries for r in by_kind["country"]][:n_country]
    rows += [(c, r) for c in companies for r in by_kind["company"]][:n_company]
    objects = _names(rng, len(rows), taken)
    return pd.DataFrame(
        {
            "idx": np.arange(len(rows), dtype=np.int64),
            "subject": pd.Series([s for s, _ in rows], dtype=str),
            "relation": pd.Series([r for _, r in rows], dtype=str),
            "question": pd.Series([RELATIONS[r].ask.format(s=s) for s, r in rows], dtype=str),
            "answer": pd.Series(objects, dtype=str),
        }
    )


# options of the synthetic pre-training corpus (config: datasets.<name>.<option>); the defaults
# are the corpus `tokenizer_texts` samples, so setting none of them changes no tokenizer
CORPUS_OPTIONS = ("n_facts", "qa_wording", "end_with_fact")


def pretrain_corpus(
    n_docs: int,
    seed: int,
    n_facts: int | None = None,
    qa_wording: bool = False,
    end_with_fact: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pre-training documents stating invented facts, and the facts a zsRE-style probe asks.

    Returns (docs with idx, text; facts with idx, subject, relation, question, answer). There
    are `n_facts` facts (default about n_docs / 2) and each document states 3 of them amid
    filler sentences, so each fact is stated about 3 n_docs / n_facts times (6 by default), in
    varied wordings, across the corpus. `qa_wording` adds the probe's own wording (the
    question, then the answer: "what is the capital of X ? Y .") to the wordings a fact is
    stated in, as web text holds questions with their answers; `end_with_fact` ends every
    document with a fact statement (no filler after it), so the last word of a document, the
    toy LAMBADA target, is a name the corpus binds to another: a fact's object, or its subject
    in a wording that ends on it ("X founded Y .").
    """
    if n_docs < 1:
        raise ValueError(f"synthetic pretrain corpus: n_docs must be >= 1, got {n_docs}")
    if n_facts is not None and n_facts < 8:
        raise ValueError(f"synthetic pretrain corpus: n_facts must be >= 8, got {n_facts}")
    rng = _rng(seed, "pretrain")
    facts = _fact_world(max(8, n_docs // 2) if n_facts is None else n_facts, rng)
    fillers = [g for name, g in GENERATORS.items() if name in ("sentiment", "acceptability")]
    # every fact appears in turn before any repeats, so coverage is even even for small corpora
    order = np.concatenate(
        [rng.permutation(len(facts)) for _ in range(-(-3 * n_docs // len(facts)) + 1)]
    )
    subjects, relations, answers = (list(facts[c]) for c in ("subject", "relation", "answer"))
    texts = []
    for d in range(n_docs):
        sentences = []
        for f in order[3 * d : 3 * d + 3]:
            relation = RELATIONS[relations[f]]
            wordings = (*relation.say, f"{relation.ask} {{o}} .") if qa_wording else relation.say
            sentences.append(_pick(rng, wordings).format(s=subjects[f], o=answers[f]))
        for _ in range(int(rng.integers(1, 4))):
            filler = fillers[int(rng.integers(len(fillers)))](rng)[0]
            slots = len(sentences) + (0 if end_with_fact else 1)
            sentences.insert(int(rng.integers(slots)), filler.rstrip(" .") + " .")
        texts.append(" ".join(sentences))
    docs = pd.DataFrame(
        {"idx": np.arange(n_docs, dtype=np.int64), "text": pd.Series(texts, dtype=str)}
    )
    return docs, facts


def corpus(task_name: str, n: int, seed: int, **options: Any) -> dict[str, pd.DataFrame]:
    """The synthetic corpus of a corpus task: {"train": idx,text} (+ "facts" for pretrain);
    `options` (CORPUS_OPTIONS) shape the pre-training corpus (`pretrain_corpus`)."""
    task = get_task(task_name)
    if not task.is_corpus:
        raise ValueError(f"task {task_name!r} is a labelled task; use generate({task_name!r}, ...)")
    if task.synthetic == "sentences":
        return {"train": sentence_corpus(n, seed)}
    if task.synthetic == "facts":
        docs, facts = pretrain_corpus(n, seed, **options)
        return {"train": docs, "facts": facts}
    raise ValueError(f"task {task_name!r}: unknown corpus generator {task.synthetic!r}")


# ---------------------------------------------------------------------------------------------
# Tokenizer training text.


def _all_words() -> set[str]:
    lists = [
        FUNCTION,
        FILM,
        POSITIVE,
        NEGATIVE,
        NEGATORS,
        DETS,
        ADJS,
        NOUNS,
        ADVS,
        TVERBS,
        BARE_VERBS,
        PREPS,
        TOPIC_SHARED,
        TOPIC_FILLER,
        *TOPIC_WORDS,
        *(c for cells in PAIR_CELLS for c in cells),
        (".",),
    ]
    words = {w for lst in lists for w in lst}
    for rel in RELATIONS.values():
        for t in (*rel.say, rel.ask):
            words.update(w for w in t.split() if not w.startswith("{"))
    return words


_VOCAB: frozenset[str] = frozenset(_all_words())


def vocabulary() -> frozenset[str]:
    """Every fixed word the generators use (invented fact names are built from `syllables()`)."""
    return _VOCAB


def syllables() -> list[str]:
    """Every syllable invented names are made of."""
    return [o + v + c for o in ONSETS for v in VOWELS for c in sorted(set(CODAS))]


def tokenizer_texts(seed: int, n_per_task: int = 300) -> Iterator[str]:
    """Text covering the whole synthetic vocabulary, for training a WordPiece tokenizer offline.

    Yields every word list, every syllable of invented names, samples of each labelled task,
    of the sentence corpus and of the pre-training corpus (with its questions), so the word
    frequencies the tokenizer sees resemble what training will feed it.
    """
    words = sorted(_VOCAB)
    for i in range(0, len(words), 20):
        yield " ".join(words[i : i + 20])
    sylls = syllables()
    for i in range(0, len(sylls), 20):
        yield " ".join(sylls[i : i + 20])
    for name in ("sst2", "mrpc", "mnli", "stsb", "cola", "livedoor"):
        frame = generate(name, n_per_task, seed)
        for a, b in zip(frame["text_a"], frame["text_b"], strict=True):
            yield a
            if isinstance(b, str):
                yield b
    yield from sentence_corpus(n_per_task, seed)["text"]
    docs, facts = pretrain_corpus(n_per_task, seed)
    yield from docs["text"]
    for q, a in zip(facts["question"], facts["answer"], strict=True):
        yield f"{q} {a}"
