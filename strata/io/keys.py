"""The pseudonymisation key: from settings, else a local key file outside the data root."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from strata.settings import Settings


class PseudonymKeyError(ValueError):
    """The pseudonymisation key is missing or too short."""


def load_pseudonym_key(settings: Settings, create: bool = True) -> bytes:
    """Return the HMAC key for user ids.

    ``STRATA_PSEUDONYM_KEY`` wins; otherwise the key file is read, and created with 32 random
    bytes (mode 0600) when ``create`` is true and it does not exist yet.

    Raises:
        PseudonymKeyError: the key is shorter than 16 bytes, or the file is missing and not created.
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
    if len(key) < 16:
        raise PseudonymKeyError(
            "pseudonymisation key must be at least 16 bytes: set STRATA_PSEUDONYM_KEY "
            f"or the key file ({settings.key_file}) to a longer text"
        )
    return key
