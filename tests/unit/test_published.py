"""The published values of the five papers: every shipped file validates, the loader refuses a
doctored entry with a message naming it, and the transcribed numbers appear in the seed text."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from tuneatlas.catalogue import ARTIFACTS
from tuneatlas.errors import ConfigError
from tuneatlas.studies import published
from tuneatlas.studies.published import (
    FRACTION_QUANTITIES,
    PublishedValue,
    all_published,
    load_published,
    parse_published,
)

SEEDS = Path(__file__).resolve().parents[2] / ".." / "shared" / "seeds"
SHIPPED = Path(published.__file__).parent / "published"
# the paper prints these as percentages with one (S1) or two (S5) decimals, shares as decimals
PERCENT_COLUMNS = ("value", "stability", "mean", "max")


def _seed_text(seed_file: str) -> str:
    path = SEEDS / seed_file
    if not path.is_file():
        pytest.skip(f"seed {seed_file} not beside the repository (../shared/seeds)")
    # the S2 seed writes a minus sign as U+2212 and runs table cells together
    return path.read_text(encoding="utf-8").replace("\u2212", "-")


def _printed_forms(v: PublishedValue) -> list[str]:
    """How the paper may print `v.value`: a percentage for fraction scores, else the number."""
    x = v.value
    if v.quantity.split()[:1] in [[q] for q in FRACTION_QUANTITIES] and v.column in PERCENT_COLUMNS:
        return [f"{100 * x:.1f}", f"{100 * x:.2f}"]
    if float(x).is_integer():
        return [str(int(x))]
    return [f"{x:.2f}", f"{x:.3f}", f"{x:g}", f"{x:+.2f}"]


def test_every_shipped_file_loads_and_counts():
    got = all_published()
    assert set(got) == {"s1", "s2", "s3", "s4", "s5"}
    assert {p.stem for p in SHIPPED.glob("*.yaml")} == set(got)
    counts = {study: len(values) for study, values in got.items()}
    assert all(n > 0 for n in counts.values()), counts
    for study, values in got.items():
        assert all(v.study == study and v.artifact in ARTIFACTS for v in values)
        assert len({v.id for v in values}) == len(values)
        assert values[0].paper and values[0].seed_file.endswith(".txt")


def test_a_study_without_a_file_gives_nothing():
    assert load_published("s9") == []


def test_every_value_appears_in_its_seed():
    """Each transcribed number is printed in the paper (percent for fraction scores)."""
    missing = []
    for values in all_published().values():
        text = _seed_text(values[0].seed_file)
        for v in values:
            if not any(
                re.search(rf"(?<![\d.]){re.escape(s)}(?!\d)", text) for s in _printed_forms(v)
            ):
                missing.append((v.id, v.value, _printed_forms(v)))
    assert not missing, missing


@pytest.mark.parametrize(
    ("study", "entry_id", "value"),
    [
        ("s1", "s1-t1-sst2-cls", 0.948),
        ("s1", "s1-t1-rte-maxnorm", 0.563),
        ("s1", "s1-t4-cola-frozen-2fc", 0.0),
        ("s1", "s1-t3-sst2-test", 0.936),
        ("s2", "s2-t1-vanilla-2e-5-failures", 25),
        ("s2", "s2-t2-simcse-p05", 8.17),
        ("s3", "s3-t2-eps015-share", 0.456),
        ("s4", "s4-t1-570m-middle70", 1.35),
        ("s5", "s5-t1-ensemble-monju", 0.9404),
    ],
)
def test_spot_checks(study, entry_id, value):
    by_id = {v.id: v for v in load_published(study)}
    assert by_id[entry_id].value == pytest.approx(value)


def _doc(study: str = "s1") -> dict:
    return yaml.safe_load((SHIPPED / f"{study}.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda e: e.update(artifact="S1.T9"), "artifact"),
        (lambda e: e["setting"].update(colour="red"), "setting.colour"),
        (lambda e: e.update(value=94.8), "value"),
        (lambda e: e.update(value="0.9"), "value"),
        (lambda e: e.update(value=float("nan")), "value"),
        (lambda e: e.update(column="score"), "column"),
        (lambda e: e.pop("source"), "source"),
        (lambda e: e.update(std="wide"), "std"),
        (lambda e: e.update(extra=1), "extra"),
        (lambda e: e.update(quantity=""), "quantity"),
    ],
)
def test_a_doctored_entry_is_refused_naming_it(change, key):
    doc = _doc()
    entry = doc["values"][3]
    change(entry)
    with pytest.raises(ConfigError) as err:
        parse_published("s1", doc, "published/s1.yaml")
    message = str(err.value)
    assert "published/s1.yaml" in message and entry["id"] in message and repr(key) in message
    assert "\n" not in message


def test_duplicate_ids_bad_ids_and_a_wrong_study_are_refused():
    doc = _doc()
    doc["values"].append(copy.deepcopy(doc["values"][0]))
    with pytest.raises(ConfigError, match="used twice"):
        parse_published("s1", doc, "published/s1.yaml")
    doc = _doc()
    doc["values"][0]["id"] = "S1 T1"
    with pytest.raises(ConfigError, match=r"'S1 T1', key 'id'"):
        parse_published("s1", doc, "published/s1.yaml")
    with pytest.raises(ConfigError, match="differs from the file name"):
        parse_published("s2", _doc(), "published/s2.yaml")
