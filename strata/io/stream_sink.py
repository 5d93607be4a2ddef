"""The warehouse sink of the live streams: partition streams, the outbox and the exposures
stream into bucketed Parquet.

:class:`StreamSink` is consumer group :data:`~strata.realtime.keys.SINK_GROUP` on every
partition stream (``{ns}:rt:{pP}:events``), on each partition's outbox
(``{ns}:rt:{pP}:outbox``, the actions the rule workers issued to its users) and on each
partition's exposures stream (``{ns}:rt:{pP}:exposures``, its users' first exposures to
experiments). It reads entries with XREADGROUP in batches, converts the wire
events (:mod:`strata.realtime.wire`) to :data:`~strata.schema.EVENTS_SCHEMA` rows, the
outbox's actions to :data:`~strata.schema.ACTIONS_SCHEMA` rows and the exposures to
:data:`~strata.schema.EXPOSURES_SCHEMA` rows, buffers them and commits them all into the
warehouse like an import (one part per touched bucket and table, one atomic manifest replace,
``source="stream"``) every ``sink_interval_s`` seconds or ``sink_max_rows`` rows.

Exactly once into the warehouse, across crashes:

1. The commit writes, in the same atomic manifest replace as the parts, the last stream entry
   id of each partition it covers (the *watermark*, ``manifest["stream_watermarks"][ns]``),
   of each outbox (``manifest["outbox_watermarks"][ns][P]``) and of each exposures stream
   (``manifest["exposure_watermarks"][ns][P]``).
2. Only then are the entries XACKed and the watermark copied to ``{ns}:rt:sink`` (fields
   ``P``, ``outbox:P``, ``exposures:P``).
3. On start, and again after any error, the sink first re-reads the group's pending entries
   (its own, after claiming any left by another consumer name; after an error also those of
   a read whose reply was lost) and acks without sinking every entry at or below the
   manifest's watermark; the rest are sunk again. So a crash before the commit loses nothing
   (the entries are still pending) and a crash between the commit and the XACK duplicates
   nothing (the watermark covers them). The same check applies to every entry read, so a
   Redis restored from an older snapshot that redelivers entries duplicates nothing either.

Entries that fail to decode (not JSON, missing ``user_id``/``event_type``/``ts``, unknown
fields or event types, values the schema cannot hold; for the outbox: no ``user_id``, ``rule``,
``action``, ``key`` or issue time; for exposures: no ``experiment``, ``arm``, ``user_id``,
``ts`` or a ``source`` other than :data:`~strata.schema.EXPOSURE_SOURCES`) go to the dead-letter
stream of their partition, ``{ns}:rt:{pP}:dead``, with the reason, acked in the same MULTI (one
hash slot, also on a Redis Cluster), so they are never lost and never block the partition.
Internal entries (:func:`~strata.realtime.wire.is_internal`) are acked and skipped.

The sink also trims each partition stream (XTRIM MINID) below the oldest entry any consumer
group still needs (its oldest pending entry, else the one after its last-delivered id), and
only once the rule workers' group exists, so ``XLEN`` is the backlog that the API's
backpressure measures. The outbox is read by delivery systems outside strata too: the sink
removes only entries at or below its committed outbox watermark, and always keeps the newest
``outbox_keep`` entries. The exposures stream has no other reader (the first-exposure markers
``{ns}:rt:{pP}:exposed:...`` dedupe, not the stream): the sink removes every entry at or below its
committed exposures watermark.

Each commit adds a small file to every bucket (of each table) it touches; the sink merges them
in levels (``merge_fan_in`` files of one level into one of the next), so files per bucket and the
manifest stay bounded between two ``strata compact`` runs.

One sink per namespace and warehouse. Its commits share the warehouse with imports and
compaction through :meth:`strata.io.warehouse.Warehouse.commit`'s lock (local filesystems
only; on object stores they must not overlap).
"""

from __future__ import annotations

import datetime as dt
import logging
import posixpath
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import orjson
import pyarrow as pa
import redis

from strata.io.redis_client import SyncClient, consumer_client, xreadgroup_many
from strata.io.warehouse import Warehouse, WarehouseError, WriteResult, read_parts
from strata.realtime.keys import (
    ENTRY_FIELD,
    EXPOSURE_FIELD,
    OUTBOX_FIELD,
    SINK_GROUP,
    WORKER_GROUP,
    RealtimeKeys,
    split_tag,
)
from strata.realtime.stream_config import StreamConfig
from strata.realtime.wire import ENVELOPE_KEYS, EVENT_FIELDS, decode_event, is_internal
from strata.schema import (
    ACTIONS_SCHEMA,
    EVENT_TYPES,
    EVENTS_SCHEMA,
    EXPOSURE_SOURCES,
    EXPOSURES_SCHEMA,
    TABLE_SCHEMAS,
    conform,
)
from strata.timeutil import to_epoch_ms

__all__ = [
    "EXPOSURE_WATERMARKS_KEY",
    "OUTBOX_WATERMARKS_KEY",
    "WATERMARKS_KEY",
    "SinkStats",
    "StreamId",
    "StreamSink",
    "action_row",
    "actions_table",
    "events_table",
    "exposure_row",
    "exposures_table",
    "format_id",
    "manifest_exposure_watermark",
    "manifest_outbox_watermark",
    "manifest_watermarks",
    "parse_id",
]

log = logging.getLogger(__name__)

#: top-level manifest key: {namespace: {partition: last committed stream entry id}}
WATERMARKS_KEY = "stream_watermarks"
#: top-level manifest key: {namespace: {partition: last committed outbox entry id}}
OUTBOX_WATERMARKS_KEY = "outbox_watermarks"
#: top-level manifest key: {namespace: {partition: last committed exposures entry id}}
EXPOSURE_WATERMARKS_KEY = "exposure_watermarks"
#: a stream entry id as (milliseconds, sequence): ordered like Redis orders them
StreamId = tuple[int, int]
#: the wire schema as Arrow reads it: the warehouse's columns with ``ts`` still epoch ms
_WIRE_SCHEMA = EVENTS_SCHEMA.set(
    EVENTS_SCHEMA.get_field_index("ts"), pa.field("ts", pa.int64(), nullable=False)
)
#: the actions schema as Arrow reads the rows of :func:`action_row` (``ts`` epoch ms)
_ACTIONS_WIRE_SCHEMA = ACTIONS_SCHEMA.set(
    ACTIONS_SCHEMA.get_field_index("ts"), pa.field("ts", pa.int64(), nullable=False)
)
#: the exposures schema as Arrow reads the rows of :func:`exposure_row` (``ts`` epoch ms)
_EXPOSURES_WIRE_SCHEMA = EXPOSURES_SCHEMA.set(
    EXPOSURES_SCHEMA.get_field_index("ts"), pa.field("ts", pa.int64(), nullable=False)
)
_EXPOSURE_SOURCES = frozenset(EXPOSURE_SOURCES)
_ALLOWED_KEYS = frozenset(EVENT_FIELDS) | ENVELOPE_KEYS
_EVENT_TYPES = frozenset(EVENT_TYPES)
_NO_ID: StreamId = (0, 0)
_MAX_PAYLOAD = 4096  # bytes of a bad entry kept in its dead letter
_RETRY_S = 1.0
#: what the sink waits out and retries: Redis or the storage unreachable for a while
_OUTAGES = (redis.ConnectionError, redis.TimeoutError, OSError, WarehouseError)
_TRIM_PAGE = 10_000  # entries one trim script removes at most (Redis stays responsive)
#: the file-merging tables (the sink's parts of each are merged separately)
_SINK_TABLES = ("events", "actions", "exposures")

# KEYS: the outbox (or the exposures stream). ARGV: the committed watermark (entries at or
# below it may go), entries to keep, most entries removed. Removes the oldest entries, none
# above the watermark, leaving at least ``keep``; returns how many it removed.
_TRIM_COMMITTED_LUA = """
local excess = redis.call('XLEN', KEYS[1]) - tonumber(ARGV[2])
if excess <= 0 then return 0 end
excess = math.min(excess, tonumber(ARGV[3]))
local rows = redis.call('XRANGE', KEYS[1], '-', ARGV[1], 'COUNT', excess)
if #rows == 0 then return 0 end
local last = rows[#rows][1]
local dash = string.find(last, '-', 1, true)
local seq = tonumber(string.sub(last, dash + 1))
local after = string.sub(last, 1, dash - 1) .. '-' .. string.format('%d', seq + 1)
return redis.call('XTRIM', KEYS[1], 'MINID', after)
"""
#: the sink's part files: ``part-stream-...`` (level 0, one per commit) and
#: ``part-streamL{k}-...`` (level k: ``merge_fan_in`` parts of level k - 1 merged)
_PART_RE = re.compile(r"^part-stream(?:L(\d+))?-")


class _Superseded(Exception):
    """The parts to merge left the manifest meanwhile (a compaction replaced them)."""


def parse_id(entry_id: bytes | str) -> StreamId:
    """``b"1764547200000-3"`` as ``(1764547200000, 3)``."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def format_id(entry_id: StreamId) -> str:
    """``(1764547200000, 3)`` as ``"1764547200000-3"``."""
    return f"{entry_id[0]}-{entry_id[1]}"


def manifest_watermarks(manifest: Mapping[str, Any], namespace: str) -> dict[int, StreamId]:
    """The sink's committed watermark per partition of ``namespace``, from a manifest."""
    marks = manifest.get(WATERMARKS_KEY, {}).get(namespace, {})
    return {int(p): parse_id(i) for p, i in marks.items()}


def _side_mark(manifest: Mapping[str, Any], key: str, namespace: str, partition: int) -> StreamId:
    marks = manifest.get(key, {}).get(namespace)
    # a single id: the layout before per-partition outboxes (that stream is not read any more)
    mark = marks.get(str(partition)) if isinstance(marks, Mapping) else None
    return parse_id(mark) if mark else _NO_ID


def manifest_outbox_watermark(
    manifest: Mapping[str, Any], namespace: str, partition: int
) -> StreamId:
    """The sink's committed watermark of ``partition``'s outbox (``(0, 0)``: none yet)."""
    return _side_mark(manifest, OUTBOX_WATERMARKS_KEY, namespace, partition)


def manifest_exposure_watermark(
    manifest: Mapping[str, Any], namespace: str, partition: int
) -> StreamId:
    """The sink's committed watermark of ``partition``'s exposures stream (``(0, 0)``: none)."""
    return _side_mark(manifest, EXPOSURE_WATERMARKS_KEY, namespace, partition)


def action_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """An outbox payload as a row of :data:`~strata.schema.ACTIONS_SCHEMA` (``ts`` epoch ms).

    The payload is ``{"rule", "action", "params", "key", "issued_at", "trigger", "user_id",
    "issued_ms"}`` (:func:`strata.io.realtime_store.outbox_records`); ``ts`` is ``issued_ms``,
    else ``issued_at`` (ISO-8601 with offset). ``params`` and ``trigger`` become JSON text;
    ``coupon_id`` and ``value_cny`` come from a coupon's params. Keys it does not know are
    ignored (a newer writer may add some).

    Raises:
        ValueError: not an object, or a required key is missing or of the wrong type.
    """
    if not isinstance(record, Mapping):
        raise ValueError("outbox entry is not a JSON object")
    missing = [k for k in ("user_id", "rule", "action", "key") if record.get(k) is None]
    if record.get("issued_ms") is None and record.get("issued_at") is None:
        missing.append("issued_at")
    if missing:
        raise ValueError(f"outbox entry lacks {missing}")
    user = record["user_id"]
    if not isinstance(user, int) or isinstance(user, bool):
        raise ValueError(f"outbox entry's user_id is not an integer: {user!r}")
    for k in ("rule", "action", "key"):
        if not isinstance(record[k], str):
            raise ValueError(f"outbox entry's {k} is not text: {record[k]!r}")
    ts = record.get("issued_ms")
    if ts is None:
        try:
            issued = dt.datetime.fromisoformat(str(record["issued_at"]))
        except ValueError as exc:
            raise ValueError(f"outbox entry's issued_at is not ISO-8601: {exc}") from None
        if issued.tzinfo is None:
            raise ValueError("outbox entry's issued_at has no UTC offset")
        ts = to_epoch_ms(issued)
    elif not isinstance(ts, int) or isinstance(ts, bool):
        raise ValueError(f"outbox entry's issued_ms is not an integer: {ts!r}")
    params = record.get("params")
    if params is not None and not isinstance(params, Mapping):
        raise ValueError("outbox entry's params is not an object")
    params = params or {}
    coupon = record["action"] == "coupon"
    trigger = record.get("trigger")
    return {
        "user_id": user,
        "ts": ts,
        "rule": record["rule"],
        "action": record["action"],
        "key": record["key"],
        "params": orjson.dumps(params, option=orjson.OPT_SORT_KEYS).decode(),
        "trigger": None
        if trigger is None
        else orjson.dumps(trigger, option=orjson.OPT_SORT_KEYS).decode(),
        "coupon_id": params.get("coupon_id") if coupon else None,
        "value_cny": params.get("value_cny") if coupon else None,
    }


def actions_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Rows of :func:`action_row` as warehouse rows (:data:`~strata.schema.ACTIONS_SCHEMA`).

    Raises:
        pyarrow.ArrowException: a value the schema cannot hold (e.g. text as ``value_cny``).
    """
    return conform(pa.Table.from_pylist(list(rows), schema=_ACTIONS_WIRE_SCHEMA), ACTIONS_SCHEMA)


def exposure_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """An exposures stream payload as a row of :data:`~strata.schema.EXPOSURES_SCHEMA`.

    The payload is ``{"experiment", "arm", "user_id", "ts", "source"}`` (``user_id`` the
    pseudonymised id, ``ts`` epoch ms, ``source`` one of
    :data:`~strata.schema.EXPOSURE_SOURCES`); the row keeps ``ts`` as epoch ms. Keys it does
    not know are ignored (a newer writer may add some; the table's columns stay fixed).

    Raises:
        ValueError: not an object, or a required key is missing, empty or of the wrong type.
    """
    if not isinstance(record, Mapping):
        raise ValueError("exposure entry is not a JSON object")
    missing = [k for k in ("experiment", "arm", "user_id", "ts", "source") if record.get(k) is None]
    if missing:
        raise ValueError(f"exposure entry lacks {missing}")
    for k in ("user_id", "ts"):
        value = record[k]
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"exposure entry's {k} is not an integer: {value!r}")
    for k in ("experiment", "arm"):
        if not isinstance(record[k], str) or not record[k]:
            raise ValueError(f"exposure entry's {k} is not a non-empty text: {record[k]!r}")
    if record["source"] not in _EXPOSURE_SOURCES:
        raise ValueError(
            f"exposure entry's source {record['source']!r} is not one of {list(EXPOSURE_SOURCES)}"
        )
    return {
        "user_id": record["user_id"],
        "ts": record["ts"],
        "experiment": record["experiment"],
        "arm": record["arm"],
        "source": record["source"],
    }


def exposures_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Rows of :func:`exposure_row` as warehouse rows (:data:`~strata.schema.EXPOSURES_SCHEMA`).

    Raises:
        pyarrow.ArrowException: a value the schema cannot hold (e.g. a user id over int64).
    """
    table = pa.Table.from_pylist(list(rows), schema=_EXPOSURES_WIRE_SCHEMA)
    return conform(table, EXPOSURES_SCHEMA)


def events_table(events: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Decoded wire events as warehouse rows (:data:`~strata.schema.EVENTS_SCHEMA`).

    Envelope keys are dropped and ``ts`` (epoch ms) becomes a timestamp.

    Raises:
        pyarrow.ArrowException: a value the schema cannot hold (e.g. text as ``amount_cny``).
    """
    # with a schema, from_pylist takes its columns (missing keys are null, envelope ignored)
    return conform(pa.Table.from_pylist(list(events), schema=_WIRE_SCHEMA), EVENTS_SCHEMA)


def _check_fields(event: Mapping[str, Any]) -> None:
    unknown = event.keys() - _ALLOWED_KEYS
    if unknown:
        raise ValueError(f"fields not in the events schema: {sorted(unknown)}")
    if event["event_type"] not in _EVENT_TYPES:
        raise ValueError(f"unknown event_type {event['event_type']!r}")


@dataclass
class SinkStats:
    """What a poll (or a whole run) did; ``+`` adds two of them."""

    #: stream entries read (new and re-read pending ones)
    read: int = 0
    #: event rows buffered for the warehouse
    buffered: int = 0
    #: action rows (from the outbox) buffered for the warehouse
    actions_buffered: int = 0
    #: exposure rows (from the exposures stream) buffered for the warehouse
    exposures_buffered: int = 0
    #: internal entries (campaigns) acked and skipped
    internal: int = 0
    #: entries at or below the committed watermark, acked and skipped (already in the warehouse)
    already_committed: int = 0
    #: entries moved to the dead-letter stream
    dead: int = 0
    #: event rows committed into the warehouse
    committed: int = 0
    #: action rows committed into the warehouse's ``actions`` table
    actions_committed: int = 0
    #: exposure rows committed into the warehouse's ``exposures`` table
    exposures_committed: int = 0
    #: warehouse commits
    commits: int = 0
    #: partition stream entries removed by trimming
    trimmed: int = 0
    #: outbox entries removed by trimming
    outbox_trimmed: int = 0
    #: exposures stream entries removed by trimming
    exposures_trimmed: int = 0
    #: the sink's small part files merged into bigger ones
    merged: int = 0

    def __add__(self, other: SinkStats) -> SinkStats:
        return SinkStats(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )

    def to_json(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def count(self, what: str, table: str, n: int) -> None:
        """Add ``n`` to the ``what`` (``buffered``/``committed``) counter of ``table``'s rows:
        ``buffered`` for events, ``actions_buffered`` for actions, and so on."""
        name = what if table == "events" else f"{table}_{what}"
        setattr(self, name, getattr(self, name) + n)


@dataclass(frozen=True)
class _Side:
    """A partition's stream besides its events that the sink copies into a table of its own,
    with a watermark of its own: the partition's outbox into ``actions``, its exposures stream
    into ``exposures``."""

    #: ``outbox`` or ``exposures``: its ``{kind}_trimmed`` counter
    kind: str
    partition: int
    #: its field in ``{ns}:rt:sink`` and its name in logs: ``{kind}:{partition}``
    name: str
    stream: str
    entry_field: bytes
    table: str
    #: top-level manifest key of its committed watermark: ``{namespace: {partition: id}}``
    manifest_key: str
    #: a decoded payload as a row (raises ValueError when it cannot be one)
    to_row: Callable[[Any], dict[str, Any]]
    #: rows as warehouse rows of ``table``
    to_table: Callable[[Sequence[Mapping[str, Any]]], pa.Table]
    #: newest entries trimming always keeps (for readers outside strata)
    keep: int


@dataclass
class _Buffer:
    """Rows read but not yet committed, and the entry ids to ack after the commit."""

    #: table name -> its buffered rows
    tables: dict[str, list[pa.Table]] = field(default_factory=dict)
    #: table name -> how many rows are buffered
    rows: dict[str, int] = field(default_factory=dict)
    #: stream key -> ids to XACK after the commit
    ack: dict[str, list[bytes]] = field(default_factory=dict)
    #: partition -> highest id handled (the watermark this commit records)
    last: dict[int, StreamId] = field(default_factory=dict)
    #: side stream name -> its highest id handled
    side_last: dict[str, StreamId] = field(default_factory=dict)
    since: float = 0.0

    def add(self, table_name: str, table: pa.Table) -> None:
        self.tables.setdefault(table_name, []).append(table)
        self.rows[table_name] = self.rows.get(table_name, 0) + table.num_rows

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    def __bool__(self) -> bool:
        return bool(self.ack)


class StreamSink:
    """Copies every partition stream's events, the outbox's actions and the exposures
    stream's first exposures into the warehouse, exactly once.

    Args:
        client: a client of either mode (``decode_responses=False``) or a ``redis://`` URL
            (see :func:`strata.io.redis_client.consumer_client`).
        data_root: the warehouse's data root (created with ``n_buckets`` when missing).
        config: stream settings (partitions, batch size, block, sink interval and rows,
            outbox entries to keep).
        namespace: Redis key namespace (``Settings.redis_namespace``).
        n_buckets: buckets of a warehouse created here (an existing one keeps its own).
        consumer: this sink's consumer name in the sink group.
        merge_fan_in: a bucket's part files from the sink are merged, ``merge_fan_in`` of one
            level into one of the next (an LSM-style tiering), so that committing every few
            seconds keeps a bounded number of files per bucket and a bounded manifest.
        socket_timeout_s: socket timeout of a client created from a URL (at least
            ``block_ms`` + 5 s, so a blocked read never times out).
    """

    def __init__(
        self,
        client: SyncClient | str,
        data_root: str,
        config: StreamConfig,
        namespace: str = "strata",
        n_buckets: int = 256,
        *,
        consumer: str = "sink",
        merge_fan_in: int = 16,
        socket_timeout_s: float = 10.0,
    ) -> None:
        if merge_fan_in < 2:
            raise ValueError("merge_fan_in must be at least 2")
        if isinstance(client, str):
            self._redis = consumer_client(
                client,
                socket_timeout=max(socket_timeout_s, config.block_ms / 1000 + 5),
                socket_connect_timeout=2.0,
            )
            self._owns_client = True
        else:
            self._redis = client
            self._owns_client = False
        self.keys = RealtimeKeys(namespace)
        self.namespace = namespace
        self.config = config
        self.n_buckets = n_buckets
        self.consumer = consumer
        self.merge_fan_in = merge_fan_in
        self.warehouse = Warehouse(data_root)
        self.totals = SinkStats()
        self.partitions = 0
        self._started = False
        self._watermarks: dict[int, StreamId] = {}
        #: the partitions' outboxes and exposures streams (known once started)
        self._sides: tuple[_Side, ...] = ()
        self._side_of: dict[str, _Side] = {}
        #: side stream name -> its committed watermark
        self._side_marks: dict[str, StreamId] = {}
        self._buffer = _Buffer()
        self._trim_committed = self._redis.register_script(_TRIM_COMMITTED_LUA)
        self._last_trim = 0.0
        #: test hook: called after the manifest commit, before the XACK (simulates a crash)
        self.after_commit_hook: Callable[[], None] | None = None

    # ------------------------------------------------------------------ start
    def start(self) -> SinkStats:
        """Open (or create) the warehouse, fix the partition count, create the groups and
        recover this sink's pending entries. Called by the first :meth:`poll_once`."""
        self.warehouse.open_or_create(self.n_buckets)
        self.warehouse.reload()
        self._watermarks = manifest_watermarks(self.warehouse.manifest, self.namespace)
        self._redis.hsetnx(self.keys.layout, "partitions", self.config.partitions)
        self.partitions = int(self._redis.hget(self.keys.layout, "partitions") or 0)
        if self.partitions < 1:
            raise ValueError(f"{self.keys.layout} partitions is not a positive count")
        self._sides = self._make_sides()
        self._side_of = {side.stream: side for side in self._sides}
        self._side_marks = {
            side.name: self._manifest_mark(self.warehouse.manifest, side) for side in self._sides
        }
        self._ensure_groups()
        self._warn_legacy()
        self._started = True
        return self._recover()

    def _warn_legacy(self) -> None:
        """Say so when streams of the untagged layout still hold entries: they are not read."""
        old = self.keys.legacy_streams(self.partitions)
        with self._redis.pipeline(transaction=False) as pipe:
            for name in old:
                pipe.xlen(name)
            lengths = pipe.execute(raise_on_error=False)
        left = {n: int(x) for n, x in zip(old, lengths, strict=True) if isinstance(x, int) and x}
        if left:
            log.warning(
                "stream sink: streams of the old key layout still hold entries that nothing "
                "reads any more (drain them with the previous version): %s",
                left,
            )

    def _make_sides(self) -> tuple[_Side, ...]:
        keys, keep = self.keys, self.config.outbox_keep
        outboxes = (
            _Side("outbox", p, f"outbox:{p}", keys.outbox(p), OUTBOX_FIELD, "actions",
                  OUTBOX_WATERMARKS_KEY, action_row, actions_table, keep)
            for p in range(self.partitions)
        )  # fmt: skip
        exposures = (
            _Side("exposures", p, f"exposures:{p}", keys.exposures(p), EXPOSURE_FIELD,
                  "exposures", EXPOSURE_WATERMARKS_KEY, exposure_row, exposures_table, 0)
            for p in range(self.partitions)
        )  # fmt: skip
        return (*outboxes, *exposures)

    def _streams(self) -> list[str]:
        """Every stream the sink reads: the partitions, then their outboxes and exposures."""
        partitions = (self.keys.stream(p) for p in range(self.partitions))
        return [*partitions, *(side.stream for side in self._sides)]

    def _manifest_mark(self, manifest: Mapping[str, Any], side: _Side) -> StreamId:
        """``side``'s committed watermark in ``manifest`` (``(0, 0)``: none yet)."""
        return _side_mark(manifest, side.manifest_key, self.namespace, side.partition)

    def _ensure_groups(self) -> None:
        for stream in self._streams():
            try:  # from the start: the outbox's (exposures') earlier entries belong there too
                self._redis.xgroup_create(stream, SINK_GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def _recover(self) -> SinkStats:
        """Claim the group's pending entries and sink (or skip) them in id order."""
        stats = SinkStats()
        for stream in self._streams():
            cursor: bytes | str = "0-0"
            while True:  # entries left by another consumer name become this one's
                reply = self._redis.xautoclaim(
                    stream, SINK_GROUP, self.consumer, 0, cursor, count=self.config.batch_size
                )
                cursor = reply[0]
                if parse_id(cursor) == _NO_ID:
                    break
            after = "0"
            while True:
                got = self._read({stream: after})
                entries = got[0][1] if got else []
                if not entries:
                    break
                after = entries[-1][0]
                stats = stats + self._ingest(stream, entries)
                if self._buffer.total_rows >= self.config.sink_max_rows:
                    stats = stats + self.flush()
        if stats.read:
            log.info("stream sink recovered %d pending entries: %s", stats.read, stats.to_json())
        return stats

    # ------------------------------------------------------------------ the loop
    def poll_once(self) -> SinkStats:
        """Read one batch of new entries from every partition, commit when due, trim.

        Blocks at most ``block_ms`` (less when a commit falls due sooner).
        """
        started = SinkStats() if self._started else self.start()
        stats = SinkStats()
        block_ms = self.config.block_ms
        if self._buffer:
            due_s = self._buffer.since + self.config.sink_interval_s - time.monotonic()
            block_ms = max(1, min(block_ms, int(due_s * 1000)))
        streams = dict.fromkeys(self._streams(), ">")
        for stream, entries in self._read(streams, block_ms):
            stats = stats + self._ingest(_text(stream), entries)
        if self._flush_due():
            stats = stats + self.flush()
        elif time.monotonic() - self._last_trim >= self.config.sink_interval_s:
            stats = stats + self.trim()
        return started + stats

    def run(self, stop: threading.Event) -> SinkStats:
        """Poll until ``stop`` is set, then commit what is buffered. Survives Redis and
        storage outages (retries each second, keeping its buffer); returns the run's totals."""
        while not stop.is_set():
            try:
                self.poll_once()
            except BaseException as exc:
                # after any error, start again from this sink's pending entries: a read whose
                # reply was lost (Redis killed after persisting it) left some it never saw
                self._started = False
                if isinstance(exc, redis.ResponseError) and "NOGROUP" in str(exc):
                    # a stream was deleted (Redis flushed): the groups are created again
                    log.warning("stream sink: %s; recreating the consumer groups", exc)
                elif isinstance(exc, _OUTAGES):
                    log.warning("stream sink: %s; retrying in %.0f s", exc, _RETRY_S)
                    stop.wait(_RETRY_S)
                else:  # anything else ends this run; the next one re-reads the pending first
                    raise
        for attempt in range(3):
            try:
                self.flush()
                break
            except _OUTAGES as exc:
                log.warning("stream sink: final commit failed (%s), attempt %d", exc, attempt)
                time.sleep(_RETRY_S)
        return self.totals

    def _read(self, streams: dict[str, str], block_ms: int | None = None) -> list[Any]:
        """XREADGROUP: ``[(stream, [(entry id, {field: value}), ...]), ...]`` (RESP2; one read
        per stream on a cluster, see :func:`strata.io.redis_client.xreadgroup_many`)."""
        return xreadgroup_many(
            self._redis, SINK_GROUP, self.consumer, streams, self.config.batch_size, block_ms
        )

    def _partition_of_key(self, stream: str) -> int:
        partition, _ = split_tag(stream[len(self.keys.prefix) :])
        if partition is None:
            raise ValueError(f"{stream} is not a partition stream")
        return partition

    def _flush_due(self) -> bool:
        if not self._buffer:
            return False
        return (
            self._buffer.total_rows >= self.config.sink_max_rows
            or time.monotonic() - self._buffer.since >= self.config.sink_interval_s
        )

    # ------------------------------------------------------------------ entries
    def _ingest(self, stream: str, entries: Sequence[tuple[Any, Any]]) -> SinkStats:
        """Decode one stream's entries (in id order) into the buffer; dead letters go out at
        once, entries already committed are acked with the next commit."""
        stats = SinkStats(read=len(entries))
        buf = self._buffer
        side = self._side_of.get(stream)
        if side is not None:
            partition = side.partition
            committed = self._side_marks.get(side.name, _NO_ID)
            buffered = buf.side_last.get(side.name, _NO_ID)
            entry_field = side.entry_field
        else:
            partition = self._partition_of_key(stream)
            committed = self._watermarks.get(partition, _NO_ID)
            buffered = buf.last.get(partition, _NO_ID)
            entry_field = ENTRY_FIELD
        rows: list[dict[str, Any]] = []
        row_ids: list[bytes] = []
        handled: list[bytes] = []
        dead: list[tuple[bytes, str, bytes]] = []
        top = buffered
        for entry_id, entry in entries:
            if entry_id is None:
                continue  # a pending entry deleted from the stream, as XAUTOCLAIM shows it
            sid = parse_id(entry_id)
            if not entry:  # deleted while pending (erasure): nothing left to sink
                handled.append(entry_id)
                continue
            if sid <= committed:
                stats.already_committed += 1
                handled.append(entry_id)
                continue
            if sid <= buffered:
                continue  # re-read while still buffered (groups recreated): acked at commit
            top = max(top, sid)
            raw = entry.get(entry_field)
            try:
                if raw is None:
                    raise ValueError(f"entry has no {entry_field.decode()!r} field")
                if side is not None:
                    row = side.to_row(orjson.loads(raw))
                else:
                    row = decode_event(raw)
                    if is_internal(row):
                        stats.internal += 1
                        handled.append(entry_id)
                        continue
                    _check_fields(row)
            except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
                dead.append((entry_id, str(exc), raw or b""))
                continue
            rows.append(row)
            row_ids.append(entry_id)
        if rows:
            table_name = "events" if side is None else side.table
            to_table = events_table if side is None else side.to_table
            table, bad = self._convert(rows, row_ids, table_name, to_table)
            dead.extend(bad)
            bad_ids = {d[0] for d in bad}
            handled.extend(i for i in row_ids if i not in bad_ids)
            if table.num_rows:
                buf.add(table_name, table)
                stats.count("buffered", table_name, table.num_rows)
        if dead:
            self._dead_letter(stream, partition, dead, side is not None)
            stats.dead += len(dead)
        if handled:
            if not buf:
                buf.since = time.monotonic()
            buf.ack.setdefault(stream, []).extend(handled)
        if top > buffered:
            if side is not None:
                buf.side_last[side.name] = top
            else:
                buf.last[partition] = top
        self.totals = self.totals + stats
        return stats

    def _convert(
        self,
        rows: list[dict[str, Any]],
        ids: list[bytes],
        table_name: str,
        to_table: Callable[[Sequence[Mapping[str, Any]]], pa.Table],
    ) -> tuple[pa.Table, list[tuple[bytes, str, bytes]]]:
        """Rows as one table of ``table_name``; when the batch does not convert, row by row to
        find the bad."""
        try:
            return to_table(rows), []
        except (pa.ArrowException, ValueError, TypeError, OverflowError):
            pass
        good: list[pa.Table] = []
        bad: list[tuple[bytes, str, bytes]] = []
        for entry_id, row in zip(ids, rows, strict=True):
            try:
                good.append(to_table([row]))
            except (pa.ArrowException, ValueError, TypeError, OverflowError) as exc:
                reason = f"does not fit the {table_name} schema: {exc}"
                bad.append((entry_id, reason, orjson.dumps(row)))
        table = pa.concat_tables(good) if good else TABLE_SCHEMAS[table_name].empty_table()
        return table, bad

    def _dead_letter(
        self, stream: str, partition: int, dead: Sequence[tuple[bytes, str, bytes]], side: bool
    ) -> None:
        """Dead letters of one stream of ``partition`` (a ``side`` stream is named in the
        letter), into the partition's dead-letter stream, in one MULTI with the XACK (both
        under the partition's hash tag)."""
        pipe = self._redis.pipeline(transaction=True)
        for entry_id, reason, payload in dead:
            log.warning("stream sink: entry %s of %s dead-lettered: %s",
                        entry_id.decode(), stream, reason)  # fmt: skip
            letter: dict[Any, Any] = {"id": entry_id}
            if side:
                letter["stream"] = stream
            letter["partition"] = partition
            letter |= {"group": SINK_GROUP, "reason": reason, "payload": payload[:_MAX_PAYLOAD]}
            pipe.xadd(self.keys.dead(partition), letter)
        pipe.xack(stream, SINK_GROUP, *[d[0] for d in dead])
        pipe.execute()

    # ------------------------------------------------------------------ commit
    def flush(self) -> SinkStats:
        """Commit the buffered event, action and exposure rows with their watermarks, then ack
        them, trim and merge small files."""
        stats = SinkStats()
        buf = self._buffer
        if not buf:
            return stats
        marks = {p: max(i, self._watermarks.get(p, _NO_ID)) for p, i in buf.last.items()}
        side_marks = {
            side.name: max(
                buf.side_last.get(side.name, _NO_ID), self._side_marks.get(side.name, _NO_ID)
            )
            for side in self._sides
        }
        if buf.total_rows:
            write_id = f"stream-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
            self.warehouse.reload()
            try:
                result = WriteResult()
                for name in _SINK_TABLES:
                    tables = buf.tables.get(name)
                    if tables:
                        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
                        result.extend(self.warehouse.write_partitioned(name, table, write_id))
                self.warehouse.commit(
                    result,
                    "stream",
                    info={"write_id": write_id, "namespace": self.namespace},
                    amend_manifest=lambda m: self._record_watermarks(m, marks, side_marks),
                )
            except Exception:
                self.warehouse.reload()
                manifest = self.warehouse.manifest
                if not (
                    self._covered(manifest_watermarks(manifest, self.namespace), marks)
                    and all(
                        self._manifest_mark(manifest, side) >= side_marks[side.name]
                        for side in self._sides
                    )
                ):
                    raise  # nothing committed: the buffer stays for the next attempt
            for name, n in buf.rows.items():
                stats.count("committed", name, n)
            stats.commits = 1
            self.totals = self.totals + stats
            # committed: if the acks below fail, only they are retried
            buf.tables, buf.rows = {}, {}
        self._watermarks.update(marks)
        self._side_marks.update(side_marks)
        if self.after_commit_hook is not None:
            self.after_commit_hook()
        pipe = self._redis.pipeline(transaction=False)
        for stream, ids in buf.ack.items():
            pipe.xack(stream, SINK_GROUP, *ids)
        sunk = {str(p): format_id(i) for p, i in marks.items()}
        moved = [side.name for side in self._sides if buf.side_last.get(side.name, _NO_ID) > _NO_ID]
        sunk |= {name: format_id(side_marks[name]) for name in moved}
        if sunk:
            pipe.hset(self.keys.sink, mapping=sunk)  # type: ignore[arg-type]
        pipe.execute()
        self._buffer = _Buffer()
        if stats.commits:
            where = [f"p{p}={format_id(i)}" for p, i in sorted(marks.items())]
            where += [f"{name}={format_id(side_marks[name])}" for name in moved]
            log.info("stream sink committed %d events, %d actions and %d exposures (%s)",
                     stats.committed, stats.actions_committed, stats.exposures_committed,
                     ", ".join(where))  # fmt: skip
        return stats + self.trim() + self.merge_parts()

    def _record_watermarks(
        self,
        manifest: dict[str, Any],
        marks: Mapping[int, StreamId],
        side_marks: Mapping[str, StreamId],
    ) -> None:
        """Merge ``marks`` and the side streams' into the manifest being written (never moving
        a watermark back)."""
        current = manifest_watermarks(manifest, self.namespace)
        for p, i in marks.items():
            current[p] = max(i, current.get(p, _NO_ID))
        manifest.setdefault(WATERMARKS_KEY, {})[self.namespace] = {
            str(p): format_id(i) for p, i in sorted(current.items())
        }
        for side in self._sides:
            mark = max(side_marks.get(side.name, _NO_ID), self._manifest_mark(manifest, side))
            if mark > _NO_ID:
                per_ns = manifest.setdefault(side.manifest_key, {})
                if not isinstance(per_ns.get(self.namespace), dict):
                    per_ns[self.namespace] = {}  # a single id: the old one-outbox layout
                per_ns[self.namespace][str(side.partition)] = format_id(mark)

    @staticmethod
    def _covered(have: Mapping[int, StreamId], want: Mapping[int, StreamId]) -> bool:
        return all(have.get(p, _NO_ID) >= i for p, i in want.items())

    # ------------------------------------------------------------------ small files
    def merge_parts(self) -> SinkStats:
        """Merge the sink's small part files, ``merge_fan_in`` of a level into one of the
        next, in a few buckets per call (those with the most parts first): each commit adds
        a file to every bucket (of the events, actions and exposures tables) it touches, and files
        per bucket and the manifest must not grow without bound between two ``strata
        compact`` runs."""
        stats = SinkStats()
        wh = self.warehouse
        wh.reload()
        # (-count, table, bucket, level, names)
        due: list[tuple[int, str, int, int, list[str]]] = []
        for table in _SINK_TABLES:
            for b, entry in wh.manifest["tables"][table]["buckets"].items():
                levels: dict[int, list[str]] = {}
                for part in entry["parts"] if entry else []:
                    m = _PART_RE.match(part["name"])
                    if m:
                        levels.setdefault(int(m.group(1) or 0), []).append(part["name"])
                for level, names in sorted(levels.items()):
                    if len(names) >= self.merge_fan_in:
                        due.append((-len(names), table, int(b), level, names[: self.merge_fan_in]))
                        break
        # enough merges per call to keep up when every commit touches every bucket
        budget = max(2, 2 * -(-wh.n_buckets // self.merge_fan_in))
        for _, table, bucket, level, names in sorted(due)[:budget]:
            stats.merged += self._merge(bucket, level, names, table)
        self.totals = self.totals + stats
        return stats

    def _merge(self, bucket: int, level: int, names: list[str], table_name: str = "events") -> int:
        wh = self.warehouse
        folder = wh.bucket_dir(table_name, bucket)
        paths = [posixpath.join(folder, n) for n in names]
        try:
            table = read_parts(wh.fs, paths)
        except (OSError, pa.ArrowException) as exc:  # a compaction replaced them meanwhile
            log.info("stream sink: not merging bucket %d (%s)", bucket, exc)
            return 0
        write_id = f"streamL{level + 1}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        part = wh.write_bucket(table_name, bucket, table, write_id, sort=True)
        gone = set(names)

        def swap(manifest: dict[str, Any]) -> None:
            entry = manifest["tables"][table_name]["buckets"][str(bucket)]
            if not gone <= {p["name"] for p in entry["parts"]}:
                raise _Superseded
            entry["parts"] = [p for p in entry["parts"] if p["name"] not in gone]

        try:
            wh.commit(
                WriteResult([part]),
                "stream-merge",
                info={"merged_parts": len(names)},
                amend_manifest=swap,
            )
        except _Superseded:
            wh.fs.delete_file(posixpath.join(folder, part.name))
            return 0
        for path in paths:
            wh.fs.delete_file(path)
        return len(names)

    # ------------------------------------------------------------------ trimming
    def trim(self) -> SinkStats:
        """XTRIM MINID every partition below the oldest entry any group still needs; trim the
        outbox and the exposures stream (:meth:`_trim_committed_entries`)."""
        self._last_trim = time.monotonic()
        stats = SinkStats()
        for p in range(self.partitions):
            stream = self.keys.stream(p)
            minid = self._needed_from(stream)
            if minid is not None:
                stats.trimmed += int(
                    self._redis.xtrim(stream, minid=format_id(minid), approximate=False)
                )
        self.totals = self.totals + stats
        for side in self._sides:
            stats = stats + self._trim_committed_entries(side)
        return stats

    def _trim_committed_entries(self, side: _Side) -> SinkStats:
        """Remove a side stream's oldest entries, only those at or below its committed
        watermark and never below its newest ``keep``: delivery systems outside strata read
        the outbox too (so ``XLEN`` is no measure of what they need; it keeps
        ``outbox_keep``); the exposures stream has no other reader (it keeps none)."""
        stats = SinkStats()
        mark = self._side_marks.get(side.name, _NO_ID)
        if mark == _NO_ID:
            return stats
        args: list[str | int] = [format_id(mark), side.keep, _TRIM_PAGE]
        counter = f"{side.kind}_trimmed"
        while True:  # in pages, so Redis answers others in between
            removed = int(self._trim_committed(keys=[side.stream], args=args))
            setattr(stats, counter, getattr(stats, counter) + removed)
            if removed < _TRIM_PAGE:
                break
        self.totals = self.totals + stats
        return stats

    def _needed_from(self, stream: str) -> StreamId | None:
        """The oldest entry id some group of ``stream`` still needs; None: keep everything
        (no workers group yet, so the rule workers will want every entry)."""
        groups = self._redis.xinfo_groups(stream)
        names = {_text(g["name"]) for g in groups}
        if WORKER_GROUP not in names or SINK_GROUP not in names:
            return None
        needed: list[StreamId] = []
        for g in groups:
            if int(g["pending"]):
                summary = self._redis.xpending(stream, g["name"])
                if summary["min"] is not None:
                    needed.append(parse_id(summary["min"]))
                    continue
                # acked in between (the workers run meanwhile): what XINFO saw delivered is
                # an older bound, so trimming there keeps everything still needed
            ms, seq = parse_id(g["last-delivered-id"])
            needed.append((ms, seq + 1))
        return min(needed)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Close the Redis client if this sink created it (buffered rows are not committed:
        call :meth:`flush` first, or let the next sink re-read them)."""
        if self._owns_client:
            self._redis.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
