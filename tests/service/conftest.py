"""Fixtures of the service tests: tiny exported models, their engines, settings per test."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from model.engine import StepEngine
from service.ops.settings import Settings
from tests.service.helpers import make_artifact


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random-weight CmnRec (TSC, T=5, M=2) exports: 'main' and 'other' (other weights, so
    another model version)."""
    root = tmp_path_factory.mktemp("service-artifacts")
    return {"main": make_artifact(root, "main", seed=0),
            "other": make_artifact(root, "other", seed=1)}


@pytest.fixture(scope="session")
def engine(artifacts: dict[str, Path]) -> StepEngine:
    return StepEngine.load(artifacts["main"])


@pytest.fixture(scope="session")
def other_engine(artifacts: dict[str, Path]) -> StepEngine:
    return StepEngine.load(artifacts["other"])


@pytest.fixture(scope="session")
def lrurec_engines(tmp_path_factory: pytest.TempPathFactory) -> tuple[StepEngine, StepEngine]:
    """Tiny random-weight LRURec exports (issue 9): 'main' and 'other' (another model version)."""
    root = tmp_path_factory.mktemp("service-lrurec")
    return (StepEngine.load(make_artifact(root, "main", model="lrurec", seed=0)),
            StepEngine.load(make_artifact(root, "other", model="lrurec", seed=1)))


@pytest.fixture(params=["cmnrec", "lrurec"])
def engines(request: pytest.FixtureRequest, engine: StepEngine, other_engine: StepEngine,
            lrurec_engines: tuple[StepEngine, StepEngine]) -> tuple[StepEngine, StepEngine]:
    """(engine, engine of another model version) of each servable model family."""
    if request.param == "cmnrec":
        return engine, other_engine
    return lrurec_engines


@pytest.fixture
def make_settings(redis_url: str, key_prefix: str, artifacts: dict[str, Path]) -> Any:
    """Settings for this test's Redis prefix; keyword arguments override fields.

    Events without an event id are accepted here (require_event_id=False), as most tests post
    such events; tests/service/test_hardening.py checks the default (required)."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = dict(artifact_dir=artifacts["main"], redis_url=redis_url,
                                      key_prefix=key_prefix, require_event_id=False)
        values.update(overrides)
        return Settings(**values)

    return build


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allows_internal_error: the test provokes a 500 on purpose")


@pytest.fixture(autouse=True)
def no_internal_error(request: pytest.FixtureRequest) -> Any:
    """Issue 12: no answer of an in-process app is a 500 in any service test (the one test that
    provokes a genuine bug on purpose is marked allows_internal_error)."""
    from tests.service.helpers import metric

    before = metric("cmnrec_errors_total", code="internal_error")
    yield
    if request.node.get_closest_marker("allows_internal_error") is None:
        assert metric("cmnrec_errors_total", code="internal_error") == before, \
            "an answer was 500 internal_error (see the log for the traceback)"
