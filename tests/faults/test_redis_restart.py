"""Redis restarted while `strata recompute` publishes: the previous version is on disk before the
publish starts and answers again after the restart, the publish fails cleanly (exit 2, one
message, its version discarded) or completes, and no lookup ever answers a mixed version.

Both kinds of restart: graceful (SHUTDOWN SAVE, then a start on the same port and folder) and
SIGKILL (the supervisor starts it again from the append-only file). ``bench/chaos.py`` runs
:func:`publish_with_restart` with more users and repeats.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import SecretStr

from strata.io.redis_server import EmbeddedRedis, has_append_only_file, save_dataset
from tests.conftest import TEST_KEY
from tests.faults.conftest import LookupProbe, restart

pytestmark = pytest.mark.integration

PREVIOUS_AS_OF = "2026-09-15"
AS_OF = "2026-10-01"
HOW = ("graceful", "sigkill")


def publish_with_restart(
    data: str, server: EmbeddedRedis, how: str, n_probe: int = 1000, actors: int = 2
) -> dict[str, Any]:
    """Publish a previous version, then recompute again and restart Redis the moment the new
    version's writers begin (its meta hash exists); a probe does batch lookups throughout.

    Returns:
        What happened: ``completed`` or ``error``, ``current`` afterwards, the restart's
        ``down_s``, whether the new version's keys stayed (``stray_version``), and the probe's
        counts (:meth:`LookupProbe.counts`) with ``previous_after_restart`` (lookups the
        previous version answered after the restart).
    """
    from jobs.recompute import RecomputeError, RecomputeJob
    from strata.io.segment_store import SegmentStore
    from strata.io.snapshots import SnapshotStore
    from strata.io.warehouse import Warehouse
    from strata.settings import Settings
    from strata.timeutil import parse_as_of

    settings = Settings(data=data, pseudonym_key=SecretStr(TEST_KEY), redis_url=server.url)
    previous = RecomputeJob(settings, parse_as_of(PREVIOUS_AS_OF), actors=actors).run()
    ids = Warehouse(data).read_table("users", ["user_id"]).column("user_id").to_pylist()
    probe = LookupProbe(server.url, sorted(ids)[:n_probe])
    reference = {previous.version: probe.lookup()[1]}
    snapshots = SnapshotStore(data)
    known = set(os.listdir(snapshots.root))
    out: dict[str, Any] = {"how": how, "previous": previous.version}
    fired = threading.Event()

    def restart_when_writing(version: str) -> None:
        watcher = SegmentStore(server.url)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not fired.is_set():
            info = watcher.info(version)
            if info is not None:  # begin_version ran: the shards write now
                out["status_at_restart"] = info.status
                out["restart_at"] = time.monotonic()
                out["down_s"] = round(restart(server, how), 3)
                fired.set()
                break
            time.sleep(0.001)
        watcher.close()

    def hook(phase: str, shards: list[Any]) -> None:
        if phase == "scoring":  # the snapshot is written: its folder names the version
            (version,) = set(os.listdir(snapshots.root)) - known
            out["version"] = version
            threading.Thread(target=restart_when_writing, args=(version,), daemon=True).start()

    with probe:
        try:
            result = RecomputeJob(settings, parse_as_of(AS_OF), actors=actors, on_phase=hook).run()
            out["completed"] = True
            out["published"] = result.published
        except RecomputeError as exc:
            out["completed"] = False
            out["error"] = str(exc)
        fired.wait(60)
        store = SegmentStore(server.url)
        current = store.current()
        if current is not None and current not in reference:
            reference[current] = probe.lookup()[1]
        time.sleep(0.3)  # a few more answers after the job
    out["current"] = current
    stray = store.info(out["version"])
    out["stray_version"] = stray is not None and current != out["version"]
    out["stray_status"] = None if stray is None else (stray.status, stray.created_at)
    store.close()
    counts = probe.counts(reference)
    restart_at = out.get("restart_at", float("inf"))
    counts["previous_after_restart"] = sum(
        1 for t, v, _ in probe.answers if v == previous.version and t > restart_at
    )
    probe.close()
    out["probe"] = counts
    manifest = (
        snapshots.manifest(out["version"]) if out["version"] in snapshots.versions() else None
    )
    out["manifest_published"] = None if manifest is None else manifest["published"]
    return out


@pytest.mark.parametrize("how", HOW)
def test_redis_restarted_mid_publish(
    how: str, small_warehouse: Path, tmp_path: Path, ray_local: Any
) -> None:
    data = tmp_path / "data"
    shutil.copytree(small_warehouse / "warehouse", data / "warehouse")
    with EmbeddedRedis(persist_dir=str(tmp_path / "redis"), supervise=True) as server:
        out = publish_with_restart(str(data), server, how)
        assert server.restarts == (how == "sigkill"), server.restarts
    print(out)
    assert "down_s" in out, out  # the restart happened while the version was being written
    probe = out["probe"]
    assert probe["mixed"] == 0 and probe["unknown_versions"] == 0, out
    # the previous version was on disk before the publish began, and answers again
    assert probe["previous_after_restart"] > 0 or out["completed"], out
    assert probe["versions"][0] == out["previous"], out
    if out["completed"]:  # redis-py reconnected and the writers finished
        assert out["current"] == out["version"] and out["published"], out
        assert probe["versions"] == [out["previous"], out["version"]], out
    else:  # one clear message; the current version is unchanged, the new one discarded
        assert out["error"].startswith("publish failed"), out
        assert out["current"] == out["previous"] and probe["versions"] == [out["previous"]], out
        assert not out["stray_version"], str(out)
        assert out["manifest_published"] is False, out


def test_a_killed_persisted_server_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    """The append-only file: a SIGKILL right after the last reply loses nothing; a folder saved
    before the file existed (dump.rdb only) is loaded from its dump, then logged."""
    folder = tmp_path / "redis"
    folder.mkdir()
    with EmbeddedRedis() as plain:  # a throwaway server: no append-only file, a dump on SAVE
        client = redis.Redis(port=plain.port)
        client.set("before", "rdb")
        client.config_set("dir", str(folder))
        client.save()
        client.close()
    assert not has_append_only_file(str(folder))
    with EmbeddedRedis(persist_dir=str(folder), supervise=True) as server:
        assert has_append_only_file(str(folder))
        client = redis.Redis(port=server.port)
        assert client.get("before") == b"rdb"
        pipe = client.pipeline(transaction=False)
        for i in range(20_000):
            pipe.set(f"k{i}", i)
        pipe.execute()
        client.close()
        restart(server, "sigkill")  # no save point was reached: only the log has them
        client = redis.Redis(port=server.port)
        assert client.dbsize() == 20_001 and client.get("k19999") == b"19999"
        # an erasure's save rewrites the log too: a deleted value stays in neither file
        client.set("erased", "secret-record-4711")
        client.delete("erased")
        client.close()
        save_dataset(server.url)
        for name in ("appendonly.aof", "dump.rdb"):
            assert b"secret-record-4711" not in (folder / name).read_bytes(), name
