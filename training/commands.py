"""TEMPORARY STUB: the owning helper replaces this file."""
def train() -> None:
    """stub"""
    raise SystemExit("train is not built yet")


def evaluate() -> None:
    """stub"""
    raise SystemExit("evaluate is not built yet")


def predict() -> None:
    """stub"""
    raise SystemExit("predict is not built yet")


