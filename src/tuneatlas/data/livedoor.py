"""livedoor news corpus (S3): the original archive -> TSV files for a `source: file` dataset.

The hub copy, ``shunk031/livedoor-news-corpus``, is a loading-script dataset, which `datasets`
>= 4 refuses to run. This converter reads the original archive instead
(``ldcc-20140209.tar.gz`` from https://www.rondhuit.com/download.html#ldcc, or the directory it
unpacks to), with nothing but the standard library:

    tuneatlas livedoor-convert ldcc-20140209.tar.gz data/livedoor

Layout read: ``text/<category>/<category>-<id>.txt`` for the 9 categories of the task registry
(`tuneatlas.data.tasks`, task ``livedoor``); each file is a URL line, a date line, a title line
and the body lines. ``LICENSE.txt`` (one per category), ``README.txt`` and ``CHANGES.txt`` are
skipped. Fields are parsed as the hub script does (lines stripped, body lines joined with a
space, empty lines dropped); tabs become spaces, since the TSVs are read without quoting.

Written: ``train.tsv``, ``valid.tsv``, ``test.tsv`` (columns ``url date title content
category``, the category by name) and ``manifest.json`` (counts, seed, the archive's SHA-256).
Sizes are the hub script's: train = ceil(0.8 n), valid = ceil(0.1 n), test = the rest, i.e.
5,894 / 737 / 736 of the 7,367 articles of the 2014-02-09 release (the paper's 5,894 train /
736 test). Unlike the hub script (archive order, unshuffled by default), the split is seeded
and stratified by category: each category is shuffled with the seed and dealt out to the splits
in proportion (largest remainders), so every split has every category at its corpus share; a
plain shuffle would leave the smallest category (livedoor-homme, 511 articles) with fewer than
the 45 test articles per class that S3's imbalanced set-up draws about one time in five.
"""

from __future__ import annotations

import hashlib
import json
import math
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from tuneatlas.data.tasks import get_task
from tuneatlas.errors import DataError
from tuneatlas.io import atomic_path

CATEGORIES: tuple[str, ...] = get_task("livedoor").label_names
COLUMNS: tuple[str, ...] = ("url", "date", "title", "content", "category")
SPLIT_FILES: dict[str, str] = {"train": "train.tsv", "valid": "valid.tsv", "test": "test.tsv"}
RATIOS: dict[str, float] = {"train": 0.8, "valid": 0.1}  # test: the rest
SKIPPED = frozenset({"LICENSE.txt", "README.txt", "CHANGES.txt"})
ARCHIVE_URL = "https://www.rondhuit.com/download/ldcc-20140209.tar.gz"
PAPER_SIZES: dict[str, int] = {"train": 5894, "valid": 737, "test": 736}  # of 7,367 articles


@dataclass(frozen=True)
class Article:
    path: str  # inside the archive, e.g. text/peachy/peachy-4289213.txt
    url: str
    date: str
    title: str
    content: str
    category: str


def _clean(line: str) -> str:
    return line.replace("\t", " ").strip()


def parse_article(text: str, category: str, path: str) -> Article:
    """One article file: URL, date and title lines, then the body."""
    lines = [_clean(line) for line in text.replace("\r", "").split("\n")]
    if len(lines) < 3 or not lines[2]:
        raise DataError(
            f"{path}: not a livedoor article (expected a URL line, a date line, a title line,"
            " then the body); is this the ldcc-20140209 archive?"
        )
    body = " ".join(line for line in lines[3:] if line)
    return Article(path, lines[0], lines[1], lines[2], body, category)


def _members(archive: Path) -> Iterator[tuple[str, bytes]]:
    """(posix path, bytes) of every regular .txt file of a tar(.gz) archive or a directory."""
    if archive.is_dir():
        for p in sorted(archive.rglob("*.txt")):
            if p.is_file():
                yield p.relative_to(archive).as_posix(), p.read_bytes()
        return
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as err:
        raise DataError(
            f"{archive}: cannot open as a tar archive ({err}); download {ARCHIVE_URL}"
        ) from None
    with tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".txt"):
                f = tar.extractfile(member)
                if f is not None:
                    yield member.name, f.read()


def read_archive(archive: str | Path) -> list[Article]:
    """Every article of the archive, sorted by category then file name (order-independent)."""
    archive = Path(archive)
    if not archive.exists():
        raise DataError(f"{archive}: not found; download {ARCHIVE_URL}")
    articles = []
    for name, data in _members(archive):
        path = PurePosixPath(name)
        if path.name in SKIPPED:
            continue
        category = path.parent.name
        if category not in CATEGORIES:
            raise DataError(
                f"{archive}: {name}: directory {category!r} is not a livedoor category"
                f" ({', '.join(CATEGORIES)}); expected text/<category>/<category>-<id>.txt"
            )
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise DataError(f"{archive}: {name}: not UTF-8 text ({err})") from None
        articles.append(parse_article(text, category, name))
    missing = sorted(set(CATEGORIES) - {a.category for a in articles})
    if missing:
        raise DataError(
            f"{archive}: no articles of categor{'y' if len(missing) == 1 else 'ies'}"
            f" {', '.join(missing)}; expected the 9 directories under text/ of {ARCHIVE_URL}"
        )
    return sorted(articles, key=lambda a: (a.category, PurePosixPath(a.path).name))


def split_sizes(n: int) -> dict[str, int]:
    """The hub script's sizes: train ceil(0.8 n), valid ceil(0.1 n), test the rest."""
    train = math.ceil(n * RATIOS["train"])
    valid = min(math.ceil(n * RATIOS["valid"]), n - train)
    return {"train": train, "valid": valid, "test": n - train - valid}


def _allocate(counts: dict[str, int], sizes: dict[str, int]) -> dict[str, dict[str, int]]:
    """Category -> split -> count, with row sums `counts` and column sums `sizes`: each split
    takes its share of what is left of every category (floors, then largest remainders)."""
    left = dict(counts)
    total = sum(counts.values())
    out: dict[str, dict[str, int]] = {c: {} for c in counts}
    for split in ("train", "valid"):
        want = sizes[split]
        quota = {c: left[c] * want / total if total else 0.0 for c in counts}
        take = {c: min(left[c], math.floor(q)) for c, q in quota.items()}
        order = sorted(counts, key=lambda c: (-(quota[c] - math.floor(quota[c])), c))
        short = want - sum(take.values())
        while short > 0:
            for c in order:
                if short and take[c] < left[c]:
                    take[c] += 1
                    short -= 1
        for c in counts:
            out[c][split] = take[c]
            left[c] -= take[c]
        total -= want
    for c in counts:
        out[c]["test"] = left[c]
    return out


def stratified_split(articles: list[Article], seed: int = 0) -> dict[str, list[Article]]:
    """Seeded split with the hub script's sizes, every category at its share in every split."""
    by_cat: dict[str, list[Article]] = {c: [] for c in CATEGORIES}
    for a in articles:
        by_cat[a.category].append(a)
    counts = {c: len(v) for c, v in by_cat.items() if v}
    alloc = _allocate(counts, split_sizes(len(articles)))
    rng = np.random.default_rng(seed)
    out: dict[str, list[Article]] = {s: [] for s in SPLIT_FILES}
    for c in sorted(counts):
        shuffled = [by_cat[c][i] for i in rng.permutation(counts[c])]
        start = 0
        for split in SPLIT_FILES:
            out[split] += shuffled[start : start + alloc[c][split]]
            start += alloc[c][split]
    for split in out:  # classes interleaved, in a seeded order
        out[split] = [out[split][i] for i in rng.permutation(len(out[split]))]
    return out


def _sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_tsv(articles: list[Article], path: Path) -> None:
    with atomic_path(path, ".tsv") as tmp, tmp.open("w", encoding="utf-8", newline="\n") as f:
        f.write("\t".join(COLUMNS) + "\n")
        for a in articles:
            f.write("\t".join(getattr(a, c) for c in COLUMNS) + "\n")


def convert(archive: str | Path, out_dir: str | Path, seed: int = 0) -> dict[str, int]:
    """Write train/valid/test TSVs and manifest.json into `out_dir`; return the split sizes."""
    archive, out_dir = Path(archive), Path(out_dir)
    articles = read_archive(archive)
    splits = stratified_split(articles, seed)
    for split, rows in splits.items():
        write_tsv(rows, out_dir / SPLIT_FILES[split])
    sizes = {s: len(rows) for s, rows in splits.items()}
    manifest = {
        "source": str(archive),
        "sha256": _sha256(archive),
        "seed": seed,
        "articles": len(articles),
        "sizes": sizes,
        "categories": {
            c: {s: sum(a.category == c for a in rows) for s, rows in splits.items()}
            for c in CATEGORIES
        },
        "paper_sizes": sizes == PAPER_SIZES,
    }
    with atomic_path(out_dir / "manifest.json", ".json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return sizes
