"""Container health probe: `python -m service.ops.healthcheck [URL]` exits 0 when URL answers 2xx.

The slim serving image has no curl or wget, so its HEALTHCHECK runs this with the interpreter it already
has. URL defaults to $CMNREC_HEALTH_URL (the API's /readyz in the image; the stream worker's compose
service points it at the worker's metrics port). Standard library only: it must start fast.
"""
from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8000/readyz"


def probe(url: str, timeout_s: float = 3.0) -> tuple[bool, str]:
    """GET url; (True, status line) on a 2xx answer, (False, reason) otherwise."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return 200 <= response.status < 300, f"{url}: HTTP {response.status}"
    except urllib.error.HTTPError as error:
        return False, f"{url}: HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        return False, f"{url}: {error}"


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else os.environ.get("CMNREC_HEALTH_URL", DEFAULT_URL)
    healthy, message = probe(url)
    print(message)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
