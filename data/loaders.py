"""load_dataset: a data-set name or a ratings file -> SequenceDataset (chronological per-user sequences).

Sources:
- "ml-100k": MovieLens-100k from the recbole==1.2.1 wheel (data/movielens.py), with titles;
- a file: MovieLens u.data / ratings.dat / ratings.csv, a RecBole .inter, or any CSV/TSV whose header
  names user, item and timestamp columns (data/interactions.py); titles come from a u.item,
  movies.dat, movies.csv or <stem>.item next to it (data/titles.py);
- a directory holding one of u.data, ratings.dat, ratings.csv(.gz) or a single .inter file.

The result is deterministic: users and items are ordered by their external ids, numbers compared as
numbers ("2" < "10", "item2" < "item10"); internal item ids run 1..I-1 in that order, 0 is padding.
Each user's events are sorted by timestamp, events with equal timestamps kept in file order.
Torch-free.
"""
from __future__ import annotations

import gzip
import math
import re
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

from data.dataset import ItemVocab, SequenceDataset
from data.errors import (
    DataFormatError,
    DatasetError,
    DatasetNotFoundError,
    UnknownDatasetError,
)
from data.interactions import ColumnSpec, RawInteractions, read_interactions
from data.movielens import read_ml100k
from data.titles import titles_beside

__all__ = ["load_dataset", "build_dataset", "write_interactions", "natural_key", "chronological_order", "DatasetError",
           "DataFormatError", "DatasetNotFoundError", "UnknownDatasetError", "KNOWN_DATASETS"]

KNOWN_DATASETS = ("ml-100k", "ml-1m", "beauty")
# Named benchmark data sets read from a local directory (never downloaded or shipped by the project):
# $CMNREC_DATA_DIR/<name>/<file>, the layout of the team's ../shared/data (see README "Data sets").
DATA_DIR_ENV = "CMNREC_DATA_DIR"
LOCAL_DATASETS = {"ml-1m": "ml-1m/ml-1m.csv.gz", "beauty": "beauty/beauty.csv.gz"}
RATINGS_FILES = ("u.data", "ratings.dat", "ratings.csv", "ratings.csv.gz")
WRITE_FORMATS = ("u.data", "ratings.dat", "ratings.csv", "inter", "csv", "tsv")


def load_dataset(source: str | Path, *, min_item_freq: int = 0, min_user_len: int = 0,
                 cache_dir: str | Path | None = None, user_col: ColumnSpec = None, item_col: ColumnSpec = None,
                 time_col: ColumnSpec = None) -> SequenceDataset:
    """Load a data set as chronological per-user sequences of internal item ids.

    source: "ml-100k", or the path of a ratings file or of a directory holding one.
    min_item_freq: drop every event of an item with fewer events than this (0 or 1: keep all).
    min_user_len: then drop users with fewer events than this (users left with none are always dropped).
        One pass each, in that order (not an iterated k-core).
    cache_dir: where the recbole wheel is cached (default $CMNREC_CACHE_DIR, else ~/.cache/cmnrec).
    user_col, item_col, time_col: a header name or a 0-based column number, overriding detection.
    Raises UnknownDatasetError, DatasetNotFoundError, DataFormatError (all DatasetError).
    """
    for option, value in (("min_item_freq", min_item_freq), ("min_user_len", min_user_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{option} must be an integer >= 0, got {value!r}")
    name = str(source)
    if name == "ml-100k":
        raw, titles = read_ml100k(cache_dir)
    else:
        path = local_dataset_path(name) if name in LOCAL_DATASETS else _ratings_file(name)
        raw = read_interactions(_opener(path), str(path), path.name,
                                user_col=user_col, item_col=item_col, time_col=time_col)
        titles = titles_beside(path)
    return build_dataset(name, raw, titles, min_item_freq=min_item_freq, min_user_len=min_user_len)


def build_dataset(name: str, raw: RawInteractions, titles: dict[str, str] | None = None, *,
                  min_item_freq: int = 0, min_user_len: int = 0) -> SequenceDataset:
    """Filter, order and split raw events into a SequenceDataset (see load_dataset for the rules)."""
    user_codes, item_codes, times = raw.user_codes, raw.item_codes, raw.timestamps
    if min_item_freq > 1:
        keep = np.bincount(item_codes, minlength=len(raw.items))[item_codes] >= min_item_freq
        user_codes, item_codes, times = user_codes[keep], item_codes[keep], times[keep]
    keep = np.bincount(user_codes, minlength=len(raw.users))[user_codes] >= max(1, min_user_len)
    user_codes, item_codes, times = user_codes[keep], item_codes[keep], times[keep]
    if len(times) == 0:
        raise ValueError(f"{name}: no interactions left after min_item_freq={min_item_freq}, "
                         f"min_user_len={min_user_len}")

    item_ids, item_rank = _ranked(raw.items, item_codes)
    user_ids, user_rank = _ranked(raw.users, user_codes)
    internal = item_rank[item_codes] + 1  # 0 is padding
    users = user_rank[user_codes]
    order = chronological_order(users, times)
    ends = np.cumsum(np.bincount(users, minlength=len(user_ids))).tolist()
    spans = list(zip([0, *ends[:-1]], ends))
    items_in_order = internal[order].astype(np.int64)
    times_in_order = times[order].astype(np.float64)
    kept_titles = {item: titles[item] for item in item_ids if item in (titles or {})}
    return SequenceDataset(name=name, users=user_ids,
                           sequences=[items_in_order[a:b] for a, b in spans],
                           vocab=ItemVocab.from_items(item_ids, kept_titles),
                           timestamps=[times_in_order[a:b] for a, b in spans])


def chronological_order(users: np.ndarray, times: np.ndarray) -> np.ndarray:
    """[E] order of events grouped by user (ascending user index), each user's events by time, equal
    times in their original order: a stable sort by (user, time).

    users: [E] int64 user index >= 0; times: [E] float64. Sorting unique int64 keys (value * E + original
    position) with numpy's default sort gives the same order as kind="stable" several times faster.
    """
    count = len(times)
    position = np.arange(count, dtype=np.int64)
    if count == 0:
        return position
    span = float(times.max() - times.min())
    if np.array_equal(np.floor(times), times) and (span + 1) * count < 2**62:
        by_time = np.argsort((times - times.min()).astype(np.int64) * count + position)
    else:
        by_time = np.argsort(times, kind="stable")
    if (int(users.max()) + 1) * count < 2**62:
        return by_time[np.argsort(users[by_time] * count + position)]
    return by_time[np.argsort(users[by_time], kind="stable")]


def natural_key(external_id: str) -> tuple[tuple[str | int, ...], str]:
    """Sort key comparing digit runs as numbers: "2" < "10", "item2" < "item10"; ties broken by the text."""
    if external_id.isascii() and external_id.isdigit():
        return ("", int(external_id), ""), external_id  # the common case, without the regex
    parts = re.split(r"([0-9]+)", external_id)
    return tuple(int(p) if k % 2 else p for k, p in enumerate(parts)), external_id


def write_interactions(dataset: SequenceDataset, path: str | Path, fmt: str | None = None, *,
                       rating: float = 5.0) -> Path:
    """Write a data set's events as one log, sorted by time (ties: user order, then sequence order).

    fmt: "u.data", "ratings.dat", "ratings.csv", "inter" (RecBole), "csv" / "tsv" (header
    user_id,item_id,timestamp); default from the file name. A SequenceDataset keeps no ratings, so
    formats with a rating column get `rating` on every line. Without timestamps, the position in the
    user's sequence is the timestamp. Returns the path.
    """
    path = Path(path)
    fmt = fmt or _format_from_name(path.name)
    if fmt not in WRITE_FORMATS:
        raise ValueError(f"fmt must be one of {WRITE_FORMATS}, got {fmt!r}")
    separator, header, with_rating = {
        "u.data": ("\t", None, True),
        "ratings.dat": ("::", None, True),
        "ratings.csv": (",", "userId,movieId,rating,timestamp", True),
        "inter": ("\t", "user_id:token\titem_id:token\trating:float\ttimestamp:float", True),
        "csv": (",", "user_id,item_id,timestamp", False),
        "tsv": ("\t", "user_id\titem_id\ttimestamp", False),
    }[fmt]
    if dataset.num_interactions == 0:
        raise ValueError(f"{dataset.name}: no events to write")
    user_index = np.concatenate([np.full(len(s), u, dtype=np.int64) for u, s in enumerate(dataset.sequences)])
    items = np.concatenate(dataset.sequences) if dataset.sequences else np.zeros(0, dtype=np.int64)
    if dataset.timestamps is not None:
        times = np.concatenate(dataset.timestamps)
    else:
        times = np.concatenate([np.arange(len(s), dtype=np.float64) for s in dataset.sequences])
    order = np.argsort(times, kind="stable")  # the concatenation is in user order, then sequence order
    for external in (*dataset.users, *dataset.vocab.ids[1:]):
        if separator in external or "\n" in external or '"' in external or not external.strip():
            raise ValueError(f"id {external!r} cannot be written as a {fmt} field")
    rating_text = f"{rating:g}"
    lines = [] if header is None else [header]
    for e in order.tolist():
        fields = [dataset.users[user_index[e]], dataset.vocab.decode(int(items[e]))]
        if with_rating:
            fields.append(rating_text)
        fields.append(_number_text(float(times[e])))
        lines.append(separator.join(fields))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _ranked(external_ids: list[str], codes: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The external ids present in codes, natural-sorted, and code -> rank in that list (-1 if absent)."""
    present = np.flatnonzero(np.bincount(codes, minlength=len(external_ids))).tolist()
    present.sort(key=lambda code: natural_key(external_ids[code]))
    rank = np.full(len(external_ids), -1, dtype=np.int64)
    rank[present] = np.arange(len(present))
    return [external_ids[code] for code in present], rank


def local_dataset_path(name: str, data_dir: str | Path | None = None) -> Path:
    """The file of a named local data set ("ml-1m", "beauty") under data_dir or $CMNREC_DATA_DIR.

    Raises DatasetNotFoundError saying how to get the file when the directory or the file is missing.
    """
    import os

    root = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    if not root:
        raise DatasetNotFoundError(
            f"data set {name!r} is read from a local copy: set {DATA_DIR_ENV} to the directory holding "
            f"{LOCAL_DATASETS[name]} (README, section 'Data sets'), or pass the file's path instead")
    path = Path(root).expanduser() / LOCAL_DATASETS[name]
    if not path.is_file():
        raise DatasetNotFoundError(f"data set {name!r}: {path} not found ({DATA_DIR_ENV}={root})")
    return path


def _ratings_file(source: str) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        found = [path / name for name in RATINGS_FILES if (path / name).is_file()]
        inter = sorted(path.glob("*.inter"))
        found += inter if len(inter) == 1 else []
        if not found:
            raise DatasetNotFoundError(f"data set directory {source} holds none of {', '.join(RATINGS_FILES)} "
                                       "or a single .inter file")
        return found[0]
    if path.is_file():
        return path
    if not path.suffix and "/" not in source and "\\" not in source:
        raise UnknownDatasetError(f"unknown data set {source!r}: known data sets are {', '.join(KNOWN_DATASETS)}; "
                                  "otherwise give the path of a ratings file (u.data, ratings.dat, ratings.csv, "
                                  "a RecBole .inter, or a CSV/TSV with user, item and timestamp columns)")
    raise DatasetNotFoundError(f"data set file not found: {source}")


def _opener(path: Path) -> Callable[[], BinaryIO]:
    if path.name.lower().endswith(".gz"):
        return lambda: gzip.open(path, "rb")
    return lambda: open(path, "rb")


def _format_from_name(name: str) -> str:
    lowered = name.lower()
    if lowered in ("u.data", "ratings.dat", "ratings.csv"):
        return lowered
    if lowered.endswith(".inter"):
        return "inter"
    if lowered.endswith((".tsv", ".tab")):
        return "tsv"
    return "csv"


def _number_text(value: float) -> str:
    return str(int(value)) if value.is_integer() and math.isfinite(value) else repr(value)
