"""How long load_dataset takes on a MovieLens-20M-size ratings.csv (generated, same shape as the real one).

Writes a `userId,movieId,rating,timestamp` file with ML-20M's size (20,000,263 ratings, 138,493 users,
26,744 movies; users in order, as in the real file) into a temporary folder, then times:
- load_dataset on it (numpy reader for integer ids), and its two stages separately,
- the line-by-line reader (string ids, quotes, dates take this path) on the first `--line-rows` rows,
- MovieLens-100k from the cached recbole wheel.
Prints the figures and saves them to bench/results/load_speed.json.

    .venv/bin/python bench/load_speed.py [--rows 20000263] [--line-rows 2000000]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from data.interactions import read_interactions
from data.loaders import build_dataset, load_dataset

RESULTS = Path(__file__).resolve().parent / "results" / "load_speed.json"
ML20M_USERS, ML20M_ITEMS = 138_493, 26_744


def write_ratings_csv(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    users = np.sort(rng.integers(1, ML20M_USERS + 1, rows))
    items = (rng.zipf(1.3, rows) % ML20M_ITEMS) + 1  # skewed popularity, like real ratings
    ratings = rng.integers(1, 11, rows) / 2
    times = rng.integers(789_652_009, 1_427_784_002, rows)
    with open(path, "w") as file:
        file.write("userId,movieId,rating,timestamp\n")
        for start in range(0, rows, 1_000_000):
            stop = min(rows, start + 1_000_000)
            file.write("".join(f"{u},{i},{r:g},{t}\n" for u, i, r, t in zip(
                users[start:stop].tolist(), items[start:stop].tolist(), ratings[start:stop].tolist(),
                times[start:stop].tolist())))


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000_263)
    parser.add_argument("--line-rows", type=int, default=2_000_000)
    args = parser.parse_args()
    figures: dict[str, object] = {"machine": platform.platform(), "cpus": os.cpu_count(),
                                  "load_average_at_start": round(os.getloadavg()[0], 2), "rows": args.rows}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ratings.csv"
        _, figures["generate_s"] = timed(lambda: write_ratings_csv(path, args.rows))
        figures["file_mb"] = round(path.stat().st_size / 1e6, 1)
        dataset, seconds = timed(lambda: load_dataset(path))
        figures["load_dataset_s"] = round(seconds, 2)
        figures["load_dataset_rows_per_s"] = round(args.rows / seconds)
        figures["users"], figures["items"] = len(dataset.users), dataset.num_items - 1
        del dataset
        raw, seconds = timed(lambda: read_interactions(lambda: open(path, "rb"), str(path), path.name))
        figures["of_which_numpy_reader_s"] = round(seconds, 2)
        _, seconds = timed(lambda: build_dataset("ratings", raw))
        figures["of_which_build_s"] = round(seconds, 2)
        del raw
        small = Path(folder) / "small.csv"
        with open(path) as source, open(small, "w") as target:
            for _, line in zip(range(args.line_rows + 1), source):
                target.write(line)
        raw, seconds = timed(lambda: read_interactions(lambda: open(small, "rb"), str(small), small.name, fast=False))
        figures["line_reader_rows"] = len(raw)
        figures["line_reader_s"] = round(seconds, 2)
        figures["line_reader_rows_per_s"] = round(len(raw) / seconds)
        _, seconds = timed(lambda: build_dataset("small", raw))
        figures["line_reader_build_s"] = round(seconds, 2)
    _, seconds = timed(lambda: load_dataset("ml-100k"))
    figures["ml100k_load_s"] = round(seconds, 3)
    figures["load_average_at_end"] = round(os.getloadavg()[0], 2)
    figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    for key, value in figures.items():
        print(f"{key:>26}: {value}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
