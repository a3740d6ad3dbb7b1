"""The packages import one way: data < model < training | service < cli.

Walks every module's imports with ast (module level and inside functions alike) and fails on any
import that runs against the layering, and on torch anywhere under data/ or service/.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data", "model", "training", "service", "cli")
# What each package (and each service sub-package) may import from the project, itself included.
ALLOWED = {
    "data": {"data"},
    "model": {"data", "model"},
    "training": {"data", "model", "training"},
    "service": {"data", "model", "service"},
    "cli": set(PACKAGES),
}
# Inside service/: ops < state < http | streams (the HTTP side and the stream side never meet).
SERVICE_ALLOWED = {
    "ops": {"ops"},
    "state": {"ops", "state"},
    "http": {"ops", "state", "http"},
    "streams": {"ops", "state", "streams"},
}
TORCH_FREE = ("data", "service")


def project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # `from service import metrics` names a sub-module
            found.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
    return found


def modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def violations() -> list[str]:
    bad = []
    for path in modules():
        rel = path.relative_to(ROOT)
        top = rel.parts[0]
        sub = rel.parts[1] if top == "service" and len(rel.parts) > 2 else None
        for line, module in project_imports(path):
            head = module.split(".")[0]
            where = f"{rel}:{line} imports {module}"
            if head == "torch" and top in TORCH_FREE:
                bad.append(f"{where} (torch under {top}/)")
            if head in PACKAGES and head not in ALLOWED[top]:
                bad.append(f"{where} ({top} may not import {head})")
            if sub is not None and head == "service":
                target = module.split(".")[1] if module.count(".") else None
                if target in SERVICE_ALLOWED and target not in SERVICE_ALLOWED[sub]:
                    bad.append(f"{where} (service/{sub} may not import service/{target})")
    return bad


def test_every_package_is_walked():
    assert len(modules()) > 40
    assert all((ROOT / pkg / "__init__.py").is_file() for pkg in PACKAGES)


def test_imports_follow_the_layering():
    assert violations() == []


@pytest.mark.parametrize("source, expected", [
    ("import torch\n", "torch under data/"),
    ("from training.trainer import train_model\n", "data may not import training"),
    ("def f():\n    from service.ops import metrics\n", "data may not import service"),
])
def test_the_walker_catches_a_bad_import(tmp_path, monkeypatch, source, expected):
    """The check itself can fail: a planted bad import under data/ is reported."""
    planted = ROOT / "data" / f"_planted_{tmp_path.name}.py"
    planted.write_text(source)
    try:
        assert any(expected in v for v in violations())
    finally:
        planted.unlink()
