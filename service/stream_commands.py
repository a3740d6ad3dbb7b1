"""TEMPORARY STUB: the owning helper replaces this file."""
def worker() -> None:
    """stub"""
    raise SystemExit("worker is not built yet")


def replay() -> None:
    """stub"""
    raise SystemExit("replay is not built yet")


