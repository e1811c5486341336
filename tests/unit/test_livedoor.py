"""livedoor converter (the original archive -> TSVs of a `source: file` dataset) on a tiny
synthetic archive with the real layout, and the config check that refuses the hub's script copy."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tuneatlas.config import validate_config
from tuneatlas.data import livedoor
from tuneatlas.data.prepare import prepare_dataset, read_prepared
from tuneatlas.data.tasks import get_task
from tuneatlas.errors import ConfigError, DataError
from tuneatlas.plan import make_plan
from tuneatlas.preflight import preflight

REPO = Path(__file__).resolve().parents[2]
CATS = livedoor.CATEGORIES
# a different count per category, so that stratification is visible
COUNTS = {c: 10 + 3 * i for i, c in enumerate(CATS)}


def _article(cat: str, i: int) -> str:
    return (
        f"http://news.livedoor.com/article/detail/{1000 + i}/\n"
        "2012-09-25T10:00:00+0900\n"
        f"{cat} title\t{i}\n"  # a tab inside a field must not split the TSV row
        f"body of {cat} {i} line one\n"
        "\n"
        f"  line\ttwo {i}  \n"
    )


def _files(counts=COUNTS) -> dict[str, str]:
    files = {"text/README.txt": "readme", "text/CHANGES.txt": "changes"}
    for cat, n in counts.items():
        files[f"text/{cat}/LICENSE.txt"] = "license"
        for i in range(n):
            files[f"text/{cat}/{cat}-{i}.txt"] = _article(cat, i)
    return files


def _tar(path: Path, files: dict[str, str], reverse: bool = False) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name in sorted(files, reverse=reverse):
            data = files[name].encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def archive(tmp_path) -> Path:
    return _tar(tmp_path / "ldcc.tar.gz", _files())


def test_split_sizes_are_the_papers_for_the_real_corpus():
    paper = {"train": 5894, "valid": 737, "test": 736}
    assert livedoor.split_sizes(7367) == livedoor.PAPER_SIZES == paper
    # the real 2014-02-09 category counts: stratified, every category keeps >= 45 test articles
    real = {
        "dokujo-tsushin": 870,
        "it-life-hack": 870,
        "kaden-channel": 864,
        "livedoor-homme": 511,
        "movie-enter": 870,
        "peachy": 842,
        "smax": 870,
        "sports-watch": 900,
        "topic-news": 770,
    }
    alloc = livedoor._allocate(real, livedoor.split_sizes(7367))
    for split, n in livedoor.PAPER_SIZES.items():
        assert sum(a[split] for a in alloc.values()) == n
    assert all(sum(a.values()) == real[c] for c, a in alloc.items())
    assert min(a["test"] for a in alloc.values()) == alloc["livedoor-homme"]["test"] >= 45


def test_convert_writes_a_stratified_seeded_split_usable_as_a_file_source(archive, tmp_path):
    out = tmp_path / "out"
    sizes = livedoor.convert(archive, out, seed=0)
    n = sum(COUNTS.values())
    assert sizes == livedoor.split_sizes(n) and sum(sizes.values()) == n
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "test.tsv",
        "train.tsv",
        "valid.tsv",
    ]
    tables = {s: pd.read_csv(out / f"{s}.tsv", sep="\t", dtype=str) for s in sizes}
    assert list(tables["train"].columns) == list(livedoor.COLUMNS)
    everything = pd.concat(tables.values())
    assert len(everything.drop_duplicates(["category", "title"])) == n
    # stratified: each category within one article of its share in every split
    for split, df in tables.items():
        got = df["category"].value_counts().to_dict()
        for cat, count in COUNTS.items():
            assert abs(got.get(cat, 0) - count * sizes[split] / n) < 1 + 1e-9, (split, cat)
    row = tables["train"].iloc[0]
    i = row["title"].split()[-1]
    assert row["title"] == f"{row['category']} title {i}"  # tab -> space
    assert row["content"] == f"body of {row['category']} {i} line one line two {i}"

    cfg = {
        "source": "file",
        "task": "livedoor",
        "files": {"train": str(out / "train.tsv"), "test": str(out / "test.tsv")},
    }
    prepared = prepare_dataset("livedoor", cfg, tmp_path / "data", seed=0)
    train = read_prepared(prepared["train"])
    assert len(train) == sizes["train"] and len(read_prepared(prepared["test"])) == sizes["test"]
    names = get_task("livedoor").label_names
    expected = [names.index(c) for c in tables["train"]["category"]]
    assert list(train["label"]) == expected
    assert train["text_a"].iloc[0] == row["content"]  # the body alone, as the paper


def test_convert_is_seeded_and_independent_of_archive_order(archive, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    livedoor.convert(archive, a, seed=0)
    livedoor.convert(_tar(tmp_path / "reversed.tar.gz", _files(), reverse=True), b, seed=0)
    livedoor.convert(archive, c, seed=1)
    for split in ("train", "valid", "test"):
        assert (a / f"{split}.tsv").read_bytes() == (b / f"{split}.tsv").read_bytes()
    assert (a / "test.tsv").read_bytes() != (c / "test.tsv").read_bytes()
    # an unpacked archive (a directory) gives the same files
    unpacked = tmp_path / "unpacked"
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")
    livedoor.convert(unpacked, tmp_path / "d", seed=0)
    assert (a / "train.tsv").read_bytes() == (tmp_path / "d" / "train.tsv").read_bytes()


def test_bad_archives_fail_naming_the_problem(tmp_path):
    with pytest.raises(DataError, match="not found; download https://www.rondhuit.com"):
        livedoor.read_archive(tmp_path / "nope.tar.gz")
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(DataError, match="cannot open as a tar archive"):
        livedoor.read_archive(tmp_path / "junk.tar.gz")
    short = dict(COUNTS)
    del short["smax"]
    with pytest.raises(DataError, match="no articles of category smax"):
        livedoor.read_archive(_tar(tmp_path / "short.tar.gz", _files(short)))
    files = _files()
    files["text/peachy/peachy-0.txt"] = "http://x\n2012\n"
    with pytest.raises(DataError, match=r"text/peachy/peachy-0\.txt: not a livedoor article"):
        livedoor.read_archive(_tar(tmp_path / "bad.tar.gz", files))
    files = _files()
    files["text/gossip/gossip-0.txt"] = _article("gossip", 0)
    with pytest.raises(DataError, match="'gossip' is not a livedoor category"):
        livedoor.read_archive(_tar(tmp_path / "extra.tar.gz", files))


def test_cli_converts(archive, tmp_path, capsys):
    from tuneatlas.cli import main

    main(["livedoor-convert", str(archive), str(tmp_path / "out"), "--seed", "3"])
    printed = capsys.readouterr().out
    assert "train.tsv 159" in printed and "the paper's split is" in printed
    assert (tmp_path / "out" / "test.tsv").is_file()


@pytest.mark.parametrize("entry", [{"path": "shunk031/livedoor-news-corpus"}, {}])
def test_a_loading_script_hub_dataset_fails_validation_with_the_way_out(entry):
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    raw["datasets"]["ld"] = {"source": "hub", "task": "livedoor", **entry}
    config = validate_config(raw)
    with pytest.raises(ConfigError) as err:
        preflight(config, make_plan(config), check_device=False)
    msg = str(err.value)
    assert "datasets.ld.path" in msg and "loading-script dataset" in msg
    assert "tuneatlas livedoor-convert ldcc-20140209.tar.gz data/livedoor" in msg


def test_paper_reads_livedoor_from_the_converter_output():
    config = validate_config(yaml.safe_load((REPO / "paper.yaml").read_text()))
    for name in ("livedoor", "livedoor-imb"):
        cfg = config["datasets"][name]
        assert cfg["source"] == "file"
        assert cfg["files"] == {
            "train": "data/livedoor/train.tsv",
            "test": "data/livedoor/test.tsv",
        }
    assert (
        "tuneatlas livedoor-convert ldcc-20140209.tar.gz data/livedoor"
        in (REPO / "paper.yaml").read_text()
    )


def test_paper_preflight_warns_in_a_dry_run_and_refuses_a_real_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/ here: a fresh clone
    config = validate_config(yaml.safe_load((REPO / "paper.yaml").read_text()))
    plan = make_plan(config)
    warnings = preflight(config, plan, check_device=False, dry_run=True)
    paths = [w.split(" ")[0] for w in warnings]
    assert paths == ["data/livedoor/train.tsv", "data/livedoor/test.tsv", "data/zsre/facts.tsv"]
    assert all(
        "a real run refuses to start without it; make it with `tuneatlas" in w for w in warnings
    )
    with pytest.raises(ConfigError) as err:
        preflight(config, plan, check_device=False)
    lines = str(err.value).splitlines()[1:]
    assert len(lines) == 6  # one per config key: 2 livedoor datasets x 2 files, 2 facts keys
    assert "datasets.livedoor-imb.files.test: data/livedoor/test.tsv does not exist" in lines[3]
    # stand-ins that pass the row checks validation runs (known categories, enough rows per
    # class for the paper's 400-example group and its 45 test rows)
    rows = [
        livedoor.Article(f"text/{c}/{c}-{i}.txt", "http://x", "2012-01-01", "title", f"body {i}", c)
        for c in livedoor.CATEGORIES
        for i in range(450)
    ]
    for split in ("train", "test"):
        livedoor.write_tsv(rows, tmp_path / f"data/livedoor/{split}.tsv")
    warnings = preflight(config, plan, check_device=False, dry_run=True)
    assert [w.split(" ")[0] for w in warnings] == ["data/zsre/facts.tsv"]
