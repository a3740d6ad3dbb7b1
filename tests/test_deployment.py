"""The deployment files hold together: compose, Dockerfiles, Prometheus and Grafana configs.

No Docker engine runs these tests; they parse the files and check the pieces that must be there, and
cross-check them against each other and against service/ops/metrics.py.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE_FILE = ROOT / "docker-compose.yml"
SERVING_SERVICES = ("api", "worker")


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    assert not current, f"{path}: dangling line continuation"
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
            for line in lines]


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (op, _) in enumerate(instructions) if op == "FROM"]
    return instructions[starts[-1]:]


def test_compose_has_every_service_with_a_healthcheck():
    services = compose()["services"]
    for name in ("redis", "api", "worker", "prometheus", "grafana"):
        assert name in services, f"compose lacks service {name}"
        check = services[name].get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"


def test_compose_start_order_waits_for_healthy_dependencies():
    services = compose()["services"]
    for name in SERVING_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["model"]["condition"] == "service_completed_successfully"
    assert services["prometheus"]["depends_on"]["api"]["condition"] == "service_healthy"
    assert services["prometheus"]["depends_on"]["worker"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    for name, service in services.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            assert isinstance(spec, dict) and "condition" in spec, f"{name} -> {dependency}"


def test_serving_services_use_redis_service_and_shared_artifacts():
    config = compose()
    services = config["services"]
    redis_port = "6379"
    for name in SERVING_SERVICES:
        service = services[name]
        assert service["environment"]["REDIS_URL"] == (
            f"redis://:${{REDIS_PASSWORD:?set REDIS_PASSWORD}}@redis:{redis_port}/0")
        assert service["build"]["dockerfile"] == "docker/Dockerfile.serve"
        mounts = [m.split(":") for m in service["volumes"]]
        assert ["artifacts", "/artifacts", "ro"] in mounts
        artifact = service["command"][service["command"].index("--artifact") + 1]
        assert artifact.startswith("/artifacts/")
    assert "artifacts" in config["volumes"]
    assert any(m.startswith("artifacts:/artifacts") for m in services["model"]["volumes"])
    api_command = services["api"]["command"]
    assert api_command[0] == "serve" and int(api_command[api_command.index("--workers") + 1]) > 1
    assert services["worker"]["command"][0] == "worker"


def test_compose_commands_name_real_cli_options():
    """Every --option the compose file passes to `cmnrec` exists on that command."""
    from typer.main import get_command

    from cli.app import app

    cli = get_command(app)
    services = compose()["services"]
    commands = [services[name]["command"] for name in SERVING_SERVICES]
    model_script = " ".join(services["model"]["command"])
    commands += [shlex.split(part.strip(" ()|&"))
                 for part in re.findall(r"cmnrec ([^&|]+)", model_script)]
    assert len(commands) == 4  # serve, worker, train, export
    for argv in commands:
        sub = cli.commands[argv[0]]
        known = {opt for param in sub.params for opt in getattr(param, "opts", [])}
        for token in argv[1:]:
            if token.startswith("--"):
                assert token in known, f"`cmnrec {argv[0]}` has no option {token}"


def test_healthcheck_ports_match_published_ports():
    services = compose()["services"]
    api_test = " ".join(services["api"]["healthcheck"]["test"])
    assert "127.0.0.1:8000/readyz" in api_test
    assert [p.rsplit(":", 1)[-1] for p in services["api"]["ports"]] == ["8000"]
    worker = services["worker"]
    port = worker["command"][worker["command"].index("--metrics-port") + 1]
    assert f"127.0.0.1:{port}/healthz" in " ".join(worker["healthcheck"]["test"])  # the loop
    assert port in [str(p) for p in worker["expose"]]


def test_serving_image_is_slim_torch_free_non_root_with_healthcheck():
    instructions = dockerfile_instructions(DOCKER / "Dockerfile.serve")
    text = " ".join(args for _, args in instructions).lower()
    assert "torch" not in text.replace("find_spec('torch')", ""), "the serving image mentions torch"
    assert instructions[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
    assert all(args.split()[0] == "${BASE_IMAGE}" for op, args in instructions if op == "FROM")
    assert any(op == "RUN" and 'pip install' in args and '".[serve]"' in args
               for op, args in instructions)
    last = final_stage(instructions)
    users = [args for op, args in last if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(op == "HEALTHCHECK" and "service.ops.healthcheck" in args for op, args in last)
    entrypoint = [json.loads(args) for op, args in last if op == "ENTRYPOINT"]
    assert entrypoint == [["cmnrec"]]
    cmd = json.loads([args for op, args in last if op == "CMD"][-1])
    assert cmd[0] == "serve"


@pytest.mark.parametrize("name", ["Dockerfile.serve", "Dockerfile.train"])
def test_images_copy_every_package(name):
    """Every package pyproject.toml installs is copied into the image (else `cmnrec` cannot start)."""
    include = re.search(r"include = \[([^\]]*)\]", (ROOT / "pyproject.toml").read_text()).group(1)
    packages = {p.strip(' "*') for p in include.split(",")}
    copied = {args.split()[0] for op, args in dockerfile_instructions(DOCKER / name)
              if op == "COPY" and not args.startswith("--from")}
    assert packages <= copied, f"{name} does not copy {sorted(packages - copied)}"


def test_training_image_pins_cpu_torch():
    instructions = dockerfile_instructions(DOCKER / "Dockerfile.train")
    runs = [args for op, args in instructions if op == "RUN"]
    assert instructions[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
    assert [args for op, args in instructions if op == "FROM"] == ["${BASE_IMAGE}"]
    torch_install = [r for r in runs if "torch==2.13.0" in r]
    assert torch_install and "download.pytorch.org/whl/cpu" in torch_install[0]
    assert any(".[train" in r for r in runs)
    pinned = re.findall(r'"torch==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert pinned == ["2.13.0"], "the train extra's torch pin and the image's must agree"


def test_prometheus_scrapes_api_and_every_worker():
    config = yaml.safe_load((DOCKER / "prometheus/prometheus.yml").read_text())
    services = compose()["services"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = []
    for job in jobs.values():
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for static in job.get("static_configs", []):
            targets += [tuple(t.split(":")) for t in static["targets"]]
        for dns in job.get("dns_sd_configs", []):
            targets += [(name, str(dns["port"])) for name in dns["names"]]
    assert {host for host, _ in targets} == {"api", "worker"}
    for host, port in targets:
        assert host in services
        service = services[host]
        if host == "api":
            assert service["command"][service["command"].index("--port") + 1] == port
        else:
            assert service["command"][service["command"].index("--metrics-port") + 1] == port
    mounted = " ".join(services["prometheus"]["volumes"])
    assert "./docker/prometheus:/etc/prometheus:ro" in mounted
    assert config["rule_files"] == ["alerts.yml"] and (DOCKER / "prometheus/alerts.yml").is_file()


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard():
    services = compose()["services"]
    datasources = yaml.safe_load(
        (DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
    prometheus_port = services["prometheus"]["ports"][0].split(":")[-1]
    assert datasources[0]["url"] == f"http://prometheus:{prometheus_port}"
    providers = yaml.safe_load(
        (DOCKER / "grafana/provisioning/dashboards/cmnrec.yml").read_text())["providers"]
    volumes = services["grafana"]["volumes"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in volumes if v.startswith("./")}
    dashboard_dir = providers[0]["options"]["path"]
    assert mounted[dashboard_dir] == "./docker/grafana/dashboards"
    assert mounted["/etc/grafana/provisioning"] == "./docker/grafana/provisioning"
    uid = datasources[0]["uid"]
    dashboard = json.loads((DOCKER / "grafana/dashboards/cmnrec.json").read_text())
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == uid


def exported_series() -> set[str]:
    """Every series name service/ops/metrics.py defines, as Prometheus exposes it."""
    from prometheus_client import REGISTRY

    import service.ops.metrics  # noqa: F401  (defines the metrics in the default registry)

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                "gauge": ("",), "summary": ("_count", "_sum", "")}
    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("cmnrec_"):
            names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


def test_dashboard_queries_only_metrics_that_exist():
    dashboard = json.loads((DOCKER / "grafana/dashboards/cmnrec.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    queried = {name for expr in exprs for name in re.findall(r"\bcmnrec_[a-z0-9_]+", expr)}
    known = exported_series()
    missing = sorted(queried - known)
    assert not missing, f"dashboard queries metrics that service/ops/metrics.py lacks: {missing}"
    jobs = {job["job_name"] for job in
            yaml.safe_load((DOCKER / "prometheus/prometheus.yml").read_text())["scrape_configs"]}
    for expr in exprs:
        for job in re.findall(r'job="([^"]+)"', expr):
            assert job in jobs, f"dashboard filters on unknown job {job}"
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("request rate", "p50", "p99", "stage", "chunk", "state bytes", "lag",
                  "pending", "batch size", "batch latency", "errors", "dead-letter"):
        assert topic in titles, f"dashboard has no panel about {topic}"


def test_every_worker_metric_in_the_dashboard():
    """The stream worker's metrics all have a panel (nothing defined and never shown)."""
    dashboard = (DOCKER / "grafana/dashboards/cmnrec.json").read_text()
    worker_metrics = {name.rsplit("_", 1)[0] if name.endswith(("_bucket", "_count", "_sum")) else name
                      for name in exported_series() if name.startswith("cmnrec_worker_")}
    assert worker_metrics
    for name in worker_metrics:
        assert name in dashboard, f"{name} is not on the dashboard"


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_config_validates_and_requires_the_passwords():
    """The compose client's own validation (offline; only where a compose client is installed),
    and it refuses to start without the Redis and Grafana passwords and the API keys."""
    secrets = {"REDIS_PASSWORD": "redis-secret", "GRAFANA_ADMIN_PASSWORD": "grafana-secret",
               "CMNREC_API_KEYS": "ops admin api-secret"}
    env = {k: v for k, v in os.environ.items() if k not in secrets}
    result = subprocess.run(["docker-compose", "-f", str(COMPOSE_FILE), "config"], cwd=ROOT,
                            env={**env, **secrets}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)["services"]
    assert rendered["api"]["environment"]["REDIS_URL"] == "redis://:redis-secret@redis:6379/0"
    assert rendered["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "grafana-secret"
    assert rendered["api"]["environment"]["CMNREC_API_KEYS"] == "ops admin api-secret"
    for missing in secrets:
        partial = {k: v for k, v in secrets.items() if k != missing}
        result = subprocess.run(["docker-compose", "-f", str(COMPOSE_FILE), "config", "--quiet"],
                                cwd=ROOT, env={**env, **partial}, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode != 0 and f"set {missing}" in result.stderr


def test_only_the_api_is_published_beyond_loopback():
    """Redis and the worker's metrics are not published; Prometheus and Grafana on 127.0.0.1 only."""
    services = compose()["services"]
    assert "ports" not in services["redis"] and "ports" not in services["worker"]
    for name in ("prometheus", "grafana"):
        assert all(str(p).startswith("127.0.0.1:") for p in services[name]["ports"]), name
    assert services["api"]["ports"] == ["${CMNREC_API_PORT:-8000}:8000"]
    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("--requirepass") + 1].startswith("${REDIS_PASSWORD:?")


def test_container_health_probe_exits_by_the_answer():
    """service.ops.healthcheck (the images' HEALTHCHECK): 0 on a 2xx answer, 1 on an error or no server."""
    import http.server
    import threading

    from service.ops.healthcheck import main
    from service.ops.redis_server import free_port

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            self.send_response(200 if self.path == "/readyz" else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        assert main(["healthcheck", f"http://127.0.0.1:{port}/readyz"]) == 0
        assert main(["healthcheck", f"http://127.0.0.1:{port}/other"]) == 1
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert main(["healthcheck", f"http://127.0.0.1:{free_port()}/readyz"]) == 1
