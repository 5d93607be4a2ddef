"""Erasing users from everything strata holds: Redis (every segment version and the real-time
keys) and the tombstone that makes the warehouse, snapshots and the next jobs drop them.

:func:`erase_users` is the one entry point of ``strata erase`` and ``DELETE /v1/users/{id}``:

1. :meth:`strata.io.segment_store.SegmentStore.erase`: the users' entries of every version
   (published, ready, writing), both storage formats;
2. :func:`erase_realtime`: one SCAN over ``{ns}:rt:*`` (on a Redis Cluster, over every
   master: redis-py's cluster ``scan_iter`` visits each primary) deletes the keys that name a
   user (live state ``u:``, overlay ``live:``, tags, action log, first-exposure markers
   ``exposed:{exp}:`` (lowering that arm's ``exposed_count`` of the user's partition, in one
   script on that partition's slot, so counts match the markers), action decisions ``idem:``
   and budget reservations ``reserve:{rule:day}:`` of the user's action keys
   ``{rule}:{user}:{instance}``; deleted in batches grouped by hash slot); the overlay index
   ``livers`` and the timers ``due`` of the user's partition lose the user's members; the
   user's partition's ``events``, ``outbox``, ``exposures`` and ``dead`` streams lose every
   entry whose payload names the user (``"user_id":<id>``): XDEL, so pending entries of a
   consumer group go with them (a worker that claims one gets nothing);
3. :meth:`strata.io.tombstones.TombstoneStore.add`, whose row (audit id, bucket, when, by whom,
   ``what`` = the JSON counts of step 1 and 2) is the audit log;
4. optionally a BGSAVE (:func:`strata.io.redis_server.save_dataset`), so that the embedded
   server's ``dump.rdb`` no longer holds the users.

Aggregates are left as they are: rule statistics and budgets (counts per rule and tier), the
segment versions' score histograms. Cost: the real-time step scans the namespace's keys once
per call (~2 s per million keys on one core), so erase many users in one call.

Redis first, tombstone second: if Redis fails half-way nothing is recorded and a retry does
the rest (every step is idempotent); an id strata holds nothing about is still tombstoned.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis

from strata.ids import bucket_of
from strata.io.redis_client import SyncClient, group_by_slot, sync_client
from strata.io.redis_server import save_dataset
from strata.io.segment_store import SegmentStore
from strata.io.tombstones import TombstoneStore
from strata.realtime.keys import RealtimeKeys, split_tag

__all__ = ["DumpNotSavedError", "ErasureError", "ErasureReport", "erase_realtime", "erase_users"]

_SCAN_COUNT = 1000
_XRANGE_COUNT = 1000
_USER_ID = re.compile(rb'"user_id"\s*:\s*(\d+)')
#: keys ``{ns}:rt:{pP}:{kind}:{user}``
_USER_KEYS = ("u", "live", "tags", "actions")
#: keys ``{ns}:rt:{pP}:idem:{key}`` and ``{ns}:rt:reserve:{rule:day}:{key}`` of an action key
#: ``{rule}:{user}:{instance}``
_ACTION_KEYS = ("idem", "reserve")

# KEYS: a first-exposure marker, its experiment's count hash. Deletes the marker and lowers
# the count of the arm it held (dropping the field at 0). Returns 1 when a marker was deleted.
_UNEXPOSE_LUA = """
local arm = redis.call('GET', KEYS[1])
if not arm then return 0 end
redis.call('DEL', KEYS[1])
if redis.call('HINCRBY', KEYS[2], arm, -1) <= 0 then redis.call('HDEL', KEYS[2], arm) end
return 1
"""


class ErasureError(RuntimeError):
    """Redis failed during an erasure: nothing was tombstoned; a retry finishes the job."""


class DumpNotSavedError(ErasureError):
    """The erasure is done and tombstoned, but saving the embedded Redis dataset failed (its
    old dump still holds the users until the next save): run the erasure again."""


@dataclass
class ErasureReport:
    """What one erasure removed.

    Attributes:
        audit_ids: the audit id of each erased user, in input order.
        removed: counts per store (``segment_entries``, ``state``, ``overlay``, ``tags``,
            ``actions``, ``exposures``, ``decisions``, ``timers``, ``stream_entries``, ...);
            the tombstone's ``what``.
        saved: the embedded Redis dataset was written to disk afterwards.
    """

    audit_ids: list[str]
    removed: dict[str, int] = field(default_factory=dict)
    saved: bool = False


def _user_of_key(rest: str, users: set[int]) -> tuple[str, int] | None:
    """``(kind, user)`` of a real-time key (without ``{ns}:rt:``) that names one of
    ``users``, else None."""
    partition, rest = split_tag(rest)
    kind, _, tail = rest.partition(":")
    if partition is not None and kind in _USER_KEYS:
        part = tail
    elif partition is not None and kind == "exposed":
        part = tail.rpartition(":")[2]
    elif kind in _ACTION_KEYS and (partition is not None) == (kind == "idem"):
        if kind == "reserve":  # the budget's tag {rule:day} first
            if not tail.startswith("{") or "}:" not in tail:
                return None
            tail = tail.split("}:", 1)[1]
        bits = tail.split(":", 2)
        part = bits[1] if len(bits) == 3 else ""
    else:
        return None
    if not part.isdigit() or int(part) not in users:
        return None
    return kind, int(part)


def _names_user(fields: dict[bytes, bytes] | None, users: set[int]) -> bool:
    if not fields:
        return False
    return any(int(m) in users for value in fields.values() for m in _USER_ID.findall(bytes(value)))


def _xdel_matching(client: SyncClient, stream: str, users: set[int]) -> int:
    """XDEL every entry of ``stream`` whose payload names one of ``users``."""
    deleted = 0
    start = "-"
    while True:
        batch: Any = client.xrange(stream, min=start, max="+", count=_XRANGE_COUNT)
        if not batch:
            return deleted
        hits = [eid for eid, fields in batch if _names_user(fields, users)]
        if hits:
            deleted += int(client.xdel(stream, *hits))
        last = batch[-1][0]
        last = last.decode() if isinstance(last, bytes) else str(last)
        start = "(" + last
        if len(batch) < _XRANGE_COUNT:
            return deleted


def _zrem_matching(client: SyncClient, key: str, users: set[int]) -> int:
    """ZREM every timer member (JSON with ``user_id``) of ``users`` from ``key``."""
    members = client.zscan_iter(key, count=_SCAN_COUNT)
    hits = [m for m, _ in members if _names_user({b"m": m}, users)]
    return int(client.zrem(key, *hits)) if hits else 0


def erase_realtime(client: SyncClient, namespace: str, user_ids: Iterable[int]) -> dict[str, int]:
    """Delete every real-time key, member and stream entry of ``user_ids`` (see the module
    docstring).

    Args:
        client: a client of either mode (``decode_responses=False``).
        namespace: the key namespace.
        user_ids: pseudonyms.

    Returns:
        counts per kind: ``state``, ``overlay``, ``tags``, ``actions``, ``exposures``,
        ``decisions`` (idem + reserve keys), ``overlay_index``, ``timers``, ``stream_entries``,
        ``outbox_entries``, ``exposure_entries``, ``dead_entries``.
    """
    keys = RealtimeKeys(namespace)
    users = {int(u) for u in user_ids}
    out = dict.fromkeys(
        (
            "state",
            "overlay",
            "tags",
            "actions",
            "exposures",
            "decisions",
            "overlay_index",
            "timers",
            "stream_entries",
            "outbox_entries",
            "exposure_entries",
            "dead_entries",
        ),
        0,
    )
    if not users:
        return out
    named = {"u": "state", "live": "overlay", "tags": "tags", "actions": "actions"}
    unexpose = client.register_script(_UNEXPOSE_LUA)
    doomed: list[bytes] = []
    for raw in client.scan_iter(match=keys.prefix + "*", count=_SCAN_COUNT):
        rest = raw.decode("utf-8", "replace")[len(keys.prefix) :]
        hit = _user_of_key(rest, users)
        if hit is None:
            continue
        kind = hit[0]
        if kind == "exposed":
            partition, name = split_tag(rest)
            experiment = name[len("exposed:") :].rpartition(":")[0]
            count_key = keys.exposed_count(experiment, partition or 0)
            out["exposures"] += int(unexpose(keys=[raw, count_key]))
        elif kind in _ACTION_KEYS:
            doomed.append(raw)
            out["decisions"] += 1
        else:
            doomed.append(raw)
            out[named[kind]] += 1
    for same_slot in group_by_slot(doomed, lambda k: k).values():
        for start in range(0, len(same_slot), _SCAN_COUNT):
            client.unlink(*same_slot[start : start + _SCAN_COUNT])
    stored = client.hget(keys.layout, "partitions")
    partitions = int(stored) if stored is not None else None
    if partitions:
        ids = np.fromiter(users, dtype=np.int64, count=len(users))
        parts = bucket_of(ids, partitions).tolist()
        for p in sorted(set(parts)):
            mine = [str(u) for u, q in zip(ids.tolist(), parts, strict=True) if q == p]
            out["overlay_index"] += int(client.zrem(keys.live_users(p), *mine))
            out["timers"] += _zrem_matching(client, keys.due(p), users)
            out["stream_entries"] += _xdel_matching(client, keys.stream(p), users)
            out["outbox_entries"] += _xdel_matching(client, keys.outbox(p), users)
            out["exposure_entries"] += _xdel_matching(client, keys.exposures(p), users)
            out["dead_entries"] += _xdel_matching(client, keys.dead(p), users)
    return out


def erase_users(
    data_root: str,
    redis_url: str | None,
    namespace: str,
    user_ids: np.ndarray,
    *,
    key: bytes,
    n_buckets: int,
    by: str,
    save: bool = False,
) -> ErasureReport:
    """Erase pseudonymous users from Redis and tombstone them (the audit log entry).

    Args:
        data_root: the data root (its tombstone file).
        redis_url: the Redis to erase from; None skips Redis (a data root without one).
        namespace: the Redis key namespace.
        user_ids: int64 pseudonyms (any already erased or unknown are tombstoned anyway).
        key: the pseudonymisation key (the audit key derives from it).
        n_buckets: the warehouse's bucket count.
        by: who erases: the API key's name or ``"cli"``.
        save: BGSAVE afterwards and wait for it (the embedded server's dump must not keep
            the users; an external server's persistence is its operator's duty).

    Returns:
        the audit ids and what was removed.

    Raises:
        ErasureError: Redis failed; nothing was tombstoned (retry: every step is idempotent).
        DumpNotSavedError: the save failed (the erasure itself is done and recorded).
    """
    ids = np.unique(np.asarray(user_ids, dtype=np.int64).ravel())
    removed: dict[str, int] = {"users": int(ids.size), "segment_entries": 0}
    if redis_url is not None:
        client = sync_client(redis_url, socket_timeout=30, socket_connect_timeout=5)
        try:
            # SegmentStore (the segment store part) takes a client of either mode
            with SegmentStore(client, namespace=namespace) as store:
                removed["segment_entries"] = store.erase(ids)
            removed.update(erase_realtime(client, namespace, ids.tolist()))
        except (redis.RedisError, OSError) as exc:
            raise ErasureError(
                f"Redis at {redis_url} failed during the erasure ({type(exc).__name__}: {exc}); "
                "nothing was tombstoned, run it again"
            ) from exc
        finally:
            client.close()
    aids = TombstoneStore(data_root).add(
        np.asarray(user_ids, dtype=np.int64).ravel(),
        key=key,
        n_buckets=n_buckets,
        by=by,
        what=json.dumps(removed, sort_keys=True),
    )
    report = ErasureReport(audit_ids=aids, removed=removed)
    if save and redis_url is not None:
        try:
            save_dataset(redis_url)
        except RuntimeError as exc:
            raise DumpNotSavedError(
                f"erased and tombstoned, but the Redis dataset was not saved ({exc}); run the "
                "erasure again so the dump on disk no longer holds the users"
            ) from exc
        report.saved = True
    return report
