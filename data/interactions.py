"""Reading an interaction log (one user, item, timestamp event per line) into raw columns in file order.

Formats, told apart by file name and first line:
- MovieLens `u.data`: tab-separated `user item rating timestamp`, no header;
- MovieLens `ratings.dat`: `user::item::rating::timestamp`, no header;
- MovieLens `ratings.csv`: header `userId,movieId,rating,timestamp`;
- RecBole atomic `.inter`: tab-separated, typed header such as `user_id:token item_id:token ...`;
- any CSV/TSV (`,` `;` `|` or tab) whose header names a user, an item and a timestamp column (common
  names recognised, see USER_COLUMNS / ITEM_COLUMNS / TIME_COLUMNS; `user_col`/`item_col`/`time_col`
  override with a header name or a 0-based column number). A header-less file is read in MovieLens
  order (user, item, rating, timestamp) unless the columns are given as numbers.

Ids are kept as the exact text of the field (surrounding blanks stripped). Timestamps are numbers
(seconds, any unit really: only their order matters) or ISO 8601 date-times (naive ones read as UTC).
Blank lines are skipped. Text is UTF-8 (a leading byte-order mark is ignored); `.gz` files are read
through gzip.

Speed: a file whose ids are all plain integers is parsed block by block with numpy's C reader
(MovieLens-20M `ratings.csv` in seconds); anything else (string ids, quotes, dates, or an error to
locate) goes through the line-by-line reader, which defines the semantics: both give the same result.
Torch-free.
"""
from __future__ import annotations

import csv
import io
import math
import re
import warnings
from array import array
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import BinaryIO, Callable, Iterator, TextIO

import numpy as np

from data.errors import DataFormatError

ColumnSpec = str | int | None

# Header names recognised for each role, compared after lower-casing and dropping a RecBole type suffix
# (":token") and every character other than a letter or a digit; the first name found wins.
USER_COLUMNS = ("userid", "user", "uid", "users", "customerid", "customer", "visitorid", "sessionid",
                "session", "reviewerid", "username")
ITEM_COLUMNS = ("itemid", "item", "iid", "items", "movieid", "movie", "productid", "product", "asin",
                "trackid", "track", "songid", "artistid", "articleid", "bookid", "isbn")
TIME_COLUMNS = ("timestamp", "time", "ts", "datetime", "date", "eventtime", "unixtime", "unixreviewtime",
                "createdat")
ROLE_NAMES = ("user_id", "item_id", "timestamp")  # field names in messages for a file without header
RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")

BLOCK_CHARS = 1 << 24  # text read per block by the fast integer-id reader
_UNIT_SEPARATOR = "\x1f"  # stands in for '::' when numpy (single-character delimiters only) reads ratings.dat
_INTEGER_FIELDS = np.dtype([("user", np.int64), ("item", np.int64), ("time", np.float64)])


@dataclass(frozen=True)
class Layout:
    """Where the three fields are in each line of a file."""

    separator: str  # "\t", ",", ";", "|" or "::"
    header_line: int | None  # 1-based line number of the header, None if the file has none
    columns: tuple[int, int, int]  # 0-based positions of (user, item, timestamp)
    names: tuple[str, str, str]  # their names in messages: the header's names, else ROLE_NAMES

    @property
    def min_fields(self) -> int:
        return max(self.columns) + 1


@dataclass
class RawInteractions:
    """Events in file order, ids coded by first appearance (users) or any order (items).

    users[user_codes[e]] is the external user id of event e; items[item_codes[e]] its external item id.
    """

    users: list[str]
    user_codes: np.ndarray  # [E] int64
    items: list[str]
    item_codes: np.ndarray  # [E] int64
    timestamps: np.ndarray  # [E] float64

    def __len__(self) -> int:
        return len(self.timestamps)


def read_interactions(open_binary: Callable[[], BinaryIO], display_name: str, file_name: str, *,
                      user_col: ColumnSpec = None, item_col: ColumnSpec = None, time_col: ColumnSpec = None,
                      fast: bool = True) -> RawInteractions:
    """Read the events of one interaction file.

    open_binary: opens the file (a fresh binary stream on each call; it may be called twice).
    display_name: how messages name the file. file_name: its base name, used to recognise the format.
    fast: allow the numpy reader for integer ids (False forces the line-by-line reader; same result).
    Raises DataFormatError for a malformed file.
    """
    try:
        with _open_text(open_binary, display_name) as stream:
            first_line, header_line_no = _first_nonblank_line(stream)
        if first_line is None:
            raise DataFormatError(display_name, None, None, "the file holds no interactions")
        layout = detect_layout(first_line, header_line_no, display_name, file_name,
                               user_col=user_col, item_col=item_col, time_col=time_col)
        data_start = header_line_no + 1 if layout.header_line is not None else header_line_no
        raw = None
        if fast:
            with _open_text(open_binary, display_name) as stream:
                _skip_lines(stream, data_start - 1)
                raw = _read_integer_ids(stream, layout, data_start, display_name)
        if raw is None:
            with _open_text(open_binary, display_name) as stream:
                _skip_lines(stream, data_start - 1)
                raw = _read_tokens(stream, layout, data_start, display_name)
    except UnicodeDecodeError:
        raise _not_utf8(open_binary, display_name) from None
    except (OSError, EOFError) as error:  # unreadable file, truncated or corrupt gzip
        raise DataFormatError(display_name, None, None, f"cannot be read: {error}") from None
    if len(raw) == 0:
        raise DataFormatError(display_name, None, None, "the file holds no interactions")
    return raw


def detect_layout(first_line: str, line_no: int, display_name: str, file_name: str, *,
                  user_col: ColumnSpec = None, item_col: ColumnSpec = None,
                  time_col: ColumnSpec = None) -> Layout:
    """The layout of a file from its name and its first non-blank line (number line_no)."""
    base = file_name.lower().removesuffix(".gz")
    line = first_line.rstrip("\r\n")
    if base == "u.data":
        separator, has_header = "\t", False
    elif base == "ratings.dat":
        separator, has_header = "::", False
    else:
        separator = _guess_separator(line, base, display_name, line_no)
        fields = split_line(line, separator)
        has_header = base.endswith(".inter") or not all(_is_number(f) for f in fields)
    fields = [f.strip() for f in split_line(line, separator)]
    specs = (user_col, item_col, time_col)
    if has_header:
        header = [_strip_recbole_type(f) for f in fields]
        columns = tuple(_header_column(spec, header, candidates, role, display_name, line_no)
                        for spec, candidates, role in zip(specs, (USER_COLUMNS, ITEM_COLUMNS, TIME_COLUMNS),
                                                          ("user", "item", "time")))
        names = tuple(header[c] for c in columns)
    else:
        if len(fields) < 4 and time_col is None and base not in ("u.data", "ratings.dat"):
            raise DataFormatError(display_name, line_no, None,
                                  f"no header and only {len(fields)} fields, so the timestamp column is unknown: "
                                  "add a header line naming the columns, or give time_col (and user_col, "
                                  "item_col) as 0-based column numbers")
        columns = tuple(_numbered_column(spec, default, role, display_name)
                        for spec, default, role in zip(specs, (0, 1, 3), ("user", "item", "time")))
        names = ROLE_NAMES
    if len(set(columns)) != 3:
        raise DataFormatError(display_name, line_no, None,
                              f"user, item and timestamp must be three different columns, got {list(names)}")
    return Layout(separator, line_no if has_header else None, columns, names)


def split_line(line: str, separator: str) -> list[str]:
    """Fields of one line (without its newline); ',' and ';' files may quote fields."""
    if separator in ",;" and '"' in line:
        return next(csv.reader([line], delimiter=separator))
    return line.split(separator)


# --- the line-by-line reader (reference semantics) ---------------------------------------------------

def _read_tokens(stream: TextIO, layout: Layout, first_line_no: int, display_name: str) -> RawInteractions:
    """Parse every line in Python, coding ids by first appearance; the place where errors are found."""
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    user_codes = array("q")  # compact: 8 bytes an event where a list of ints takes about 40
    item_codes = array("q")
    times = array("d")
    user_at, item_at, time_at = layout.columns
    for line_no, fields in _rows(stream, layout.separator, first_line_no):
        try:
            user = fields[user_at].strip()
            item = fields[item_at].strip()
            stamp = fields[time_at].strip()
        except IndexError:
            if not "".join(fields).strip():
                continue  # blank line
            raise _missing_field(fields, layout, display_name, line_no) from None
        if not user or not item or not stamp:
            empty = next(n for n, v in zip(layout.names, (user, item, stamp)) if not v)
            raise DataFormatError(display_name, line_no, empty, "empty")
        code = users.get(user)
        if code is None:
            code = users[user] = len(users)
        user_codes.append(code)
        code = items.get(item)
        if code is None:
            code = items[item] = len(items)
        item_codes.append(code)
        try:
            value = float(stamp)
        except ValueError:
            value = _parse_datetime(stamp)
            if value is None:
                raise DataFormatError(display_name, line_no, layout.names[2],
                                      f"{stamp!r} is not a number (nor an ISO 8601 date-time)") from None
        if not -math.inf < value < math.inf:
            raise DataFormatError(display_name, line_no, layout.names[2], f"{stamp!r} is not a finite number")
        times.append(value)
    return RawInteractions(users=list(users), user_codes=np.frombuffer(user_codes, dtype=np.int64),
                           items=list(items), item_codes=np.frombuffer(item_codes, dtype=np.int64),
                           timestamps=np.frombuffer(times, dtype=np.float64))


def _rows(stream: TextIO, separator: str, first_line_no: int) -> Iterator[tuple[int, list[str]]]:
    """(1-based line number, fields) for each line from first_line_no on."""
    if separator in ",;":
        reader = csv.reader(stream, delimiter=separator)
        for fields in reader:
            yield first_line_no - 1 + reader.line_num, fields
    else:
        for line_no, line in enumerate(stream, start=first_line_no):
            yield line_no, line.rstrip("\n").split(separator)


def _missing_field(fields: list[str], layout: Layout, display_name: str, line_no: int) -> DataFormatError:
    missing = min((c, n) for c, n in zip(layout.columns, layout.names) if c >= len(fields))[1]
    return DataFormatError(display_name, line_no, missing,
                           f"missing (the line has {len(fields)} fields separated by {layout.separator!r}, "
                           f"at least {layout.min_fields} expected)")


# --- the fast reader for integer ids ------------------------------------------------------------------

def _read_integer_ids(stream: TextIO, layout: Layout, first_line_no: int,
                      display_name: str) -> RawInteractions | None:
    """Parse blocks of lines with numpy when every id is a plain integer; None when the line-by-line
    reader must take over (ids that are not plain integers). A malformed block raises DataFormatError,
    located by running the line-by-line reader over that block."""
    delimiter = _UNIT_SEPARATOR if layout.separator == "::" else layout.separator
    parts: list[np.ndarray] = []
    line_no = first_line_no
    for block in _blocks(stream):
        lines_in_block = block.count("\n") + (not block.endswith("\n"))
        if layout.separator == "::":
            if _UNIT_SEPARATOR in block:
                return None
            text = block.replace("::", _UNIT_SEPARATOR)
        else:
            text = block
        if _not_plain(text, delimiter):
            return None
        if text.strip():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # numpy warns about a block of blank lines
                    table = np.loadtxt(io.StringIO(text), delimiter=delimiter, usecols=layout.columns,
                                       dtype=_INTEGER_FIELDS, comments=None, ndmin=1)
                finite = np.isfinite(table["time"]).all()
            except ValueError:
                finite = False
                table = None
            if table is None or not finite:
                # Raises DataFormatError if the block is malformed; otherwise the ids are tokens.
                _read_tokens(io.StringIO(block), layout, line_no, display_name)
                return None
            parts.append(table)
        line_no += lines_in_block
    table = np.concatenate(parts) if parts else np.zeros(0, dtype=_INTEGER_FIELDS)
    user_ids, user_codes = _integer_codes(table["user"])
    item_ids, item_codes = _integer_codes(table["item"])
    return RawInteractions(users=[str(u) for u in user_ids.tolist()], user_codes=user_codes,
                           items=[str(i) for i in item_ids.tolist()], item_codes=item_codes,
                           timestamps=np.ascontiguousarray(table["time"], dtype=np.float64))


def _integer_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values, [E] int64 index of each value among them) for non-negative integer ids.

    A lookup table over 0..max when the ids are not much sparser than the events (MovieLens ids are
    dense): linear time, where np.unique's sort of 20M ids takes seconds."""
    if len(values) and values.max() < 4 * len(values) + (1 << 20):
        seen = np.zeros(int(values.max()) + 1, dtype=bool)
        seen[values] = True
        code_of = np.cumsum(seen, dtype=np.int64) - 1
        return np.flatnonzero(seen), code_of[values]
    distinct, codes = np.unique(values, return_inverse=True)
    return distinct, codes.astype(np.int64).reshape(-1)


def _not_plain(text: str, delimiter: str) -> bool:
    """Whether a block may hold a field that numpy reads as an integer but whose text is not str(int):
    a sign, blanks, quotes, a leading zero ('007'). Such blocks go to the line-by-line reader.
    Literal searches only: a regex with alternatives costs ten times more on a 500 MB file."""
    blanks = " " if delimiter == "\t" else " \t"
    if any(char in text for char in '"+-' + blanks):
        return True
    return bool(re.match("0[0-9]", text) or re.search(re.escape(delimiter) + "0[0-9]", text)
                or re.search("\n0[0-9]", text))


def _blocks(stream: TextIO) -> Iterator[str]:
    """Runs of whole lines, about BLOCK_CHARS characters each."""
    while True:
        block = stream.read(BLOCK_CHARS)
        if not block:
            return
        if not block.endswith("\n"):
            block += stream.readline()
        yield block


# --- helpers ------------------------------------------------------------------------------------------

def _open_text(open_binary: Callable[[], BinaryIO], display_name: str) -> TextIO:
    try:
        binary = open_binary()
    except OSError as error:
        raise DataFormatError(display_name, None, None, f"cannot be read: {error}") from None
    return io.TextIOWrapper(binary, encoding="utf-8-sig", newline=None)


def _first_nonblank_line(stream: TextIO) -> tuple[str | None, int]:
    for line_no, line in enumerate(stream, start=1):
        if line.strip():
            return line, line_no
    return None, 0


def _skip_lines(stream: TextIO, count: int) -> None:
    for _ in range(count):
        stream.readline()


def _not_utf8(open_binary: Callable[[], BinaryIO], display_name: str) -> DataFormatError:
    with open_binary() as binary:
        for line_no, raw in enumerate(binary, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as error:
                return DataFormatError(display_name, line_no, None,
                                       f"not UTF-8 text (byte {raw[error.start:error.start + 1]!r})")
    return DataFormatError(display_name, None, None, "not UTF-8 text")


def _guess_separator(line: str, base: str, display_name: str, line_no: int) -> str:
    if "::" in line:
        return "::"
    if "\t" in line or base.endswith((".inter", ".tsv", ".tab")):
        return "\t"
    counts = {sep: line.count(sep) for sep in (",", ";", "|")}
    separator = max(counts, key=counts.get)
    if counts[separator] == 0:
        raise DataFormatError(display_name, line_no, None,
                              "cannot tell the field separator (expected tab, ',', ';', '|' or '::')")
    return separator


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _strip_recbole_type(name: str) -> str:
    head, colon, kind = name.rpartition(":")
    return head if colon and kind in RECBOLE_TYPES else name


def _normalise(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def _header_column(spec: ColumnSpec, header: list[str], candidates: tuple[str, ...], role: str,
                   display_name: str, line_no: int) -> int:
    option = f"{role}_col"
    if isinstance(spec, bool):
        raise ValueError(f"{option}: give a column name or a 0-based column number, not {spec!r}")
    if isinstance(spec, int):
        if not 0 <= spec < len(header):
            raise DataFormatError(display_name, line_no, None,
                                  f"{option}={spec} but the header has {len(header)} columns: {header}")
        return spec
    if isinstance(spec, str):
        for wanted in (lambda h: h == spec, lambda h: h.lower() == spec.lower(),
                       lambda h: _normalise(h) == _normalise(spec)):
            matches = [c for c, h in enumerate(header) if wanted(h)]
            if matches:
                return matches[0]
        raise DataFormatError(display_name, line_no, None, f"{option}={spec!r}: no such column in header {header}")
    normalised = [_normalise(h) for h in header]
    for candidate in candidates:
        if candidate in normalised:
            return normalised.index(candidate)
    raise DataFormatError(display_name, line_no, None,
                          f"no {role} column in header {header}: name it with {option}")


def _numbered_column(spec: ColumnSpec, default: int, role: str, display_name: str) -> int:
    option = f"{role}_col"
    if spec is None:
        return default
    if isinstance(spec, bool) or not isinstance(spec, int) or spec < 0:
        raise DataFormatError(display_name, None, None,
                              f"{option}={spec!r}: the file has no header, so give a 0-based column number")
    return spec


def _parse_datetime(text: str) -> float | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()
