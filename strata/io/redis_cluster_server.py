"""An embedded, real Redis Cluster on loopback: N masters (and optional replicas).

For development and tests of ``STRATA_REDIS_MODE=cluster``. Each node is a ``redis-server``
child (the same binary :func:`strata.io.redis_server.find_redis_server` picks) started with
``--cluster-enabled yes`` in its own folder; the cluster is formed the way
``redis-cli --cluster create`` does it — slots split evenly over the masters
(``CLUSTER ADDSLOTS``), ``CLUSTER MEET`` between all nodes, replicas attached with
``CLUSTER REPLICATE`` — and :meth:`EmbeddedRedisCluster.start` returns once every node
reports ``cluster_state:ok`` and agrees on the slot map.

Nodes keep their data on disk (append-only file, fsync every second, and a save at a clean
stop), so :meth:`restart_node` brings a master back with its slots and its keys.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from types import TracebackType

import redis

from strata.io.redis_server import find_redis_server, free_ports

__all__ = ["ClusterNode", "EmbeddedRedisCluster"]

#: number of hash slots of a Redis Cluster
SLOTS = 16384
#: a node's cluster bus listens on its port + this
BUS_OFFSET = 10000


@dataclass
class ClusterNode:
    """One node of an embedded cluster: its port, folder and process."""

    port: int
    workdir: str
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, timeout_s: float = 5.0) -> redis.Redis:
        """A plain (non-cluster) client of this node alone."""
        return redis.Redis(
            port=self.port, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )


class EmbeddedRedisCluster:
    """A Redis Cluster of ``masters`` masters (each with ``replicas`` replicas) on free
    loopback ports. Use as a context manager, or call :meth:`start` / :meth:`stop`.

    Args:
        masters: number of masters (at least 3, as Redis Cluster requires for failover
            votes; the slots are split evenly between them).
        replicas: replicas per master.
        node_timeout_ms: ``cluster-node-timeout`` (how soon a dead master is failed over).
    """

    def __init__(self, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 2000) -> None:
        if masters < 3:
            raise ValueError("a Redis Cluster needs at least 3 masters")
        if replicas < 0:
            raise ValueError("replicas must be non-negative")
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[ClusterNode] = []
        self.binary: str | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._atexit = False

    @property
    def url(self) -> str:
        """A URL naming the first node (a cluster client discovers the rest)."""
        return self.nodes[0].url

    @property
    def master_nodes(self) -> list[ClusterNode]:
        """The nodes started as masters, in slot order."""
        return self.nodes[: self.masters]

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout_s: float = 30.0) -> EmbeddedRedisCluster:
        """Start every node, form the cluster and wait until it is healthy.

        Raises:
            RuntimeError: a node exited, or the cluster was not ok within ``timeout_s``.
        """
        if self.nodes:
            return self
        self.binary = find_redis_server()
        self._dir = tempfile.TemporaryDirectory(prefix="strata-redis-cluster-")
        if not self._atexit:
            atexit.register(self.stop)
            self._atexit = True
        total = self.masters * (1 + self.replicas)
        try:
            for port in _cluster_ports(total):
                workdir = os.path.join(self._dir.name, str(port))
                os.makedirs(workdir)
                node = ClusterNode(port=port, workdir=workdir)
                self.nodes.append(node)
                self._spawn(node, timeout_s=10.0)
            self._form(timeout_s)
        except (RuntimeError, redis.exceptions.RedisError, OSError):
            self.stop()
            raise
        return self

    def _spawn(self, node: ClusterNode, timeout_s: float) -> None:
        assert self.binary is not None
        args = [
            self.binary,
            "--port", str(node.port),
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--dir", node.workdir,
            "--daemonize", "no",
        ]  # fmt: skip
        node.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(port=node.port, socket_connect_timeout=0.2)
        try:
            while time.monotonic() < deadline:
                if node.proc.poll() is not None:
                    raise RuntimeError(
                        f"cluster node on port {node.port} exited at start "
                        f"(status {node.proc.returncode})"
                    )
                try:
                    if client.ping():
                        return
                except redis.exceptions.ConnectionError:
                    time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError(f"cluster node on port {node.port} did not answer in {timeout_s} s")

    def _form(self, timeout_s: float) -> None:
        masters = self.master_nodes
        per = SLOTS // self.masters
        for i, node in enumerate(masters):
            lo = i * per
            hi = SLOTS if i == self.masters - 1 else (i + 1) * per
            with contextlib.closing(node.client()) as c:
                c.execute_command("CLUSTER ADDSLOTS", *range(lo, hi))
        first = self.nodes[0]
        with contextlib.closing(first.client()) as c:
            for node in self.nodes[1:]:
                c.execute_command("CLUSTER MEET", "127.0.0.1", node.port)
        self._wait_known(timeout_s)
        for r in range(self.replicas):
            for i, master in enumerate(masters):
                replica = self.nodes[self.masters * (1 + r) + i]
                with contextlib.closing(master.client()) as c:
                    master_id = c.execute_command("CLUSTER MYID")
                with contextlib.closing(replica.client()) as c:
                    c.execute_command("CLUSTER REPLICATE", master_id)
        self.wait_ok(timeout_s)

    def _wait_known(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            known = []
            for node in self.nodes:
                with contextlib.closing(node.client()) as c:
                    info = _cluster_info(c)
                known.append(int(info.get("cluster_known_nodes", "0")))
            if all(k == len(self.nodes) for k in known):
                return
            time.sleep(0.1)
        raise RuntimeError(f"cluster nodes did not meet within {timeout_s} s")

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Wait until every running node says ``cluster_state:ok`` with all slots assigned
        and they agree on the slot map (the epoch of each slot range's owner).

        Raises:
            RuntimeError: not ok within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            try:
                states, maps = [], []
                for node in self.nodes:
                    if not node.running:
                        continue
                    with contextlib.closing(node.client()) as c:
                        info = _cluster_info(c)
                        states.append(
                            info.get("cluster_state") == "ok"
                            and int(info.get("cluster_slots_assigned", "0")) == SLOTS
                        )
                        maps.append(_slot_owners(c))
                if states and all(states) and all(m == maps[0] for m in maps):
                    return
                last = f"states={states}"
            except redis.exceptions.RedisError as exc:
                last = str(exc)
            time.sleep(0.1)
        raise RuntimeError(f"redis cluster not ok within {timeout_s} s ({last})")

    def stop_node(self, index: int, *, kill: bool = False) -> None:
        """Stop node ``index``: a clean SHUTDOWN (which saves), or SIGKILL with ``kill``."""
        node = self.nodes[index]
        if not node.running or node.proc is None:
            return
        if kill:
            node.proc.kill()
        else:
            with (
                contextlib.suppress(redis.exceptions.ConnectionError),
                contextlib.closing(node.client(timeout_s=30)) as c,
            ):
                c.shutdown(save=True)
        try:
            node.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait()

    def start_node(self, index: int, timeout_s: float = 30.0) -> None:
        """Start a stopped node again on its port and folder (its ``nodes.conf`` and
        append-only file bring back its slots and data) and wait for the cluster to be ok."""
        node = self.nodes[index]
        if not node.running:
            self._spawn(node, timeout_s=10.0)
        self.wait_ok(timeout_s)

    def restart_node(self, index: int, *, kill: bool = False, timeout_s: float = 30.0) -> None:
        """:meth:`stop_node` then :meth:`start_node`."""
        self.stop_node(index, kill=kill)
        self.start_node(index, timeout_s)

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after 5 s) and remove their folders."""
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.terminate()
                try:
                    node.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()
        self.nodes = []
        if self._dir is not None:
            shutil.rmtree(self._dir.name, ignore_errors=True)
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> EmbeddedRedisCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _cluster_ports(n: int) -> list[int]:
    """``n`` free ports whose cluster-bus ports (port + 10000) are free too."""
    for _ in range(50):
        ports = free_ports(n)
        if all(_bindable(p + BUS_OFFSET) for p in ports):
            return ports
    raise RuntimeError(f"could not find {n} free ports with free cluster-bus ports")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def _cluster_info(client: redis.Redis) -> dict[str, str]:
    raw = client.execute_command("CLUSTER INFO")
    if isinstance(raw, dict):  # redis-py parses the reply into a dict
        return {str(k): str(v) for k, v in raw.items()}
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    out: dict[str, str] = {}
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            out[k.strip()] = v.strip()
    return out


def _slot_owners(client: redis.Redis) -> list[tuple[int, int, int]]:
    """(first slot, last slot, owner's port) of each range, sorted: what a node believes."""
    slots = client.execute_command("CLUSTER SLOTS")
    out: list[tuple[int, int, int]] = []
    if isinstance(slots, dict):  # redis-py may parse the reply into {(lo, hi): {...}}
        for (lo, hi), desc in slots.items():
            primary = desc["primary"]
            out.append((int(lo), int(hi), int(primary[1])))
    else:
        for entry in slots:
            out.append((int(entry[0]), int(entry[1]), int(entry[2][1])))
    return sorted(out)
