"""MovieLens-100k as shipped inside the PyPI wheel recbole==1.2.1, read without installing recbole.

The wheel is fetched once with `python -m pip download --no-deps recbole==1.2.1` into the cache
directory (the `cache_dir` argument, else $CMNREC_CACHE_DIR, else ~/.cache/cmnrec); later calls use the
cached wheel and need no network. Its sha256 is checked on every use, and a file that does not match is
refused. The interactions (`ml-100k.inter`) and titles (`ml-100k.item`) are read out of the zip; recbole
itself is never installed or imported. Torch-free.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from data.errors import DatasetChecksumError, DatasetDownloadError
from data.interactions import RawInteractions, read_interactions
from data.titles import decode_text, parse_recbole_titles

CACHE_ENV = "CMNREC_CACHE_DIR"
RECBOLE_REQUIREMENT = "recbole==1.2.1"
RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
ML100K_INTERACTIONS = "recbole/dataset_example/ml-100k/ml-100k.inter"
ML100K_ITEMS = "recbole/dataset_example/ml-100k/ml-100k.item"
PIP_TIMEOUT_S = 600


def cache_directory(cache_dir: str | Path | None = None) -> Path:
    """The cache directory: cache_dir, else $CMNREC_CACHE_DIR, else ~/.cache/cmnrec (not created here)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from_env = os.environ.get(CACHE_ENV)
    if from_env:
        return Path(from_env).expanduser()
    return Path.home() / ".cache" / "cmnrec"


def fetch_recbole_wheel(cache_dir: str | Path | None = None) -> Path:
    """Path of the verified recbole wheel in the cache, downloading it with pip the first time.

    Raises DatasetDownloadError if pip fails, DatasetChecksumError if the wheel's sha256 is wrong.
    """
    directory = cache_directory(cache_dir)
    wheel = directory / RECBOLE_WHEEL
    if not wheel.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        # Download into a private folder, check, then rename: concurrent callers never see half a file.
        with tempfile.TemporaryDirectory(dir=directory, prefix=".download-") as scratch:
            downloaded = _pip_download(Path(scratch))
            _verify_sha256(downloaded, "the downloaded wheel")
            os.replace(downloaded, wheel)
    _verify_sha256(wheel, "the cached wheel")
    return wheel


def read_ml100k(cache_dir: str | Path | None = None) -> tuple[RawInteractions, dict[str, str]]:
    """The 100,000 MovieLens-100k ratings in file order and the titles ('Star Wars (1977)') by item id."""
    wheel = fetch_recbole_wheel(cache_dir)
    with zipfile.ZipFile(wheel) as archive:
        raw = read_interactions(lambda: archive.open(ML100K_INTERACTIONS), f"{wheel.name}:{ML100K_INTERACTIONS}",
                                Path(ML100K_INTERACTIONS).name)
        titles = parse_recbole_titles(decode_text(archive.read(ML100K_ITEMS)), f"{wheel.name}:{ML100K_ITEMS}")
    return raw, titles


def _pip_download(target: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--no-input", "--quiet", RECBOLE_REQUIREMENT, "-d", str(target)]
    hint = (f"download it by hand with `pip download --no-deps {RECBOLE_REQUIREMENT} -d {target.parent}` "
            f"(or point ${CACHE_ENV} at a folder holding {RECBOLE_WHEEL})")
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise DatasetDownloadError(f"could not run pip to fetch MovieLens-100k ({error}); {hint}") from None
    wheel = target / RECBOLE_WHEEL
    if result.returncode != 0 or not wheel.is_file():
        detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise DatasetDownloadError(f"`pip download {RECBOLE_REQUIREMENT}` failed (exit {result.returncode}): "
                                   f"{' | '.join(detail) or 'no wheel written'}; {hint}")
    return wheel


def _verify_sha256(path: Path, what: str) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != RECBOLE_WHEEL_SHA256:
        raise DatasetChecksumError(f"{what} {path} has sha256 {digest.hexdigest()}, expected "
                                   f"{RECBOLE_WHEEL_SHA256}; refusing to read it (delete it to download again)")
