"""Every PromQL expression of the Grafana dashboard and of the alert rules, evaluated by a real
Prometheus that scrapes a real `cmnrec serve` (two uvicorn workers) and `cmnrec worker` under a
little load (HTTP events, stream events, an unknown item, a dead letter).

Needs Prometheus's server binary (Debian: `apt-get install prometheus`; .ci/run installs it); without
it the test is skipped with that reason. It scrapes every second and evaluates the rules every second
(docker/prometheus/alerts.yml, loaded as in compose), so it takes about half a minute.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from service.ops.redis_server import free_port
from service.state.keys import KeySchema
from service.streams.publish import publish_events
from service.streams.records import partition_of
from tests.conftest import delete_prefix
from tests.service.served import ROOT, ServedProcess, descendants, left_running

DOCKER = ROOT / "docker"
PROMETHEUS = shutil.which("prometheus")
ITEMS = [str(100 + i) for i in range(1, 40)]
PARTITIONS = 2
# Grafana's $__rate_interval is max(4 x scrape interval, step + scrape interval); 1 s scrapes here
RATE_INTERVAL = "30s"

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus not installed (Debian: apt-get install prometheus)")


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((DOCKER / "grafana/dashboards/cmnrec.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((DOCKER / "prometheus/alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


class Background:
    """A command in its own process group, stopped with SIGTERM (then SIGKILL) at the end."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.handle = log.open("w")
        self.process = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env},
                                        stdout=self.handle, stderr=subprocess.STDOUT)

    def stop(self) -> set[int]:
        tree = descendants(self.process.pid) | {self.process.pid}
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.handle.close()
        return tree

    def output(self) -> str:
        return self.log.read_text()[-3000:]


def wait_for(check, what: str, timeout: float, *processes: Background) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            if process.process.poll() is not None:
                raise AssertionError(f"{what}: a process exited: {process.output()}")
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout}s; "
                         + " | ".join(p.output() for p in processes))


def query(prometheus: str, expr: str) -> list[dict]:
    """Instant query through the HTTP API; fails on a parse or evaluation error."""
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (expr, body)
    return body["data"]["result"]


@pytest.fixture(scope="module")
def stack(artifacts, redis_url, tmp_path_factory):
    """Prometheus scraping `cmnrec serve` and `cmnrec worker`, with traffic through both."""
    tmp = tmp_path_factory.mktemp("prometheus")
    prefix = f"test-prom-{uuid.uuid4().hex[:8]}"
    env = {"REDIS_URL": redis_url, "CMNREC_KEY_PREFIX": prefix}
    api = ServedProcess(artifacts["main"], free_port(), workers=2, env=env)
    worker_port = free_port()
    worker_code = ("import sys\nfrom cli.app import app\nsys.argv = ['cmnrec', 'worker', "
                   f"'--artifact', {str(artifacts['main'])!r}, '--partitions', '{PARTITIONS}', "
                   f"'--metrics-port', '{worker_port}', '--batch-size', '16']\napp()\n")
    worker = Background([sys.executable, "-c", worker_code], env, tmp / "worker.log")
    prometheus_port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DOCKER / "prometheus/alerts.yml")],
        "scrape_configs": [
            {"job_name": "cmnrec-api", "static_configs": [{"targets": [api.url[len("http://"):]]}]},
            {"job_name": "cmnrec-worker",
             "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    server = Background([PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}",
                         f"--storage.tsdb.path={tmp / 'data'}",
                         f"--web.listen-address=127.0.0.1:{prometheus_port}", "--log.level=warn"],
                        {}, tmp / "prometheus.log")
    url = f"http://127.0.0.1:{prometheus_port}"
    started = [worker, server]
    try:
        api.wait_ready()
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{worker_port}/metrics", timeout=1)
                 .status_code == 200, "worker metrics", 60, worker)
        wait_for(lambda: httpx.get(f"{url}/-/ready", timeout=1).status_code == 200,
                 "prometheus ready", 60, server)
        # both targets scraped once before the traffic: the counters' first samples are 0, so
        # increase() and rate() see the traffic however late a scrape comes on a loaded machine
        wait_for(lambda: len(query(url, "up == 1")) == 2, "both targets scraped", 60, worker, server)
        drive_traffic(api.url, redis_url, prefix)
        # a couple of scrapes after the traffic, so every rate() window holds an increase
        wait_for(lambda: query(url, 'sum(increase(cmnrec_events_total{job="cmnrec-worker",'
                                    'outcome="applied"}[1m])) > 0')
                 and query(url, 'sum(increase(cmnrec_events_total{job="cmnrec-api",'
                                'outcome="applied"}[1m])) > 0'),
                 "events seen by Prometheus", 60, worker, server)
        time.sleep(3)
        yield url
    finally:
        trees = [api.stop()] + [process.stop() for process in started]
        delete_prefix(redis_url, prefix)
        leftover = left_running(set().union(*trees))
        assert not leftover, f"processes left running: {leftover}"


def drive_traffic(api: str, redis_url: str, prefix: str) -> None:
    """Events over HTTP (some with recommendations), one unknown item (a 422), a batch, a read;
    stream events for the worker plus one entry it must dead-letter."""
    with httpx.Client(base_url=api, timeout=30) as client:
        for k in range(30):
            response = client.post("/v1/events?n=5", json={"user_id": f"http-{k % 6}",
                                                          "item_id": ITEMS[(5 * k) % 39],
                                                          "event_id": f"h-{k}"})
            assert response.status_code == 200, response.text
        response = client.post("/v1/events", json={"user_id": "http-0", "item_id": "no-such",
                                                    "event_id": "h-bad"})
        assert response.status_code == 422
        batch = [{"user_id": f"http-{k % 3}", "item_id": ITEMS[k], "event_id": f"b-{k}"}
                 for k in range(10)]
        assert client.post("/v1/events/batch", json={"events": batch}).status_code == 200
        assert client.get("/v1/users/http-1/recommendations?n=5").status_code == 200
    sync = redis.Redis.from_url(redis_url)
    try:
        events = [{"user_id": f"stream-{k % 8}", "item_id": ITEMS[(3 * k) % 39],
                   "event_id": f"s-{k}"} for k in range(80)]
        publish_events(sync, events, partitions=PARTITIONS, prefix=prefix)
        keys = KeySchema(prefix)
        sync.xadd(keys.stream(partition_of("stream-0", PARTITIONS)),
                  {"user_id": "stream-0", "item_id": "no-such-item", "event_id": "dead-1"})
    finally:
        sync.close()


def test_prometheus_scrapes_both_targets(stack):
    targets = httpx.get(f"{stack}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    assert {t["labels"]["job"] for t in targets} == {"cmnrec-api", "cmnrec-worker"}
    assert all(t["health"] == "up" for t in targets), targets


def test_every_dashboard_query_answers(stack):
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    empty = [expr for expr in exprs
             if not query(stack, expr.replace("$__rate_interval", RATE_INTERVAL))]
    assert not empty, f"dashboard queries without data: {empty}"


def test_every_rule_evaluates_and_every_recording_answers(stack):
    """Prometheus itself evaluated every rule without error; each recording rule's expression and
    its recorded series return data."""
    def all_evaluated() -> bool:
        groups = httpx.get(f"{stack}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return len(rules) == len(alert_rules()) and all(
            not rule.get("lastEvaluation", "0001").startswith("0001") for rule in rules)

    wait_for(all_evaluated, "every rule evaluated", 30)
    groups = httpx.get(f"{stack}/api/v1/rules", timeout=10).json()["data"]["groups"]
    for rule in (rule for group in groups for rule in group["rules"]):
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
    recordings = [rule for rule in alert_rules() if "record" in rule]
    assert recordings
    for rule in recordings:
        assert query(stack, rule["expr"]), f"recording rule {rule['record']} has no data"
        wait_for(lambda: query(stack, rule["record"]), f"series {rule['record']}", 10)


def test_every_alert_expression_parses_and_its_quantity_answers(stack):
    """An alert's expression is empty unless it fires (none should here), but it must parse and
    evaluate, and the quantity it compares (its first selector) must return data."""
    alerts = [rule for rule in alert_rules() if "alert" in rule]
    assert len(alerts) >= 10
    for rule in alerts:
        expr = " ".join(rule["expr"].split())
        query(stack, expr)
        quantity = re.match(r"[a-zA-Z_:][\w:]*(\{[^}]*\})?", expr)
        assert quantity, expr
        assert query(stack, quantity.group(0)), f"{rule['alert']}: {quantity.group(0)} has no data"
    firing = query(stack, 'ALERTS{alertstate="firing"}')
    # dead letters: the test published one poison entry, so that alert may fire; nothing else
    assert {a["metric"]["alertname"] for a in firing} <= {"CmnRecDeadLettersGrowing"}, firing
