"""A real local Redis Cluster for tests and benchmarks: 3 masters with 1 replica each.

`LocalRedisCluster` starts six redis-server processes from one binary (service/ops/redis_server.py
finds it) on free localhost ports with `--cluster-enabled yes` and a short `cluster-node-timeout`,
joins them with `redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes`, waits until
every node reports `cluster_state:ok` and every replica is in sync, and on exit stops every process
(SIGTERM, then SIGKILL) and removes its directory. Like EmbeddedRedis, each server runs in its own
session and gets SIGTERM if the owner dies (PR_SET_PDEATHSIG).

`cluster-require-full-coverage no`: while one slot range has no master (between a master's death
and its replica's promotion) the other slots keep serving.

Usage: `with LocalRedisCluster() as cluster: use(cluster.url)` (a `redis+cluster://` URL).
"""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import redis

from service.ops.redis_server import (RedisServerFailed, RedisServerNotFound, _die_with_parent,
                                      find_redis_server)

MASTERS = 3
REPLICAS_PER_MASTER = 1


def find_redis_cli(server: Path) -> Path:
    """The redis-cli next to `server`, else the one on PATH."""
    sibling = server.with_name("redis-cli")
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return sibling
    found = shutil.which("redis-cli")
    if found:
        return Path(found)
    raise RedisServerNotFound(f"no redis-cli next to {server} nor on PATH (it creates the cluster)")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(count: int) -> list[int]:
    """`count` ports that are free, and whose cluster bus ports (port + 10000) are free too."""
    ports: list[int] = []
    rng = random.Random()
    while len(ports) < count:
        port = rng.randrange(20_000, 30_000)
        if port not in ports and _bindable(port) and _bindable(port + 10_000):
            ports.append(port)
    return ports


@dataclass
class ClusterNode:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class LocalRedisCluster:
    """Six redis-server processes forming a 3-master, 1-replica-each cluster; a context manager."""

    def __init__(self, binary: str | os.PathLike[str] | None = None, *, node_timeout_ms: int = 1000,
                 startup_timeout: float = 60.0) -> None:
        self.binary = find_redis_server(binary)
        self.cli = find_redis_cli(self.binary)
        self.node_timeout_ms = node_timeout_ms
        self.startup_timeout = startup_timeout
        self.nodes: list[ClusterNode] = []
        self._workdir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        """A cluster URL naming one live node (the client discovers the rest)."""
        for node in self.nodes:
            if node.process.poll() is None:
                return f"redis+cluster://{node.address}"
        raise RuntimeError("LocalRedisCluster is not running")

    @property
    def pids(self) -> list[int]:
        return [node.process.pid for node in self.nodes]

    def __enter__(self) -> "LocalRedisCluster":
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- life cycle -------------------------------------------------------------------------------
    def start(self) -> None:
        if self.nodes:
            raise RuntimeError("LocalRedisCluster already started")
        self._workdir = tempfile.TemporaryDirectory(prefix="cmnrec-cluster-")
        try:
            for port in cluster_ports(MASTERS * (1 + REPLICAS_PER_MASTER)):
                self.nodes.append(self._launch(port))
            deadline = time.monotonic() + self.startup_timeout
            for node in self.nodes:
                self._wait_ping(node, deadline)
            create = subprocess.run(
                [str(self.cli), "--cluster", "create", *[n.address for n in self.nodes],
                 "--cluster-replicas", str(REPLICAS_PER_MASTER), "--cluster-yes"],
                stdin=subprocess.DEVNULL, capture_output=True, timeout=self.startup_timeout)
            if create.returncode != 0:
                raise RedisServerFailed("redis-cli --cluster create failed: "
                                        + create.stdout.decode(errors="replace")[-800:]
                                        + create.stderr.decode(errors="replace")[-800:])
            self.wait_healthy(deadline - time.monotonic())
        except BaseException:
            self.stop()
            raise

    def _launch(self, port: int) -> ClusterNode:
        assert self._workdir is not None
        workdir = Path(self._workdir.name) / str(port)
        workdir.mkdir(exist_ok=True)  # a restarted node finds its nodes.conf there
        command = [
            str(self.binary), "--port", str(port), "--bind", "127.0.0.1",
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--cluster-require-full-coverage", "no",
            "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--dir", str(workdir), "--logfile", str(workdir / "redis.log"),
        ]
        parent = os.getpid()
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True,
                                   preexec_fn=lambda: _die_with_parent(parent))
        return ClusterNode(port, process)

    def _wait_ping(self, node: ClusterNode, deadline: float) -> None:
        client = redis.Redis(port=node.port, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            while True:
                if node.process.poll() is not None:
                    raise RedisServerFailed(f"cluster node on port {node.port} exited with code "
                                            f"{node.process.returncode}")
                with contextlib.suppress(redis.RedisError):
                    if client.ping():
                        return
                if time.monotonic() > deadline:
                    raise RedisServerFailed(f"cluster node on port {node.port}: no PING answer")
                time.sleep(0.02)
        finally:
            client.close()

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every live node says cluster_state:ok, every slot has a master, and every live
        replica's link to its master is up."""
        deadline = time.monotonic() + max(timeout, 1.0)
        while True:
            problem = self.health_problem()
            if problem is None:
                return
            if time.monotonic() > deadline:
                raise RedisServerFailed(f"cluster not healthy after {timeout:.0f}s: {problem}")
            time.sleep(0.05)

    def health_problem(self) -> str | None:
        """None when healthy, else what is wrong (see `wait_healthy`)."""
        for node in self.nodes:
            if node.process.poll() is not None:
                continue
            client = redis.Redis(port=node.port, socket_timeout=1.0, decode_responses=True)
            try:
                info = client.execute_command("CLUSTER", "INFO")
                if "cluster_state:ok" not in info or "cluster_slots_ok:16384" not in info:
                    return f"{node.address}: cluster state not ok"
                replication = client.info("replication")
                if replication.get("role") == "slave" and (
                        replication.get("master_link_status") != "up"
                        or replication.get("master_sync_in_progress")):
                    return f"{node.address}: replica not in sync"
            except redis.RedisError as error:
                return f"{node.address}: {error}"
            finally:
                client.close()
        return None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every node, wait (SIGKILL after `timeout`), remove the directory. Idempotent."""
        nodes, self.nodes = self.nodes, []
        for node in nodes:
            if node.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    node.process.send_signal(signal.SIGCONT)  # a paused node must see SIGTERM
                    node.process.terminate()
        for node in nodes:
            try:
                node.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    node.process.kill()
                node.process.wait()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    # -- failure injection (the failover test) ----------------------------------------------------
    def master_port_of(self, key: str) -> int:
        """Port of the master now serving `key`'s slot."""
        for node in self.nodes:
            if node.process.poll() is not None:
                continue
            client = redis.Redis(port=node.port, socket_timeout=1.0)
            try:
                slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
                for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if int(start) <= slot <= int(end):
                        return int(master[1])
            except redis.RedisError:
                continue
            finally:
                client.close()
        raise RedisServerFailed("no live node knows the slot map")

    def kill_node(self, port: int) -> None:
        """SIGKILL the node on `port` (no shutdown, no goodbye to the cluster)."""
        for node in self.nodes:
            if node.port == port:
                node.process.send_signal(signal.SIGKILL)
                node.process.wait()
                return
        raise KeyError(port)

    def restart_node(self, port: int) -> None:
        """Start the (killed) node on `port` again with its nodes.conf: it rejoins the cluster, as
        a replica of whoever took over its slots (what an orchestrator restarting it would do)."""
        for i, node in enumerate(self.nodes):
            if node.port == port:
                if node.process.poll() is None:
                    raise RuntimeError(f"node {port} is running")
                self.nodes[i] = self._launch(port)
                self._wait_ping(self.nodes[i], time.monotonic() + self.startup_timeout)
                return
        raise KeyError(port)

    def replica_ports_of(self, master_port: int) -> list[int]:
        """Ports of the replicas the master on `master_port` reports."""
        client = redis.Redis(port=master_port, socket_timeout=1.0, decode_responses=True)
        try:
            info = client.info("replication")
        finally:
            client.close()
        return [int(value["port"]) for key, value in info.items()
                if key.startswith("slave") and isinstance(value, dict)]

    def pause_node(self, port: int, paused: bool = True) -> None:
        """SIGSTOP (paused) or SIGCONT the node on `port`: a replica that falls behind."""
        for node in self.nodes:
            if node.port == port:
                node.process.send_signal(signal.SIGSTOP if paused else signal.SIGCONT)
                return
        raise KeyError(port)

    def drop_replica_links(self, master_port: int) -> None:
        """The master closes its replication connections (CLIENT KILL TYPE replica); a paused
        replica then gets nothing more of what the master writes until it reconnects."""
        client = redis.Redis(port=master_port, socket_timeout=1.0)
        try:
            client.execute_command("CLIENT", "KILL", "TYPE", "replica")
        finally:
            client.close()
