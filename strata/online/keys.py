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

    def __post_init__(self) -> None:
        check_namespace(self.namespace)

    @property
    def pointer(self) -> str:
        """The current-version pointer."""
        return f"{self.namespace}:current"

    @property
    def versions(self) -> str:
        """The sorted set of published, retained versions."""
        return f"{self.namespace}:versions"

    @property
    def history(self) -> str:
        """The list of pointer flips (newest first)."""
        return f"{self.namespace}:history"

    @property
    def seq(self) -> str:
        """The publish counter."""
        return f"{self.namespace}:seq"

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
        return self.version_prefix(version) + "meta"

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
