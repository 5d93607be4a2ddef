"""Fault tests: the shared Ray/Redis fixtures of tests/conftest.py, one small warehouse."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import SecretStr

from jobs import generate
from strata.io.redis_server import EmbeddedRedis
from strata.settings import Settings
from tests.conftest import TEST_KEY

#: The generated warehouse's last day and the as-of the tests recompute at.
END = dt.date(2026, 10, 1)
AS_OF = "2026-10-01"


@pytest.fixture(scope="session")
def small_warehouse(tmp_path_factory: pytest.TempPathFactory, ray_local: Any) -> Path:
    """One small generated data root (400 users, 60 days), copied by tests that change it."""
    root = tmp_path_factory.mktemp("faults") / "data"
    settings = Settings(data=str(root), pseudonym_key=SecretStr(TEST_KEY), n_buckets=8)
    generate.run(settings, users=400, days=60, seed=11, end=END)
    return root


def tree_digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (hidden ones too), by relative path."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


class LookupProbe:
    """A thread doing batch segment lookups through strata's :class:`SegmentStore` while a
    fault happens, keeping every answer's version and a digest of its records.

    An answer is *mixed* when its records differ from what the same lookup returns from its
    version when nothing is happening (:meth:`reference`): a lookup that read part of one
    version and part of another, or a version half written. Lookups that fail (Redis down)
    are counted as errors, and the probe goes on.

    Args:
        redis_url: the Redis the lookups read.
        user_ids: the users of one batch lookup (at most 1,000).
        namespace: the key namespace.
        pause_s: sleep between lookups.
    """

    def __init__(
        self, redis_url: str, user_ids: list[int], namespace: str = "strata", pause_s: float = 0.002
    ) -> None:
        from strata.io.segment_store import SegmentStore

        self.store = SegmentStore(redis_url, namespace=namespace, socket_timeout_s=2.0)
        self.user_ids = list(user_ids)
        self.pause_s = pause_s
        #: (monotonic time, version or None for an error, digest of the records or "")
        self.answers: list[tuple[float, str | None, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lookup-probe", daemon=True)

    def lookup(self) -> tuple[str | None, str]:
        """One batch lookup: its version and the digest of its records."""
        version, records = self.store.get_many(self.user_ids)
        blob = json.dumps(records, sort_keys=True, default=str).encode()
        return version, hashlib.sha256(blob).hexdigest()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                version, digest = self.lookup()
            except Exception:  # Redis down or restarting: counted, and the probe goes on
                self.answers.append((time.monotonic(), None, ""))
                self._stop.wait(0.05)
                continue
            self.answers.append((time.monotonic(), version, digest))
            if self.pause_s:
                self._stop.wait(self.pause_s)

    def __enter__(self) -> LookupProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def counts(self, reference: dict[str, str]) -> dict[str, Any]:
        """What the probe saw, against ``reference`` (version -> digest of a quiet lookup).

        Returns:
            ``answers`` (lookups answered), ``errors`` (lookups that failed), ``mixed``
            (answered with records their version does not hold), ``unknown_versions``
            (answered from a version not in ``reference``), ``versions`` (the versions seen, in
            the order they were first seen), ``flips`` (times the answered version changed)
            and ``longest_outage_s`` (the longest run of failed lookups).
        """
        answered = [(t, v, d) for t, v, d in self.answers if v is not None]
        seen: list[str] = []
        flips = 0
        for _, version, _ in answered:
            if version is not None and (not seen or seen[-1] != version):
                flips += bool(seen)
                seen.append(version)
        outage = longest = 0.0
        start: float | None = None
        for t, answer, _ in self.answers:
            if answer is None:
                start = t if start is None else start
                outage = t - start
                longest = max(longest, outage)
            else:
                start = None
        return {
            "answers": len(answered),
            "errors": len(self.answers) - len(answered),
            "mixed": sum(1 for _, v, d in answered if v in reference and reference[v] != d),
            "unknown_versions": sum(1 for _, v, _ in answered if v not in reference),
            "versions": seen,
            "flips": flips,
            "longest_outage_s": round(longest, 2),
        }

    def close(self) -> None:
        self.store.close()


def restart(server: EmbeddedRedis, how: str) -> float:
    """Restart ``server`` (graceful: stop with a save, start; sigkill: the supervisor brings it
    back); the seconds until it answers PING again."""
    t0 = time.monotonic()
    if how == "graceful":
        server.stop()
        server.start()
    else:
        pid = server.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while server.pid in (None, pid):
            assert time.monotonic() < deadline, "the supervisor did not restart redis"
            time.sleep(0.01)
    client = redis.Redis(port=server.port, socket_connect_timeout=0.2)
    try:
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.RedisError:
                time.sleep(0.01)
    finally:
        client.close()
    return time.monotonic() - t0
