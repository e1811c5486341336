"""The report's views of artifacts: a table as an HTML page, the S3.F4 GIF as an animated PNG."""

from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from tuneatlas.cli import main
from tuneatlas.errors import ConfigError
from tuneatlas.io import write_parquet
from tuneatlas.report import table_html, write_report_view


def test_table_page_shows_the_first_rows_and_says_how_many_there_are(tmp_path):
    table = tmp_path / "s1_t1.parquet"
    write_parquet(
        pd.DataFrame({"task": ["sst2"] * 5, "value": [0.91234567] * 5}),
        table,
        {"artifact": "S1.T1"},
    )
    table_html(table, tmp_path / "short.html")
    short = (tmp_path / "short.html").read_text()
    assert "S1.T1" in short and "5 rows" in short and "0.9123" in short
    table_html(table, tmp_path / "long.html", max_rows=2)
    long = (tmp_path / "long.html").read_text()
    assert "the first 2 of 5 rows" in long
    assert long.count("<td>sst2</td>") == 2


def test_gif_becomes_an_animated_png_through_the_cli(tmp_path):
    gif = tmp_path / "s3_f4.gif"
    frames = [Image.new("RGB", (16, 16), colour) for colour in ("red", "green", "blue")]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=200, loop=0)
    out = tmp_path / "animated" / "s3_f4.png"
    main(["report-view", "--input", str(gif), "--out", str(out)])
    with Image.open(out) as apng:
        assert apng.format == "PNG"
        assert getattr(apng, "n_frames", 1) == 3


def test_unknown_source_kind_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no report view"):
        write_report_view(tmp_path / "x.csv", tmp_path / "x.html")
