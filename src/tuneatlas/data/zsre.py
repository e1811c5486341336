"""zsRE (S4's knowledge probe): the knowledge-editing literature's evaluation file -> facts TSV.

The paper probes zsRE questions (「質問文のみのプロンプト」: the question alone, then the answer
token by token). The copy the knowledge-editing literature uses is MEND's zsRE evaluation slice
as ROME / MEMIT distribute it, ``zsre_mend_eval.json`` (ROME's ``dsets/zsre.py`` downloads it
from ``https://rome.baulab.info/data/dsets/zsre_mend_eval.json``; EasyEdit ships the same records
as ``ZsRE-test-all.json``). It is one JSON array of records, each with at least::

    {"subject": "...", "src": "<the question>", "answers": ["<the answer>", ...],
     "rephrase": "...", "alt": "...", "loc": "nq question: ...", "loc_ans": "..."}

Nothing is fetched at run time (the workflow's jobs may have no network): download the file
once, then

    tuneatlas zsre-convert zsre_mend_eval.json data/zsre/facts.tsv

writes the facts file a pre-training corpus's ``facts:`` key names: columns ``subject
relation question answer`` (`tuneatlas.data.prepare.FACT_COLUMNS`), one row per record, the
question = ``src`` and the answer = the first of ``answers`` (the one ROME/MEMIT score); the
file has no relation ids, so ``relation`` is ``zsre``. Tabs and newlines in a field become
spaces (the TSV is read without quoting); a record without a question or an answer is refused
with its index. A ``manifest.json`` beside the TSV records the row count and the source's
SHA-256.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tuneatlas.errors import DataError

COLUMNS = ("subject", "relation", "question", "answer")
RELATION = "zsre"  # the evaluation file carries no Wikidata relation id


def _clean(value: object) -> str:
    return " ".join(str(value).split())


def facts_rows(records: object, source: str) -> list[tuple[str, str, str, str]]:
    """(subject, relation, question, answer) per record of the zsRE evaluation file."""
    if not isinstance(records, list):
        raise DataError(f"{source}: expected a JSON array of zsRE records, got {type(records)}")
    rows = []
    for i, rec in enumerate(records):
        answers = rec.get("answers") if isinstance(rec, dict) else None
        question = _clean(rec.get("src", "")) if isinstance(rec, dict) else ""
        if not question or not answers or not _clean(answers[0]):
            raise DataError(
                f"{source}: record {i} lacks a question ('src') or an answer ('answers'); is this"
                " the zsRE evaluation file (zsre_mend_eval.json)?"
            )
        rows.append((_clean(rec.get("subject", "")), RELATION, question, _clean(answers[0])))
    if not rows:
        raise DataError(f"{source}: no records")
    return rows


def convert(source: Path, out: Path) -> int:
    """Write the facts TSV `out` (and ``manifest.json`` beside it) from the zsRE evaluation
    file `source`; returns the number of facts."""
    raw = source.read_bytes()
    try:
        records = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{source}: not a JSON file ({err})") from None
    rows = facts_rows(records, str(source))
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(COLUMNS), *("\t".join(r) for r in rows)]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    manifest = {
        "source": source.name,
        "sha256": hashlib.sha256(raw).hexdigest(),
        "facts": len(rows),
        "relation": RELATION,
    }
    (out.parent / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return len(rows)
