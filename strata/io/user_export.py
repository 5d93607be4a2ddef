"""Everything strata holds about one user (an access request), as a JSON-ready document.

Reads through the existing stores: the warehouse rows of the user's bucket (every table), the
user's row in every retained snapshot, and in Redis the published segment record
(:meth:`strata.io.segment_store.SegmentStore.get`), the live state, live overlay, dynamic tags,
action log and first-exposure markers (key names from :class:`strata.realtime.keys.
RealtimeKeys`). Erased users' rows are not read (:mod:`strata.io.tombstones`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import redis

from strata.ids import bucket_of
from strata.io.redis_client import sync_client
from strata.io.segment_store import SegmentStore
from strata.io.snapshots import SnapshotStore
from strata.io.warehouse import TABLES, Warehouse
from strata.realtime.keys import RealtimeKeys
from strata.realtime.stream_config import StreamConfig

__all__ = ["redis_part", "warehouse_part"]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(_jsonable(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    return value


def _rows(table: pa.Table | None, user_id: int) -> list[dict[str, Any]]:
    if table is None or table.num_rows == 0:
        return []
    mine = table.filter(pc.equal(table.column("user_id"), pa.scalar(user_id, pa.int64())))
    return [_jsonable(r) for r in mine.to_pylist()]


def warehouse_part(data_root: str, user_id: int) -> dict[str, Any]:
    """The user's rows of every warehouse table and of every retained snapshot.

    Returns:
        ``{"bucket", "warehouse": {table: [rows]}, "snapshots": {version: [rows]}}``.

    Raises:
        strata.io.warehouse.WarehouseError: no warehouse at ``data_root``.
    """
    wh = Warehouse(data_root)
    bucket = int(bucket_of(user_id, wh.n_buckets))
    tables = {t: _rows(wh.read_bucket(t, bucket), user_id) for t in TABLES}
    store = SnapshotStore(data_root)
    snaps: dict[str, list[dict[str, Any]]] = {}
    erasure = wh.erasure
    for version in store.versions():
        n = store.n_buckets(version, wh.n_buckets)
        b = int(bucket_of(user_id, n))
        table = store.read_bucket(version, b, n)
        if erasure is not None and table is not None:
            table = erasure.apply(b, table)
        snaps[version] = _rows(table, user_id)
    return {"bucket": bucket, "warehouse": tables, "snapshots": snaps}


def redis_part(
    url: str, namespace: str, user_id: int, experiments: Sequence[str]
) -> dict[str, Any]:
    """The user's Redis records: published segment, live state and overlay, tags, actions,
    first-exposure arms.

    Returns:
        the records found (absent ones are None or empty), or ``{"error": message}`` when
        Redis cannot be reached.
    """
    try:
        with SegmentStore(url, namespace=namespace) as store:
            segment = store.get(user_id)
        client = sync_client(url, socket_timeout=5, socket_connect_timeout=2)
        try:
            # the user's keys live under their stream partition's hash tag
            keys = RealtimeKeys(namespace)
            stored = client.hget(keys.layout, "partitions")
            partitions = int(stored) if stored is not None else StreamConfig().partitions
            keys = keys.with_partitions(partitions)
            with client.pipeline(transaction=False) as pipe:
                pipe.get(keys.state(user_id))
                pipe.get(keys.live(user_id))
                pipe.hgetall(keys.tags(user_id))
                pipe.lrange(keys.actions(user_id), 0, -1)
                for name in experiments:
                    pipe.get(keys.exposed(name, user_id))
                state, live, tags, actions, *arms = pipe.execute()
        finally:
            client.close()
    except (redis.RedisError, OSError) as exc:
        return {"error": f"Redis at {url} unreachable: {exc}"}
    return {
        "segment": None
        if segment is None
        else {"version": segment[0], "record": _jsonable(segment[1])},
        "live_state": _json_or_text(state),
        "live_overlay": _json_or_text(live),
        "dynamic_tags": {_jsonable(k): int(v) for k, v in tags.items()},
        "actions": [_json_or_text(a) for a in actions],
        "exposures": {n: _jsonable(a) for n, a in zip(experiments, arms, strict=True) if a},
    }


def _json_or_text(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")
