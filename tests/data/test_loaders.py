"""Loading interaction files and MovieLens-100k into chronological per-user sequences."""
from __future__ import annotations

import gzip
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

import data.interactions as interactions
from data.errors import (
    DataFormatError,
    DatasetChecksumError,
    DatasetDownloadError,
    DatasetNotFoundError,
    UnknownDatasetError,
)
from data.loaders import (
    build_dataset,
    chronological_order,
    load_dataset,
    natural_key,
    write_interactions,
)
from data.movielens import (
    CACHE_ENV,
    RECBOLE_WHEEL,
    cache_directory,
    fetch_recbole_wheel,
)
from data.synthetic import synthetic_dataset

REPO = Path(__file__).resolve().parents[2]

# (user, item, rating, timestamp) in file order: out of time order, with a tie (user 10 at t=300) and
# ids whose text order differs from their numeric order ("10" < "2" as text).
EVENTS = [
    ("10", "7", "4", "300"),
    ("2", "10", "3", "200"),
    ("10", "2", "5", "100"),
    ("2", "7", "1", "50"),
    ("10", "10", "2", "300"),
    ("2", "2", "4", "400"),
]
# Expected: users ordered 2, 10; items 2, 7, 10 -> internal 1, 2, 3.
EXPECTED_USERS = ["2", "10"]
EXPECTED_ITEMS = ["<pad>", "2", "7", "10"]
EXPECTED_SEQUENCES = [["7", "10", "2"], ["2", "7", "10"]]  # user 10: t=100, then the t=300 tie in file order
EXPECTED_TIMES = [[50, 200, 400], [100, 300, 300]]


def external_sequences(dataset) -> list[list[str]]:
    return [[dataset.vocab.decode(int(i)) for i in seq] for seq in dataset.sequences]


def write_lines(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.write_text("\n".join(lines) + "\n", encoding=encoding)
    return path


def assert_expected(dataset) -> None:
    assert dataset.users == EXPECTED_USERS
    assert dataset.vocab.ids == EXPECTED_ITEMS
    assert external_sequences(dataset) == EXPECTED_SEQUENCES
    assert [t.tolist() for t in dataset.timestamps] == EXPECTED_TIMES
    assert all(seq.dtype == np.int64 for seq in dataset.sequences)
    assert dataset.num_items == 4 and dataset.num_interactions == 6


FORMATS = {
    "u.data": lambda: ["\t".join(e) for e in EVENTS],
    "ratings.dat": lambda: ["::".join(e) for e in EVENTS],
    "ratings.csv": lambda: ["userId,movieId,rating,timestamp", *(",".join(e) for e in EVENTS)],
    "log.inter": lambda: ["user_id:token\titem_id:token\trating:float\ttimestamp:float",
                          *("\t".join(e) for e in EVENTS)],
    "clicks.csv": lambda: ["session,rating,ts,item_id,extra", *(f"{u},{r},{t},{i},x y" for u, i, r, t in EVENTS)],
    "clicks.tsv": lambda: ["user\titem\ttime", *(f"{u}\t{i}\t{t}" for u, i, _, t in EVENTS)],
    "semicolon.txt": lambda: ["UserID;ItemID;Timestamp", *(f"{u};{i};{t}" for u, i, _, t in EVENTS)],
    "quoted.csv": lambda: ['"user_id","item_id","timestamp"', *(f'"{u}","{i}",{t}' for u, i, _, t in EVENTS)],
    "headerless.csv": lambda: [",".join(e) for e in EVENTS],
}


@pytest.mark.parametrize("file_name", sorted(FORMATS))
@pytest.mark.parametrize("fast", [True, False])
def test_each_format_gives_chronological_sequences_and_sorted_ids(tmp_path, file_name, fast):
    path = write_lines(tmp_path / file_name, FORMATS[file_name]())
    raw = interactions.read_interactions(lambda: open(path, "rb"), str(path), path.name, fast=fast)
    assert_expected(build_dataset("test", raw))
    assert_expected(load_dataset(str(path)))


def test_gzip_file_and_directory_source(tmp_path):
    with gzip.open(tmp_path / "ratings.csv.gz", "wt") as file:
        file.write("\n".join(FORMATS["ratings.csv"]()) + "\n")
    assert_expected(load_dataset(tmp_path / "ratings.csv.gz"))
    assert_expected(load_dataset(tmp_path))  # a directory holding ratings.csv.gz


def test_string_ids_sort_numbers_as_numbers_and_keep_leading_zeros(tmp_path):
    path = write_lines(tmp_path / "log.csv", [
        "user_id,item_id,timestamp", "b,item10,1", "a,item2,2", "b,007,3", "b,7,4", "a10,item1,5", "a2,item2,6"])
    dataset = load_dataset(path)
    assert dataset.vocab.ids == ["<pad>", "007", "7", "item1", "item2", "item10"]
    assert dataset.users == ["a", "a2", "a10", "b"]
    assert external_sequences(dataset) == [["item2"], ["item2"], ["item1"], ["item10", "007", "7"]]
    assert natural_key("item2") < natural_key("item10") < natural_key("x")


def test_iso_dates_and_explicit_columns(tmp_path):
    path = write_lines(tmp_path / "events.csv", [
        "who,what,when,score", "u1,a,2024-01-02T00:00:00Z,1", "u1,b,2024-01-01,2", "u1,c,2024-01-01T12:00:00,3"])
    dataset = load_dataset(path, user_col="who", item_col=1, time_col="WHEN")
    assert external_sequences(dataset) == [["b", "c", "a"]]
    assert dataset.timestamps[0][0] == 1704067200.0  # 2024-01-01 UTC
    headerless = write_lines(tmp_path / "three.csv", ["5,1,100", "5,2,50"])
    with pytest.raises(DataFormatError, match="three.csv line 1: no header and only 3 fields"):
        load_dataset(headerless)
    assert external_sequences(load_dataset(headerless, user_col=0, item_col=1, time_col=2)) == [["2", "1"]]


def test_titles_are_read_from_the_item_file_beside_the_ratings(tmp_path):
    (tmp_path / "a").mkdir()
    write_lines(tmp_path / "a" / "u.data", FORMATS["u.data"]())
    write_lines(tmp_path / "a" / "u.item", ["2|Amélie (2001)|01-Jan-2001||http://x|0|1", "7|Seven (1995)|x",
                                            "10|Ten (1979)|x", "99|Not rated (1990)|x"], encoding="latin-1")
    (tmp_path / "b").mkdir()
    write_lines(tmp_path / "b" / "ratings.dat", FORMATS["ratings.dat"]())
    write_lines(tmp_path / "b" / "movies.dat", ["2::Two (1990)::Drama", "7::Seven (1995)::Crime|Thriller"])
    (tmp_path / "c").mkdir()
    write_lines(tmp_path / "c" / "ratings.csv", FORMATS["ratings.csv"]())
    write_lines(tmp_path / "c" / "movies.csv", ["movieId,title,genres", '2,"Two, the Sequel (1992)",Drama',
                                                "10,Ten (1979),Comedy"])
    (tmp_path / "d").mkdir()
    write_lines(tmp_path / "d" / "log.inter", FORMATS["log.inter"]())
    write_lines(tmp_path / "d" / "log.item", ["item_id:token\tmovie_title:token_seq\trelease_year:token",
                                              "2\tTwo\t1990", "7\tSeven\tunknown"])
    assert load_dataset(tmp_path / "a" / "u.data").vocab.titles == {
        "2": "Amélie (2001)", "7": "Seven (1995)", "10": "Ten (1979)"}  # only items of the data set
    assert load_dataset(tmp_path / "b" / "ratings.dat").vocab.titles == {"2": "Two (1990)", "7": "Seven (1995)"}
    titles = load_dataset(tmp_path / "c" / "ratings.csv").vocab
    assert titles.title("2") == "Two, the Sequel (1992)" and titles.title("7") is None
    assert load_dataset(tmp_path / "d" / "log.inter").vocab.titles == {"2": "Two (1990)", "7": "Seven"}


def test_min_item_freq_drops_rare_items_then_short_users(tmp_path):
    path = write_lines(tmp_path / "log.tsv", [
        "user\titem\ttime", "u1\ta\t1", "u1\tb\t2", "u2\ta\t3", "u2\tc\t4", "u3\tc\t5", "u3\ta\t6", "u4\tb\t7",
        "u5\td\t8"])
    dataset = load_dataset(path, min_item_freq=2)  # a:3, b:2, c:2, d:1 -> d dropped, then u5 (empty) dropped
    assert dataset.vocab.ids == ["<pad>", "a", "b", "c"]
    assert dataset.users == ["u1", "u2", "u3", "u4"]
    dataset = load_dataset(path, min_item_freq=3)  # only a survives
    assert dataset.users == ["u1", "u2", "u3"] and external_sequences(dataset) == [["a"], ["a"], ["a"]]
    with pytest.raises(ValueError, match="no interactions left"):
        load_dataset(path, min_item_freq=3, min_user_len=2)  # nobody keeps 2 events
    dataset = load_dataset(path, min_user_len=2)
    assert dataset.users == ["u1", "u2", "u3"] and dataset.vocab.ids == ["<pad>", "a", "b", "c"]
    assert dataset.item_counts().tolist() == [0, 3, 1, 2]
    with pytest.raises(ValueError, match="min_item_freq"):
        load_dataset(path, min_item_freq=-1)


def test_min_item_freq_keeps_users_meeting_min_user_len(tmp_path):
    path = write_lines(tmp_path / "log.tsv", ["user\titem\ttime", "u1\ta\t1", "u1\ta\t2", "u2\ta\t3", "u2\tb\t4"])
    dataset = load_dataset(path, min_item_freq=2, min_user_len=2)
    assert dataset.users == ["u1"] and external_sequences(dataset) == [["a", "a"]]


MALFORMED = [
    # (file name, lines, expected message start)
    ("ratings.csv", ["userId,movieId,rating,timestamp", "1,2,3,100", "1,3,3,abc"],
     "ratings.csv line 3: field 'timestamp': 'abc' is not a number"),
    ("ratings.csv", ["userId,movieId,rating,timestamp", "1,2,3,100", "", "1,3,3"],
     "ratings.csv line 4: field 'timestamp': missing"),
    ("ratings.csv", ["userId,movieId,rating,timestamp", "1,,3,100"], "ratings.csv line 2: field 'movieId': empty"),
    ("u.data", ["1\t2\t3\t100", "1\t2\t3\tnan"], "u.data line 2: field 'timestamp': 'nan' is not a finite number"),
    ("u.data", ["1\t2\t3"], "u.data line 1: field 'timestamp': missing"),
    ("u.data", ["1\t2\t3\t4", "x y z"], "u.data line 2: field 'item_id': missing"),
    ("ratings.dat", ["1::2::3::100", "1::2::3::100", " ::2::3::7"], "ratings.dat line 3: field 'user_id': empty"),
    ("log.inter", ["user_id:token\titem_id:token\ttimestamp:float", "a\tb\t1", "a\tb\t2020-13-01"],
     "log.inter line 3: field 'timestamp': '2020-13-01' is not a number"),
    ("log.csv", ["user,thing,time", "a,b,1"], "log.csv line 1: no item column in header ['user', 'thing', 'time']"),
    ("log.csv", ["user,item", "a,b"], "log.csv line 1: no time column in header"),
    ("log.csv", ["user;item;time;x", "a;b;1;2"], None),  # well-formed: shows ';' is recognised
    ("empty.csv", ["", "  "], "empty.csv: the file holds no interactions"),
    ("header_only.csv", ["user,item,time"], "header_only.csv: the file holds no interactions"),
    ("one_field.txt", ["abc", "def"], "one_field.txt line 1: cannot tell the field separator"),
]


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("file_name,lines,expected", MALFORMED, ids=[m[2] or "ok" for m in MALFORMED])
def test_malformed_file_names_the_line_and_field(tmp_path, file_name, lines, expected, fast):
    path = write_lines(tmp_path / file_name, lines)
    if expected is None:
        assert interactions.read_interactions(lambda: open(path, "rb"), str(path), file_name, fast=fast)
        return
    with pytest.raises(DataFormatError) as caught:
        interactions.read_interactions(lambda: open(path, "rb"), str(path), file_name, fast=fast)
    message = str(caught.value)
    assert message.startswith(str(tmp_path)) and expected in message
    assert isinstance(caught.value, ValueError)


def test_error_line_is_exact_deep_in_a_large_file_read_in_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(interactions, "BLOCK_CHARS", 1000)  # many blocks, so the block offset matters
    lines = ["userId,movieId,rating,timestamp", *(f"{n % 37},{n % 101},4,{1000 + n}" for n in range(5000))]
    lines[4321] = "5,6,4,12:30"
    path = write_lines(tmp_path / "ratings.csv", lines)
    with pytest.raises(DataFormatError, match=r"ratings.csv line 4322: field 'timestamp': '12:30' is not a number"):
        load_dataset(path)
    lines[4321] = "5,6,4,1234"
    dataset = load_dataset(write_lines(tmp_path / "ratings.csv", lines))
    assert dataset.num_interactions == 5000


def test_truncated_gzip_is_a_clear_error(tmp_path):
    data = gzip.compress(("\n".join(FORMATS["ratings.csv"]()) + "\n").encode())
    (tmp_path / "ratings.csv.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match="ratings.csv.gz: cannot be read"):
        load_dataset(tmp_path / "ratings.csv.gz")


def test_bad_utf8_line_is_named(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(b"user,item,time\na,b,1\na,\xff\xfe,2\n")
    with pytest.raises(DataFormatError, match="log.csv line 3: not UTF-8 text"):
        load_dataset(path)


def test_fast_and_line_by_line_readers_agree_on_random_logs(tmp_path, monkeypatch):
    monkeypatch.setattr(interactions, "BLOCK_CHARS", 4096)
    rng = np.random.default_rng(3)
    n = 3000
    users, items = rng.integers(1, 60, n), rng.integers(1, 500, n)
    times = rng.integers(0, 200, n)  # many ties
    path = write_lines(tmp_path / "ratings.dat", [f"{u}::{i}::5::{t}" for u, i, t in zip(users, items, times)])
    open_file = lambda: open(path, "rb")  # noqa: E731
    fast = build_dataset("x", interactions.read_interactions(open_file, "x", path.name, fast=True))
    slow = build_dataset("x", interactions.read_interactions(open_file, "x", path.name, fast=False))
    assert fast.users == slow.users and fast.vocab.ids == slow.vocab.ids
    assert all(np.array_equal(a, b) for a, b in zip(fast.sequences, slow.sequences))
    # the same order a stable sort of the file by (user, time) gives
    order = np.lexsort((np.arange(n), times, users))
    for u, seq in zip(fast.users, fast.sequences):
        rows = order[users[order] == int(u)]
        assert [fast.vocab.decode(int(i)) for i in seq] == [str(i) for i in items[rows]]


def test_numpy_reader_takes_plain_integer_blocks_and_leaves_the_rest():
    layout = interactions.Layout(",", None, (0, 1, 3), interactions.ROLE_NAMES)
    plain = interactions._read_integer_ids(io.StringIO("1,20,4.5,100\n3,7,0.5,90\n"), layout, 1, "x")
    assert plain is not None and plain.items == ["7", "20"] and plain.timestamps.tolist() == [100, 90]
    for text in ("1,007,4,100\n", "007,1,4,100\n", "1,+7,4,100\n", '1,"7",4,100\n', "1, 7,4,100\n",
                 "1,-7,4,100\n", "1,x7,4,100\n", "1,7,4,2024-01-01\n"):
        assert interactions._read_integer_ids(io.StringIO(text), layout, 1, "x") is None, text


@pytest.mark.parametrize("integral", [True, False])
def test_chronological_order_is_a_stable_sort_by_user_then_time(integral):
    rng = np.random.default_rng(11)
    users = rng.integers(0, 30, 4000)
    times = rng.integers(0, 50, 4000).astype(np.float64) + (0 if integral else 0.25 * rng.integers(0, 2, 4000))
    assert np.array_equal(chronological_order(users, times), np.lexsort((np.arange(4000), times, users)))
    assert chronological_order(np.zeros(0, np.int64), np.zeros(0)).tolist() == []


@pytest.mark.parametrize("fmt", ["u.data", "ratings.dat", "ratings.csv", "inter", "csv", "tsv"])
def test_written_logs_load_back_identically(tmp_path, fmt):
    original = synthetic_dataset(num_users=30, num_items=25, min_len=5, max_len=15, seed=4)
    name = {"u.data": "u.data", "ratings.dat": "ratings.dat", "ratings.csv": "ratings.csv",
            "inter": "syn.inter", "csv": "syn.csv", "tsv": "syn.tsv"}[fmt]
    loaded = load_dataset(write_interactions(original, tmp_path / name, fmt))
    assert loaded.users == original.users and loaded.vocab.ids == original.vocab.ids
    assert all(np.array_equal(a, b) for a, b in zip(loaded.sequences, original.sequences))
    assert all(np.array_equal(a, b) for a, b in zip(loaded.timestamps, original.timestamps))


def test_unknown_name_and_missing_paths_are_clear(tmp_path):
    with pytest.raises(UnknownDatasetError, match="unknown data set 'ml-20m': known data sets are ml-100k"):
        load_dataset("ml-20m")
    with pytest.raises(DatasetNotFoundError, match="data set file not found: .*nope.csv"):
        load_dataset(tmp_path / "nope.csv")
    with pytest.raises(DatasetNotFoundError, match="holds none of u.data"):
        load_dataset(tmp_path)


# --- MovieLens-100k from the recbole wheel ------------------------------------------------------------

@pytest.fixture(scope="module")
def wheel_cache() -> Path:
    """The repository's .cache/cmnrec (gitignored), or $CMNREC_CACHE_DIR: the wheel is downloaded once."""
    return cache_directory(os.environ.get(CACHE_ENV) or REPO / ".cache" / "cmnrec")


def test_ml100k_loads_from_the_recbole_wheel(wheel_cache):
    dataset = load_dataset("ml-100k", cache_dir=wheel_cache)
    assert dataset.name == "ml-100k"
    assert len(dataset.users) == 943
    assert dataset.num_items == 1682 + 1
    assert dataset.num_interactions == 100_000
    assert dataset.vocab.ids[1:4] == ["1", "2", "3"] and dataset.vocab.encode("1682") == 1682
    assert dataset.vocab.title("50") == "Star Wars (1977)"
    assert dataset.vocab.title("1") == "Toy Story (1995)"
    assert min(len(s) for s in dataset.sequences) == 20  # ml-100k keeps users with >= 20 ratings
    assert all(np.all(np.diff(t) >= 0) for t in dataset.timestamps)
    assert dataset.item_counts()[dataset.vocab.encode("50")] == 583  # the most rated film
    assert (wheel_cache / RECBOLE_WHEEL).is_file()  # cached: later runs need no network


def test_ml100k_filters_apply(wheel_cache):
    dataset = load_dataset("ml-100k", cache_dir=wheel_cache, min_item_freq=5)
    counts = dataset.item_counts()[1:]
    assert counts.min() >= 5 and dataset.num_items - 1 < 1682


def test_a_wheel_with_the_wrong_checksum_is_refused(tmp_path, wheel_cache):
    fetch_recbole_wheel(wheel_cache)
    original = wheel_cache / RECBOLE_WHEEL
    tampered = tmp_path / RECBOLE_WHEEL
    with zipfile.ZipFile(original) as source, zipfile.ZipFile(tampered, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("ml-100k.inter"):
                data = data.replace(b"196\t242\t3\t", b"196\t242\t5\t", 1)
            target.writestr(info, data)
    with pytest.raises(DatasetChecksumError, match="sha256 .* expected 9c9948202011f37e"):
        load_dataset("ml-100k", cache_dir=tmp_path)


def test_a_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip may not look anything up: the download fails for real
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(DatasetDownloadError, match="pip download recbole==1.2.1` failed"):
        fetch_recbole_wheel(tmp_path / "cache")
    assert not (tmp_path / "cache" / RECBOLE_WHEEL).exists()


# --- ml-1m / beauty: named local copies under $CMNREC_DATA_DIR ---------------------------------------

SHARED_DATA = REPO.parent / "shared" / "data"  # the team's copies (never committed into the project)


def test_named_local_dataset_needs_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("CMNREC_DATA_DIR", raising=False)
    with pytest.raises(DatasetNotFoundError, match="set CMNREC_DATA_DIR to the directory holding ml-1m/ml-1m.csv.gz"):
        load_dataset("ml-1m")
    monkeypatch.setenv("CMNREC_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match="beauty.csv.gz not found"):
        load_dataset("beauty")
    (tmp_path / "beauty").mkdir()
    with gzip.open(tmp_path / "beauty" / "beauty.csv.gz", "wt") as f:
        f.write("user_id,item_id,timestamp\n1,10,0\n1,11,1\n2,11,0\n1,12,2\n")
    data = load_dataset("beauty")
    assert data.name == "beauty" and [s.tolist() for s in data.sequences] == [[1, 2, 3], [2]]


@pytest.mark.skipif(not (SHARED_DATA / "ml-1m" / "ml-1m.csv.gz").is_file(), reason="no ../shared/data/ml-1m/ml-1m.csv.gz beside the checkout")
def test_ml1m_from_the_shared_copy_matches_its_readme(monkeypatch):
    monkeypatch.setenv("CMNREC_DATA_DIR", str(SHARED_DATA))
    data = load_dataset("ml-1m")
    assert (len(data.users), data.num_items - 1, data.num_interactions) == (6040, 3416, 999611)
    assert len(data.vocab.titles) == 3416  # movies.dat beside it
