"""Pseudonym key rotation end to end: a generated warehouse, local Ray (2 CPUs) and a real
embedded Redis; rotate, recompute, then look users up by raw id."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr
from typer.testing import CliRunner

from api.app import create_app
from jobs import cli, generate
from jobs.recompute import RecomputeJob
from strata.ids import chain_key, rekey_ids
from strata.io.segment_store import SegmentStore
from strata.io.snapshots import SnapshotStore
from strata.io.tombstones import TombstoneStore
from strata.io.warehouse import TABLES, Warehouse
from strata.realtime.keys import RealtimeKeys
from strata.serving.apikeys import dump_records, new_key
from strata.settings import Settings
from strata.timeutil import parse_as_of
from tests.conftest import TEST_KEY

pytestmark = pytest.mark.integration

END = dt.date(2026, 10, 1)
AS_OF = parse_as_of("2026-10-01")
NEW_LINK = "rotated-link-0123456789abcdef"
READ_KEY, READ_REC = new_key("reader", ["segments:read"])
runner = CliRunner()


def _tiers(settings: Settings) -> dict[int, str]:
    with SegmentStore(str(settings.redis_url), settings.redis_namespace) as store:
        version = store.current()
        assert version is not None
        ids = Warehouse(settings.data).read_table("users", ["user_id"]).column("user_id")
        _, found = store.get_many(np.asarray(ids.to_numpy(), dtype=np.int64))
    return {int(u): rec["tier"] for u, rec in zip(ids.to_pylist(), found, strict=True) if rec}


def _parquet_hits(root: Path, ids: set[int]) -> list[str]:
    """Every int64 column of every Parquet file under ``root`` that holds one of ``ids``."""
    wanted = np.array(sorted(ids), dtype=np.int64)
    hits = []
    for path in sorted(root.rglob("*.parquet")):
        table = pq.read_table(path, partitioning=None)
        for name, col in zip(table.column_names, table.columns, strict=True):
            if pa.types.is_int64(col.type):
                if np.isin(col.to_numpy(zero_copy_only=False), wanted).any():
                    hits.append(f"{path}:{name}")
            elif (  # import rejects keep the pseudonym as decimal text
                pa.types.is_string(col.type)
                and name == "user_id"
                and set(col.to_pylist()) & {str(u) for u in ids}
            ):
                hits.append(f"{path}:{name}")
    return hits


def _redis_values(r: Any, key: bytes) -> list[Any]:
    """Every value under one Redis key, as bytes (strings, hashes, lists, sets, streams)."""
    kind = r.type(key)
    if kind == b"string":
        return [r.get(key) or b""]
    if kind == b"hash":
        return [b for kv in r.hgetall(key).items() for b in kv]
    if kind == b"list":
        return list(r.lrange(key, 0, -1))
    if kind == b"set":
        return list(r.smembers(key))
    if kind == b"zset":
        return [m for m, _ in r.zrange(key, 0, -1, withscores=True)]
    if kind == b"stream":
        return [b for _, fields in r.xrange(key) for kv in fields.items() for b in kv]
    raise AssertionError(f"unexpected Redis type {kind!r} of {key!r}")


def _tier_map(table: Any) -> dict[int, str]:
    ids, tiers = table.column("user_id").to_pylist(), table.column("tier").to_pylist()
    return dict(zip(ids, tiers, strict=True))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_rotate_rekeys_everything_in_one_recompute(
    tmp_path: Path, ray_local: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    monkeypatch.setenv("STRATA_REDIS_URL", redis_url)
    monkeypatch.setenv("STRATA_PSEUDONYM_KEY", TEST_KEY)
    settings = Settings(data=str(root), n_buckets=8, redis_url=redis_url)
    generate.run(settings, users=300, days=60, seed=5, end=END)
    first = RecomputeJob(settings, AS_OF, actors=2).run()
    assert first.published
    truth = pq.read_table(root / "truth" / "users.parquet", columns=["user_id", "raw_user_id"])
    ids, raws = truth.column("user_id").to_pylist(), truth.column("raw_user_id").to_pylist()
    raw_of = dict(zip(ids, raws, strict=True))
    before = _tiers(settings)
    snap = SnapshotStore(str(root)).read(first.version, ["user_id", "tier"])
    snap_before = _tier_map(snap)
    old_ids = set(raw_of)
    assert len(before) > 100
    # one erased user still in the files (no compaction yet): its tombstone is re-keyed
    erased = sorted(before)[0]
    TombstoneStore(str(root)).add(np.array([erased]), key=TEST_KEY.encode(), n_buckets=8, by="cli")
    # live state the stream would have left under old ids (stream stopped), and keys without ids
    rt = RealtimeKeys(settings.redis_namespace, 8)
    rc = redis.Redis.from_url(redis_url)
    live_user = sorted(before)[1]
    rc.set(rt.state(live_user), b'{"orders": 1}')
    rc.set(rt.live(live_user), b'{"tier": "high_value"}')
    rc.rpush(rt.actions(live_user), b'{"rule": "cart_abandoned"}')
    rc.zadd(rt.live_users(0), {str(live_user): 1})
    rc.set(rt.exposed("potential_coupon_value", live_user), b"control")
    rc.set(rt.rules, b'[{"name": "cart_abandoned"}]')
    rc.hset(rt.budget("cart_abandoned", "2026-10-01"), "count", 3)
    rc.hincrby(rt.stats(0), "cart_abandoned|unknown|fired", 2)  # a partition's statistics
    key_file = tmp_path / "new.key"
    key_file.write_text(NEW_LINK + "\n")
    args = ["rotate-key", "--data", str(root), "--new-key-file", str(key_file),
            "--as-of", "2026-10-01", "--chain-out", str(tmp_path / "chain.key")]  # fmt: skip

    # a running experiment refuses without --force
    refused = runner.invoke(cli.app, args)
    assert refused.exit_code == 2 and "--force" in refused.output

    # a failure before the manifest commit leaves the old data root as it was
    snapshot = _files(root / "warehouse") | _files(root / "snapshots") | _files(root / "truth")
    real_commit = Warehouse.commit

    def failing(self: Warehouse, result: Any, source: str, *a: Any, **k: Any) -> None:
        if source == "rotate-key":
            raise RuntimeError("injected failure before the commit")
        real_commit(self, result, source, *a, **k)

    monkeypatch.setattr(Warehouse, "commit", failing)
    failed = runner.invoke(cli.app, [*args, "--force"])
    assert failed.exit_code != 0 and "injected" in repr(failed.exception)
    monkeypatch.setattr(Warehouse, "commit", real_commit)
    after_fail = _files(root / "warehouse") | _files(root / "snapshots") | _files(root / "truth")
    assert after_fail == snapshot
    assert not (root / "rekey").exists() and not (tmp_path / "chain.key").exists()
    assert Warehouse(str(root)).read_table("events").num_rows > 0

    result = runner.invoke(cli.app, [*args, "--force"])
    assert result.exit_code == 0, result.output
    assert NEW_LINK not in result.output and TEST_KEY not in result.output
    chain = (tmp_path / "chain.key").read_text().strip()
    assert chain == chain_key([TEST_KEY.encode(), NEW_LINK.encode()]).decode()
    olds = sorted(old_ids)
    new_of = dict(zip(olds, rekey_ids(np.array(olds), NEW_LINK.encode()).tolist(), strict=True))

    # every user's tier is the same under the new id; the erased user is gone
    new_settings = Settings(data=str(root), n_buckets=8, redis_url=redis_url,
                            pseudonym_key=SecretStr(chain))  # fmt: skip
    after = _tiers(new_settings)
    want = {new_of[u]: t for u, t in before.items() if u != erased}
    assert after == want
    stones = TombstoneStore(str(root))
    assert stones.entries().num_rows == 1
    assert stones.erased_mask(
        int(stones.entries().column("bucket")[0].as_py()), np.array([new_of[erased]]),
        chain.encode(),
    ).all()  # fmt: skip

    # the retained snapshot (the next recompute's previous tiers) is re-keyed row for row
    snap = SnapshotStore(str(root)).read(first.version, ["user_id", "tier"])
    snap_after = _tier_map(snap)
    assert snap_after == {new_of[u]: t for u, t in snap_before.items() if u != erased}

    # a lookup by raw id through the API (new chain) answers the same tier
    api = Settings(data=str(root), redis_url=redis_url, pseudonym_key=SecretStr(chain),
                   api_keys=dump_records([READ_REC]))  # fmt: skip
    with TestClient(create_app(api)) as c:
        for uid in sorted(before)[1:6]:
            r = c.get(f"/v1/users/{raw_of[uid]}/segment",
                      headers={"Authorization": f"Bearer {READ_KEY}"})  # fmt: skip
            assert r.status_code == 200, r.text
            assert r.json()["tier"] == before[uid]

    # no old id in any Parquet file (nor as text in a JSON file), nor in any Redis key or value
    assert _parquet_hits(root, old_ids) == []
    texts = {str(u) for u in old_ids}
    for path in root.rglob("*.json"):
        body = path.read_text()
        assert not [t for t in texts if t in body], path
    assert rc.get(rt.rules) and rc.hget(rt.budget("cart_abandoned", "2026-10-01"), "count") == b"3"
    assert rc.hget(rt.stats(0), "cart_abandoned|unknown|fired") == b"2"
    assert not rc.exists(rt.state(live_user), rt.live(live_user), rt.actions(live_user))
    with SegmentStore(rc, settings.redis_namespace) as store:
        assert store.versions() == [store.current()]
    needles = [str(u).encode() for u in old_ids]
    needles += [int(u).to_bytes(8, e) for u in old_ids for e in ("little", "big")]
    for key in rc.scan_iter(match=f"{settings.redis_namespace}:*"):
        blob = key + b"|".join(_redis_values(rc, key))
        assert not any(n in blob for n in needles), key
    wh = Warehouse(str(root))
    assert all(wh.read_table(t).num_rows >= 0 for t in TABLES)
    assert wh.manifest["key_rotation"]["finished"] is True
