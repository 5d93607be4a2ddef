"""The pseudonymisation key: from settings, else a local key file outside the data root.

The key's text may hold a chain of links, one per line, oldest first (:mod:`strata.ids`):
``strata rotate-key`` appends a link. The file is rewritten atomically (mode 0600).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import uuid
from pathlib import Path

from strata.ids import chain_key, key_links
from strata.settings import Settings

#: HMAC message of a key's fingerprint (identifies a chain without revealing it)
FINGERPRINT_CONTEXT = b"strata-key-fingerprint-v1"


class PseudonymKeyError(ValueError):
    """The pseudonymisation key is missing or too short."""


def load_pseudonym_key(settings: Settings, create: bool = True) -> bytes:
    """Return the HMAC key for user ids (one link, or a chain of links one per line).

    ``STRATA_PSEUDONYM_KEY`` wins; otherwise the key file is read, and created with 32 random
    bytes (mode 0600) when ``create`` is true and it does not exist yet.

    Raises:
        PseudonymKeyError: a link is shorter than 16 bytes, or the file is missing and not
            created.
    """
    if settings.pseudonym_key is not None:
        key = settings.pseudonym_key.get_secret_value().encode("utf-8")
    else:
        path = Path(settings.key_file).expanduser()
        if not path.exists():
            if not create:
                raise PseudonymKeyError(
                    f"no pseudonymisation key: set STRATA_PSEUDONYM_KEY or create {path}"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        key = path.read_text().strip().encode("utf-8")
    try:
        return chain_key(key_links(key))
    except ValueError:
        raise PseudonymKeyError(
            "pseudonymisation key must be at least 16 bytes (each line of a rotated chain): "
            f"set STRATA_PSEUDONYM_KEY or the key file ({settings.key_file}) to a longer text"
        ) from None


def read_key_link(path: str | Path) -> bytes:
    """Read a new chain link from a file (one line of at least 16 bytes).

    Raises:
        PseudonymKeyError: the file is missing, or does not hold exactly one long enough line.
    """
    p = Path(path).expanduser()
    try:
        text = p.read_text().strip().encode("utf-8")
    except OSError as exc:
        raise PseudonymKeyError(f"cannot read the new key file {p}: {exc.strerror}") from None
    try:
        links = key_links(text)
    except ValueError:
        links = []
    if len(links) != 1:
        raise PseudonymKeyError(f"{p}: a new key must be one line of at least 16 bytes")
    return links[0]


def write_key_chain(path: str | Path, key: bytes) -> None:
    """Write a key (chain) to ``path`` atomically with mode 0600 (temporary file, rename)."""
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key + b"\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


def key_fingerprint(key: bytes) -> str:
    """A short public identifier of a key chain (16 hex characters of a keyed hash)."""
    return hmac.new(chain_key(key_links(key)), FINGERPRINT_CONTEXT, hashlib.sha256).hexdigest()[:16]
