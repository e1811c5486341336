"""Views of artifacts that Snakemake's HTML report can show inline.

The report shows PNG/SVG/JPEG as images and HTML in a frame; a Parquet table or a GIF would
only be a download link. So each artifact table gets an HTML rendering (its first rows, with the
total when it is longer) and the S3.F4 GIF an animated PNG (APNG), which the report's <img> plays.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tuneatlas.errors import ConfigError
from tuneatlas.io import read_parquet_meta

# a report page of a few hundred rows stays light; the Parquet file holds all of them
MAX_TABLE_ROWS = 200

_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; font-size: 13px; margin: 12px; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 2px 6px; text-align: left; }}
th {{ background: #f0f0f0; position: sticky; top: 0; }}
p.note {{ color: #555; }}
</style></head>
<body><h3>{title}</h3><p class="note">{note}</p>
{table}
</body></html>
"""


def table_html(table: Path, out: Path, max_rows: int = MAX_TABLE_ROWS) -> None:
    """Write `table` (an artifact's Parquet file) as an HTML page of its first `max_rows` rows."""
    df = pd.read_parquet(table)
    artifact = read_parquet_meta(table).get("artifact", table.stem)
    shown = df.head(max_rows)
    note = (
        f"{len(df)} row{'' if len(df) == 1 else 's'}"
        if len(df) <= max_rows
        else f"the first {max_rows} of {len(df)} rows; all of them are in {table.name}"
    )
    body = shown.to_html(index=False, float_format=lambda x: f"{x:.4g}", na_rep="", border=0)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_PAGE.format(title=f"{artifact}: {table.name}", note=note, table=body))


def animated_png(gif: Path, out: Path) -> None:
    """Re-encode the frames of `gif` (with their durations) as an animated PNG at `out`."""
    from PIL import Image, ImageSequence

    with Image.open(gif) as animation:
        frames = [frame.convert("RGBA") for frame in ImageSequence.Iterator(animation)]
        durations = [frame.info.get("duration", 100) for frame in ImageSequence.Iterator(animation)]
    out.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(
        out, format="PNG", save_all=True, append_images=frames[1:], duration=durations, loop=0
    )


def write_report_view(source: Path, out: Path) -> None:
    """The report's view of `source`: an HTML page of a Parquet table, an APNG of a GIF."""
    if source.suffix == ".parquet":
        table_html(source, out)
    elif source.suffix == ".gif":
        animated_png(source, out)
    else:
        raise ConfigError(
            f"no report view for {source} (known: a .parquet table, a .gif animation)"
        )
