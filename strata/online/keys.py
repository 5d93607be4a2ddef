"""The Redis key layout of the online store, as pure functions of a namespace.

One class, used by the synchronous :class:`strata.io.segment_store.SegmentStore` (writers,
publish, rollback) and the asynchronous reader the API uses, so both always agree on where a
version lives. Layout (``ns`` is the namespace; a version id has no ``:``)::

    {ns}:current                  string  the published version readers use (the pointer)
    {ns}:versions                 zset    published, retained versions, by publish order
    {ns}:history                  list    pointer flips, newest first (JSON)
    {ns}:seq                      string  publish counter (the zset's scores)
    {ns}:v:{version}:meta         hash    layout, status and storage format of a version

A ``packed`` version (the default since issue 14)::

    {ns}:v:{version}:i:{bucket}          string  4-byte user count + first id of each group
    {ns}:v:{version}:g:{bucket}.{group}  string  entries sorted by id: id (8 bytes, big-endian)
                                                 + the record, fixed width

A ``hash`` version (older; still read until it ages out)::

    {ns}:v:{version}:g:{group}    hash    field = user id (8 bytes), value = the record

On a Redis Cluster (``cluster=True``) a Lua script or MULTI may only touch keys of one hash
slot, so the keys carry hash tags (only the part in braces is hashed). Shown for the namespace
``strata`` and version ``v7`` (a ``tagged`` version of 64 buckets in 16 tag groups):

* the control keys and every version's meta share the tag ``{strata}`` (one slot), so the
  flip (pointer, meta, versions, history, seq) stays ONE atomic script::

      {strata}:current  {strata}:versions  {strata}:history  {strata}:seq
      {strata}:v:v7:meta

* a ``tagged`` version is the packed format cut into ``slot_groups`` tag groups (bucket ``b``
  in group ``b % slot_groups``); a group's indexes and group strings share one tag, so a
  read of the buckets of one group is one script call on the node that holds it::

      strata:v:v7:i:{v7.5}.37      the index of bucket 37 (37 % 16 = 5)
      strata:v:v7:g:{v7.5}.37.2    group string 2 of bucket 37

  (still under ``strata:v:v7:i:`` / ``:g:``, so the sweeps by prefix find them).

Standalone keeps its control key names (no tag): the pointer and retained versions of a
running deployment stay where they are, with nothing to migrate or fall back to; a cluster
never held the old names (the old single-script read cannot run on one). A standalone store
may still write ``tagged`` versions (same data key names as on a cluster).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["KeyLayout", "check_namespace", "check_version"]

_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


def check_namespace(namespace: str) -> str:
    """``namespace`` if it is a valid key prefix, else ValueError naming the rule."""
    if not _NAMESPACE_RE.match(namespace):
        raise ValueError(f"bad namespace {namespace!r}: letters, digits and ._:- only")
    return namespace


def check_version(version: str) -> str:
    """``version`` if it is a valid version id, else ValueError naming the rule."""
    if not _VERSION_RE.match(version):
        raise ValueError(
            f"bad version id {version!r}: 1-64 letters, digits and ._- (starting alphanumeric)"
        )
    return version


@dataclass(frozen=True)
class KeyLayout:
    """Every key name of one namespace (validated on construction)."""

    namespace: str = "strata"
    #: Redis Cluster names: the control keys and metas share the hash tag ``{namespace}``
    cluster: bool = False

    def __post_init__(self) -> None:
        check_namespace(self.namespace)

    @property
    def control_prefix(self) -> str:
        """What the control keys and metas start with: ``ns`` (standalone) or ``{ns}``."""
        return f"{{{self.namespace}}}" if self.cluster else self.namespace

    @property
    def pointer(self) -> str:
        """The current-version pointer."""
        return f"{self.control_prefix}:current"

    @property
    def versions(self) -> str:
        """The sorted set of published, retained versions."""
        return f"{self.control_prefix}:versions"

    @property
    def history(self) -> str:
        """The list of pointer flips (newest first)."""
        return f"{self.control_prefix}:history"

    @property
    def seq(self) -> str:
        """The publish counter."""
        return f"{self.control_prefix}:seq"

    @property
    def meta_pattern(self) -> str:
        """A SCAN pattern matching the meta hash of every version."""
        return f"{self.control_prefix}:v:*:meta"

    def version_of_meta(self, key: str) -> str:
        """The version whose meta hash is ``key`` (one :attr:`meta_pattern` matched)."""
        return key[len(self.control_prefix) + len(":v:") : -len(":meta")]

    @property
    def versions_prefix(self) -> str:
        """What every version's keys start with, before the version id (the read script
        appends the version it finds in the pointer)."""
        return f"{self.namespace}:v:"

    def version_prefix(self, version: str) -> str:
        """Prefix of every key of ``version``."""
        return f"{self.versions_prefix}{check_version(version)}:"

    def meta(self, version: str) -> str:
        """The meta hash of ``version``."""
        return f"{self.control_prefix}:v:{check_version(version)}:meta"

    def group(self, version: str, group: int) -> str:
        """Group ``group`` of ``version``."""
        if group < 0:
            raise ValueError("group must be non-negative")
        return f"{self.version_prefix(version)}g:{group}"

    def index(self, version: str, bucket: int) -> str:
        """The group index of ``bucket`` of a packed ``version``."""
        if bucket < 0:
            raise ValueError("bucket must be non-negative")
        return f"{self.version_prefix(version)}i:{bucket}"

    def chunk(self, version: str, bucket: int, group: int) -> str:
        """Group string ``group`` of ``bucket`` of a packed ``version``."""
        if bucket < 0 or group < 0:
            raise ValueError("bucket and group must be non-negative")
        return f"{self.version_prefix(version)}g:{bucket}.{group}"

    def slot_tag(self, version: str, tag_group: int) -> str:
        """The hash tag (braces included) of tag group ``tag_group`` of a tagged ``version``."""
        if tag_group < 0:
            raise ValueError("tag group must be non-negative")
        return f"{{{check_version(version)}.{tag_group}}}"

    def tagged_index_prefix(self, version: str, tag_group: int) -> str:
        """What the indexes of the buckets of one tag group start with (+ the bucket)."""
        return f"{self.version_prefix(version)}i:{self.slot_tag(version, tag_group)}."

    def tagged_chunk_prefix(self, version: str, tag_group: int) -> str:
        """What the group strings of one tag group start with (+ ``{bucket}.{k}``)."""
        return f"{self.version_prefix(version)}g:{self.slot_tag(version, tag_group)}."

    def tagged_index(self, version: str, bucket: int, slot_groups: int) -> str:
        """The index of ``bucket`` of a tagged ``version`` of ``slot_groups`` tag groups."""
        if bucket < 0 or slot_groups <= 0:
            raise ValueError("bucket must be non-negative and slot_groups positive")
        return f"{self.tagged_index_prefix(version, bucket % slot_groups)}{bucket}"

    def tagged_chunk(self, version: str, bucket: int, group: int, slot_groups: int) -> str:
        """Group string ``group`` of ``bucket`` of a tagged ``version``."""
        if bucket < 0 or group < 0 or slot_groups <= 0:
            raise ValueError("bucket and group must be non-negative, slot_groups positive")
        return f"{self.tagged_chunk_prefix(version, bucket % slot_groups)}{bucket}.{group}"
