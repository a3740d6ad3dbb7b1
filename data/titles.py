"""Item titles from the item files that come with MovieLens and RecBole data sets.

- MovieLens-100k `u.item`: `id|title|release date|...` (Latin-1);
- MovieLens-1M/10M `movies.dat`: `id::title::genres`;
- MovieLens-20M/25M/latest `movies.csv`: header `movieId,title,genres`, quoted titles;
- RecBole atomic `.item`: tab-separated typed header with `item_id:token` and a title column
  (`movie_title:token_seq` in ml-100k), the release year appended as in MovieLens: "Star Wars (1977)".

Text is read as UTF-8, or as Latin-1 when it is not valid UTF-8 (the older MovieLens files).
A malformed line raises DataFormatError. Torch-free.
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from data.errors import DataFormatError

# Item files looked for next to a ratings file, in order; "{stem}" is the ratings file's name without
# its extension (RecBole pairs ml-100k.inter with ml-100k.item).
TITLE_FILES = ("u.item", "movies.dat", "movies.csv", "{stem}.item")


def titles_beside(ratings_path: Path) -> dict[str, str]:
    """external item id -> title from the first item file of TITLE_FILES next to ratings_path; {} if none."""
    stem = ratings_path.name.removesuffix(".gz").rsplit(".", 1)[0]
    for pattern in TITLE_FILES:
        candidate = ratings_path.with_name(pattern.format(stem=stem))
        if candidate.is_file() and candidate != ratings_path:
            return read_titles(candidate)
    return {}


def read_titles(path: Path) -> dict[str, str]:
    """Titles from one item file, its format told by its name."""
    text = decode_text(path.read_bytes())
    name = path.name.lower()
    if name == "u.item":
        return parse_separated_titles(text, "|", str(path))
    if name.endswith(".dat"):
        return parse_separated_titles(text, "::", str(path))
    if name.endswith(".item"):
        return parse_recbole_titles(text, str(path))
    return parse_csv_titles(text, str(path))


def decode_text(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def parse_separated_titles(text: str, separator: str, display_name: str) -> dict[str, str]:
    """`id<sep>title<sep>...` lines without header (u.item, movies.dat)."""
    titles: dict[str, str] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(separator)
        if len(fields) < 2:
            raise DataFormatError(display_name, line_no, "title",
                                  f"missing (no {separator!r} after the item id)")
        item = fields[0].strip()
        if not item:
            raise DataFormatError(display_name, line_no, "item_id", "empty")
        titles[item] = fields[1].strip()
    return titles


def parse_csv_titles(text: str, display_name: str) -> dict[str, str]:
    """A CSV with a header naming the item id column (movieId, item_id, ...) and a title column."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        return {}
    item_at, title_at = _id_and_title_columns(header, display_name)
    titles: dict[str, str] = {}
    for fields in reader:
        if not "".join(fields).strip():
            continue
        line_no = reader.line_num
        if len(fields) <= max(item_at, title_at):
            raise DataFormatError(display_name, line_no, header[max(item_at, title_at)], "missing")
        item = fields[item_at].strip()
        if not item:
            raise DataFormatError(display_name, line_no, header[item_at], "empty")
        titles[item] = fields[title_at].strip()
    return titles


def parse_recbole_titles(text: str, display_name: str) -> dict[str, str]:
    """A RecBole `.item` file: tab-separated, typed header; 'Title (year)' when a year column is there."""
    lines = text.splitlines()
    if not lines:
        return {}
    header = [field.split(":", 1)[0].strip() for field in lines[0].split("\t")]
    item_at, title_at = _id_and_title_columns(header, display_name)
    year_at = next((c for c, name in enumerate(header) if name.lower() in ("release_year", "year")), None)
    titles: dict[str, str] = {}
    for line_no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) <= max(item_at, title_at):
            raise DataFormatError(display_name, line_no, header[max(item_at, title_at)], "missing")
        item = fields[item_at].strip()
        if not item:
            raise DataFormatError(display_name, line_no, header[item_at], "empty")
        title = fields[title_at].strip()
        year = fields[year_at].strip() if year_at is not None and year_at < len(fields) else ""
        titles[item] = f"{title} ({year})" if re.fullmatch(r"[0-9]{4}", year) else title
    return titles


def _id_and_title_columns(header: list[str], display_name: str) -> tuple[int, int]:
    keys = [re.sub(r"[^0-9a-z]", "", name.lower()) for name in header]
    item_at = next((keys.index(k) for k in ("itemid", "movieid", "item", "movie", "id") if k in keys), None)
    title_at = next((c for c, k in enumerate(keys) if "title" in k), None)
    if title_at is None:
        title_at = next((c for c, k in enumerate(keys) if "name" in k), None)
    if item_at is None or title_at is None:
        raise DataFormatError(display_name, 1, None, f"no item id and title columns in header {header}")
    return item_at, title_at
