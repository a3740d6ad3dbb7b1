"""TEMPORARY STUB: the owning helper replaces this file."""
def export() -> None:
    """stub"""
    raise SystemExit("export is not built yet")


