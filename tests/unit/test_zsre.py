"""zsRE for S4 at paper scale: the knowledge-editing literature's evaluation file (a JSON array of
records with src / answers / subject, as ROME/MEMIT's zsre_mend_eval.json) becomes the facts TSV
a pre-training corpus's `facts:` names, and the probe's reader loads it."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from tuneatlas.data.prepare import _load_facts
from tuneatlas.errors import DataError

# a hand-made fixture in the public file's record format (invented facts, not its content)
RECORDS = [
    {"subject": "Ruvo Lake", "src": "Which country is Ruvo Lake in?", "answers": ["Kelvania"],
     "rephrase": "Ruvo Lake is located in which country?", "alt": "Morland",
     "loc": "nq question: who wrote the song x", "loc_ans": "someone"},
    {"subject": "Tam\tOrr", "src": "Who founded\nTam Orr?", "answers": ["Ada Venn", "A. Venn"],
     "rephrase": "Tam Orr was founded by?", "alt": "Bo Li",
     "loc": "nq question: when was y", "loc_ans": "1900"},
]  # fmt: skip


def test_the_converter_writes_the_facts_the_probe_reads(tmp_path):
    src = tmp_path / "zsre_mend_eval.json"
    src.write_text(json.dumps(RECORDS))
    out = tmp_path / "zsre" / "facts.tsv"
    run = subprocess.run(
        [sys.executable, "-m", "tuneatlas", "zsre-convert", str(src), str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "2 facts" in run.stdout
    facts = _load_facts("corpus", {"facts": str(out)})
    assert facts["question"].tolist() == ["Which country is Ruvo Lake in?", "Who founded Tam Orr?"]
    assert facts["answer"].tolist() == ["Kelvania", "Ada Venn"]  # the first answer, as ROME
    assert facts["subject"].tolist() == ["Ruvo Lake", "Tam Orr"]  # tabs would split the row
    assert set(facts["relation"]) == {"zsre"} and facts["idx"].tolist() == [0, 1]
    manifest = json.loads((out.parent / "manifest.json").read_text())
    assert manifest["facts"] == 2
    assert manifest["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "records, match",
    [
        ({"src": "q?"}, "expected a JSON array"),
        ([{"src": "q?", "answers": []}], "record 0 lacks a question"),
        ([RECORDS[0], {"answers": ["a"]}], "record 1 lacks a question"),
        ([], "no records"),
    ],
)
def test_a_file_that_is_not_the_zsre_eval_set_is_refused_with_the_record(tmp_path, records, match):
    from tuneatlas.data.zsre import convert

    src = tmp_path / "x.json"
    src.write_text(json.dumps(records))
    with pytest.raises(DataError, match=match):
        convert(src, tmp_path / "facts.tsv")
