"""The alert rules (docker/prometheus/alerts.yml): `promtool check rules`, `promtool check config`
and `promtool test rules` with the unit tests of every alert (docker/prometheus/alerts.test.yml).

Needs Prometheus's `promtool` (Debian: `apt-get install prometheus`; .ci/run installs it). Without it
these tests are skipped with that reason; they install nothing.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

RULES_DIR = Path(__file__).resolve().parents[1] / "docker" / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian: apt-get install prometheus)")


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=RULES_DIR, capture_output=True, text=True,  # type: ignore[list-item]
                          timeout=120)


def alert_names() -> list[str]:
    groups = yaml.safe_load((RULES_DIR / "alerts.yml").read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


def test_every_alert_has_unit_tests_and_a_runbook_entry():
    """Offline (no promtool needed): each alert is tested firing, and the runbook explains it."""
    tests = yaml.safe_load((RULES_DIR / "alerts.test.yml").read_text())["tests"]
    firing = {case["alertname"] for test in tests for case in test["alert_rule_test"]
              if case.get("exp_alerts")}
    runbook = (RULES_DIR.parent / "README.md").read_text()
    anchors = {"#" + re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", runbook, flags=re.M)}
    groups = yaml.safe_load((RULES_DIR / "alerts.yml").read_text())["groups"]
    for group in groups:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            assert rule["alert"] in firing, f"no unit test makes {rule['alert']} fire"
            link = rule["annotations"]["runbook"]
            assert link.startswith("docker/README.md#") and link[len("docker/README.md"):] in anchors, (
                f"{rule['alert']}: runbook link {link} has no heading in docker/README.md")
    topics = " ".join(alert_names()).lower()
    for topic in ("latency", "5xx", "503", "lag", "pending", "deadletter", "cas", "rebuild",
                  "redis", "workerdown"):
        assert topic in topics, f"no alert about {topic}"


@needs_promtool
def test_promtool_checks_the_rules_and_the_config():
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"SUCCESS: \d+ rules found", result.stdout)
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_unit_tests_of_every_alert_pass():
    result = promtool("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
