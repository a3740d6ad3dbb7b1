"""TEMPORARY STUB: the owning helper replaces this file."""
def serve() -> None:
    """stub"""
    raise SystemExit("serve is not built yet")


def demo() -> None:
    """stub"""
    raise SystemExit("demo is not built yet")


