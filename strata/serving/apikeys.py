"""API keys with scopes: generation, hashing, validation and lookup (pure, no I/O).

A key is ``stk_`` plus 256 random bits. Only its SHA-256 hash is ever kept (a slow password hash
buys nothing for 256-bit random tokens); the plain key is shown once, when it is created.
Records travel as a JSON list (the key file and ``STRATA_API_KEYS`` share the format)::

    [{"name": "crm-sync", "scopes": ["segments:read"], "sha256": "<64 hex>",
      "created_at": "2024-05-01T08:00:00+00:00"}]
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

KEY_PREFIX = "stk_"

#: The fixed key of demo mode. Public by design: never accept it outside a demo.
DEMO_KEY = "stk_demo_only_do_not_use_in_production"

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


class Scope(StrEnum):
    """What a key may do. ``admin`` implies every other scope."""

    SEGMENTS_READ = "segments:read"
    EVENTS_WRITE = "events:write"
    REPORTS_READ = "reports:read"
    METRICS_READ = "metrics:read"
    ADMIN = "admin"


class KeyFileError(ValueError):
    """Key records (a key file or ``STRATA_API_KEYS``) are unparsable, invalid or conflicting."""


def _allowed_scopes() -> str:
    return ", ".join(s.value for s in Scope)


def _to_scope(value: Scope | str) -> Scope:
    try:
        return Scope(value)
    except ValueError:
        raise ValueError(f"unknown scope {value!r}; allowed scopes: {_allowed_scopes()}") from None


class KeyRecord(BaseModel):
    """One stored API key: its name, scopes and the SHA-256 hex of the key (never the key).

    Attributes:
        name: 1-64 characters of ``[A-Za-z0-9._-]``, starting with a letter or digit.
        scopes: at least one scope; duplicates are dropped, first occurrence kept.
        sha256: the key's SHA-256 as 64 hex digits (stored lowercase).
        created_at: ISO-8601 UTC creation time, or empty when unknown.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    scopes: tuple[Scope, ...]
    sha256: str
    created_at: str = ""

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME_RE.fullmatch(value):
            raise ValueError(
                f"invalid name {value!r}: use 1-64 characters of letters, digits, '.', '_', '-', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("scopes", mode="before")
    @classmethod
    def _check_scopes(cls, value: Any) -> tuple[Scope, ...]:
        if isinstance(value, str) or not isinstance(value, Iterable):
            raise ValueError(f"must be a list of scopes; allowed scopes: {_allowed_scopes()}")
        scopes = tuple(dict.fromkeys(_to_scope(v) for v in value))
        if not scopes:
            raise ValueError(f"needs at least one scope; allowed scopes: {_allowed_scopes()}")
        return scopes

    @field_validator("sha256")
    @classmethod
    def _check_sha256(cls, value: str) -> str:
        value = value.lower()
        if not _SHA256_RE.fullmatch(value):
            raise ValueError("must be the key's SHA-256 as 64 hex digits")
        return value

    @field_validator("created_at")
    @classmethod
    def _check_created_at(cls, value: str) -> str:
        if value:
            try:
                dt.datetime.fromisoformat(value)
            except ValueError:
                raise ValueError(f"{value!r} is not an ISO-8601 date-time") from None
        return value

    def allows(self, scope: Scope | str) -> bool:
        """Whether this key grants ``scope`` (``admin`` grants all).

        Raises:
            ValueError: ``scope`` is not a known scope (a typo in the caller, not a denial).
        """
        wanted = _to_scope(scope)
        return Scope.ADMIN in self.scopes or wanted in self.scopes


def generate_key() -> str:
    """A new random API key: ``stk_`` plus 32 random bytes, URL-safe base64."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The SHA-256 hex digest (lowercase) of the UTF-8 encoded key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown field; allowed fields: {', '.join(KeyRecord.model_fields)}"
        elif err["type"] == "missing":
            msg = "missing"
        parts.append(f"field {loc!r}: {msg}")
    return "; ".join(parts)


def new_key(name: str, scopes: Iterable[Scope | str]) -> tuple[str, KeyRecord]:
    """Create a key and its record, stamped with the current UTC time.

    Returns:
        ``(plain key, record)``: show the key once, store only the record.

    Raises:
        ValueError: invalid name, no scopes or an unknown scope (the message lists the
            allowed scopes).
    """
    key = generate_key()
    try:
        record = KeyRecord.model_validate(
            {
                "name": name,
                "scopes": tuple(scopes),
                "sha256": hash_key(key),
                "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
        )
    except ValidationError as exc:
        raise ValueError(f"invalid API key: {_describe(exc)}") from None
    return key, record


def demo_record() -> KeyRecord:
    """The record of :data:`DEMO_KEY`: name ``demo``, scopes ``segments:read`` and
    ``events:write`` (the demo posts live events) and ``reports:read`` (the dashboard), never
    ``admin``."""
    return KeyRecord(
        name="demo",
        scopes=(Scope.SEGMENTS_READ, Scope.EVENTS_WRITE, Scope.REPORTS_READ),
        sha256=hash_key(DEMO_KEY),
    )


class KeyRing:
    """The accepted keys, looked up by the hash of a presented token.

    Raises:
        ValueError: two records share a name or a key hash.
    """

    def __init__(self, records: Iterable[KeyRecord] = ()) -> None:
        self._records = tuple(records)
        names: set[str] = set()
        hashes: dict[str, str] = {}
        for record in self._records:
            if record.name in names:
                raise ValueError(f"duplicate API key name {record.name!r}")
            names.add(record.name)
            if record.sha256 in hashes:
                raise ValueError(
                    f"API keys {hashes[record.sha256]!r} and {record.name!r} are the same key"
                )
            hashes[record.sha256] = record.name

    @property
    def records(self) -> tuple[KeyRecord, ...]:
        """The records, in the order given."""
        return self._records

    def __len__(self) -> int:
        return len(self._records)

    def authenticate(self, token: str) -> KeyRecord | None:
        """The record whose key is ``token``, else None.

        Every record is compared in constant time, with no early exit, so timing reveals
        neither which record matched nor how much of a hash did.
        """
        if not isinstance(token, str) or not token:
            return None
        digest = hash_key(token).encode("ascii")
        found: KeyRecord | None = None
        for record in self._records:
            if hmac.compare_digest(digest, record.sha256.encode("ascii")):
                found = record
        return found


def parse_records(text: str, source: str) -> list[KeyRecord]:
    """Parse a JSON list of key records (a key file or ``STRATA_API_KEYS``).

    Blank text is an empty list.

    Args:
        text: the JSON text.
        source: where it came from (a path, ``STRATA_API_KEYS``), named in errors.

    Raises:
        KeyFileError: ``"<source>: ..."`` for bad JSON, a non-list, or an invalid record
            (naming the entry index, its name when known, and the field), or a repeated name.
    """
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeyFileError(
            f"{source}: not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}"
        ) from None
    if not isinstance(data, list):
        raise KeyFileError(
            f"{source}: expected a JSON list of key records, got {type(data).__name__}"
        )
    records: list[KeyRecord] = []
    seen: set[str] = set()
    for i, entry in enumerate(data):
        label = f"entry {i}"
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            label += f" ({entry['name']!r})"
        if not isinstance(entry, dict):
            raise KeyFileError(f"{source}: {label}: expected an object, got {type(entry).__name__}")
        try:
            record = KeyRecord.model_validate(entry)
        except ValidationError as exc:
            raise KeyFileError(f"{source}: {label}: {_describe(exc)}") from None
        if record.name in seen:
            raise KeyFileError(f"{source}: {label}: duplicate name {record.name!r}")
        seen.add(record.name)
        records.append(record)
    return records


def dump_records(records: Iterable[KeyRecord]) -> str:
    """The JSON text of ``records`` (sorted by name, indented): the key file and env format."""
    data = [r.model_dump(mode="json") for r in sorted(records, key=lambda r: r.name)]
    return json.dumps(data, indent=2) + "\n"
