"""What listens where: every socket that `strata recompute` and `strata serve` open, read from
the kernel (psutil) for the command's whole process tree (Ray's GCS, raylet, workers and
agents, Serve's controller, proxy, HAProxy and replicas, the embedded redis-server), while
they run. Only loopback, except the one socket docs/serving.md allows with its guard: a Serve
replica's inter-deployment gRPC server, which Serve binds on ``[::]`` and which refuses a call
without Ray's token."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from jobs import generate
from strata.io.redis_server import free_port
from strata.serving.apikeys import dump_records, new_key
from strata.settings import Settings
from tests.conftest import TEST_KEY
from tests.integration.test_serve_cli import _Foreground

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

STRATA = str(Path(sys.executable).with_name("strata"))
END = dt.date(2026, 10, 1)


@dataclass(frozen=True)
class Listener:
    """One socket a process listens on (TCP) or has bound without a peer (UDP), or a unix
    socket with a path."""

    process: str
    pid: int
    kind: str  # tcp, udp or unix
    address: str
    port: int

    def on_loopback(self) -> bool:
        if self.kind == "unix":
            return True
        ip = ipaddress.ip_address(self.address.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.is_loopback

    def __str__(self) -> str:
        where = self.address if self.kind == "unix" else f"{self.address}:{self.port}"
        return f"{self.kind} {where} ({self.process}, pid {self.pid})"


def _name(proc: psutil.Process) -> str:
    """``ray::ServeReplica:...``, ``raylet``, ``redis-server``, ``haproxy``..."""
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return "?"
    if not cmd:
        return proc.name()
    first = cmd[0].split()[0]  # redis-server and Ray's workers rewrite their title
    if first.startswith("ray::"):
        return first
    if Path(first).name.startswith("python") and len(cmd) > 1:
        return Path(cmd[1]).name
    return Path(first).name


def listeners_of(root_pid: int) -> set[Listener]:
    """Every listening socket of ``root_pid`` and all its descendants, now."""
    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return set()
    found: set[Listener] = set()
    for proc in procs:
        try:
            conns = proc.net_connections(kind="all")
        except psutil.Error:
            continue
        name = _name(proc)
        for c in conns:
            if c.family == socket.AF_UNIX:
                if c.laddr:
                    found.add(Listener(name, proc.pid, "unix", str(c.laddr), 0))
            elif c.type == socket.SOCK_STREAM and c.status == psutil.CONN_LISTEN:
                found.add(Listener(name, proc.pid, "tcp", c.laddr.ip, c.laddr.port))
            elif c.type == socket.SOCK_DGRAM and not c.raddr:
                found.add(Listener(name, proc.pid, "udp", c.laddr.ip, c.laddr.port))
    return found


class _Sampler:
    """Collects :func:`listeners_of` a process tree every 0.2 s until stopped: a short job's
    Ray processes are there for seconds only."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.seen: set[Listener] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.seen |= listeners_of(self.pid)
            self._stop.wait(0.2)

    def stop(self) -> set[Listener]:
        self._stop.set()
        self._thread.join(10)
        return self.seen


def _refuses_without_ray_token(port: int) -> bool:
    """Whether a gRPC call on ``port`` without Ray's token is answered UNAUTHENTICATED."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            "/ray.serve.ASGIService/HandleRequest",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        try:
            call(b"", timeout=10)
        except grpc.RpcError as exc:
            return bool(exc.code() == grpc.StatusCode.UNAUTHENTICATED)
    return False


def _beyond_loopback(seen: set[Listener]) -> list[Listener]:
    """What listens beyond loopback, less the allowed replica gRPC servers that refuse a
    call without Ray's token."""
    left = []
    for s in sorted(seen, key=str):
        if s.on_loopback():
            continue
        replica_grpc = s.process.startswith("ray::ServeReplica") and s.kind == "tcp"
        if replica_grpc and s.address in ("::", "0.0.0.0") and _refuses_without_ray_token(s.port):
            continue
        left.append(s)
    return left


def _report(title: str, seen: set[Listener]) -> str:
    rows = sorted(seen, key=lambda s: (s.process, s.kind, s.port, s.address))
    return "\n".join([title, *(f"  {s}" for s in rows)])


def test_recompute_and_serve_listen_on_loopback_only(tmp_path: Path, ray_local: Any) -> None:
    data = tmp_path / "data"
    generate.run(
        Settings(data=str(data), pseudonym_key=TEST_KEY, n_buckets=4),
        users=200,
        days=30,
        seed=3,
        end=END,
        show_progress=False,
    )
    key, record = new_key("sockets", ["segments:read"])
    env = {
        **os.environ,
        "STRATA_PSEUDONYM_KEY": TEST_KEY,
        "STRATA_API_KEYS": dump_records([record]),
        "STRATA_NUM_CPUS": "2",
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "200",
    }
    env.pop("RAY_ADDRESS", None)  # their own local Ray
    env.pop("STRATA_REDIS_URL", None)  # and their own embedded redis-server
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # strata's default, not the session's

    recompute = subprocess.Popen(
        [STRATA, "recompute", "--data", str(data), "--as-of", END.isoformat(), "--actors", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    sampler = _Sampler(recompute.pid)
    out, _ = recompute.communicate(timeout=180)
    by_recompute = sampler.stop()
    assert recompute.returncode == 0, out
    print(_report("strata recompute", by_recompute))
    names = {s.process for s in by_recompute}
    # its embedded redis-server lives for the publish only (well under a sample's 0.2 s); it
    # is the same server, flags and bind address that `strata serve` runs, listed below
    assert {"gcs_server", "raylet", "ray::FeatureShard"} <= names, names

    port = free_port()
    with _Foreground([STRATA, "serve", "--data", str(data), "--port", str(port)], env) as serve:
        sampler = _Sampler(serve.proc.pid)
        assert serve.ready.wait(150), "strata serve did not come up:\n" + serve.tail()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/healthz/ready", headers={"Authorization": f"Bearer {key}"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:  # the published snapshot
            assert resp.status == 200
        time.sleep(1.0)
        by_serve = sampler.stop()
        print(_report("strata serve", by_serve))
        names = {s.process for s in by_serve}
        assert {"gcs_server", "raylet", "redis-server", "haproxy"} <= names, names
        assert any(n.startswith("ray::ServeReplica") for n in names), names
        haproxy = {(s.address, s.port) for s in by_serve if s.process == "haproxy"}
        # the API's frontend, HAProxy's stats page and its Prometheus exporter
        assert ("127.0.0.1", port) in haproxy and len(haproxy) >= 3, haproxy
        outside = _beyond_loopback(by_serve)  # while it runs: the allowed ones are probed
        assert not outside, "strata serve listens beyond loopback:\n" + "\n".join(map(str, outside))
        assert serve.interrupt() == 0, serve.tail()

    outside = _beyond_loopback(by_recompute)
    assert not outside, "strata recompute listens beyond loopback:\n" + "\n".join(map(str, outside))
    for seen in (by_recompute, by_serve):  # nothing in the data root (Redis has no unix socket)
        in_data = [s for s in seen if s.kind == "unix" and s.address.startswith(str(data))]
        assert not in_data, in_data
