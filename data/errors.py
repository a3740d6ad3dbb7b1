"""Errors raised while finding, fetching or reading an interaction data set.

All derive from `DatasetError`, so a command line can catch one class and print the message; each also
derives from the built-in class a caller would expect (ValueError for bad content, FileNotFoundError for
a missing file, RuntimeError for a failed download). Torch-free.
"""
from __future__ import annotations


class DatasetError(Exception):
    """Base class of every data-set error; the message is meant for the user as it is."""


class DataFormatError(DatasetError, ValueError):
    """A malformed data file: the message names the file, the 1-based line and the field.

    Example: "ratings.csv line 17: field 'timestamp': 'abc' is not a number".
    """

    def __init__(self, file: str, line: int | None, field: str | None, problem: str) -> None:
        self.file = file
        self.line = line  # 1-based physical line number, None for a problem with the whole file
        self.field = field  # column name (or role name for a file without header), None if no single field
        self.problem = problem
        where = file if line is None else f"{file} line {line}"
        message = f"{where}: {problem}" if field is None else f"{where}: field '{field}': {problem}"
        super().__init__(message)


class UnknownDatasetError(DatasetError, ValueError):
    """A data-set name that is neither a known name nor an existing path."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A data-set path that does not exist, or a directory holding no ratings file."""


class DatasetDownloadError(DatasetError, RuntimeError):
    """The download of a data set's source (the recbole wheel) failed."""


class DatasetChecksumError(DatasetError, ValueError):
    """A downloaded or cached file whose sha256 is not the expected one; it is never read."""
