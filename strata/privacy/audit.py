"""Audit ids: the one identifier of an erased user that strata keeps.

An erased user's tombstone and audit entry must let the next recompute, training run and
compaction recognise the user's rows, yet hold neither the raw platform id nor the pseudonym
(a pseudonym in a log is still personal data: it links back to every row). So the tombstone
stores ``audit_id = hex(first 16 bytes of HMAC-SHA256(audit_key, pseudonym as 8 big-endian
bytes))`` with ``audit_key = HMAC-SHA256(pseudonym_key, b"strata-audit-v1")``: a second key
derived from the pseudonymisation key, so there is nothing new to store or leak. A reader with
the pseudonym key can test whether a pseudonym is tombstoned; a reader of the tombstone file
alone cannot recover anyone.

A rotation of the pseudonymisation key changes the audit key, hence every audit id: rotate
the tombstones together with the warehouse (re-key each pseudonym's audit id in the same run),
or the old tombstones stop matching.
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np

#: HMAC message that derives the audit key from the pseudonymisation key (versioned).
AUDIT_CONTEXT = b"strata-audit-v1"
_ID_BYTES = 16


def audit_key(pseudonym_key: bytes) -> bytes:
    """The audit key derived from the pseudonymisation key (32 bytes).

    Args:
        pseudonym_key: the HMAC key user ids are pseudonymised with.
    """
    return hmac.new(pseudonym_key, AUDIT_CONTEXT, hashlib.sha256).digest()


def _one(user_id: int, base: hmac.HMAC) -> str:
    h = base.copy()
    h.update(int(user_id).to_bytes(8, "big", signed=True))
    return h.digest()[:_ID_BYTES].hex()


def audit_id(user_id: int | np.ndarray, key: bytes) -> str | np.ndarray:
    """Audit id(s) of pseudonymous user id(s).

    Args:
        user_id: one pseudonym (int) or an int64 array of them.
        key: the audit key (:func:`audit_key`), not the pseudonymisation key itself.

    Returns:
        32 hex characters for a scalar; for an array, an array of such strings (dtype ``<U32``)
        of the same shape.
    """
    base = hmac.new(key, digestmod=hashlib.sha256)
    if isinstance(user_id, np.ndarray):
        ids = np.asarray(user_id, dtype=np.int64)
        flat = [_one(int(u), base) for u in ids.ravel()]
        return np.asarray(flat, dtype=f"<U{2 * _ID_BYTES}").reshape(ids.shape)
    return _one(int(user_id), base)
