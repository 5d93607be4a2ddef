"""Key chains (rotation): raw id -> old pseudonym -> re-keyed id equals the chained id."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from strata.ids import (
    chain_key,
    key_links,
    pseudonymise,
    pseudonymise_array,
    pseudonymise_many,
    rekey_ids,
)
from strata.io.keys import (
    PseudonymKeyError,
    key_fingerprint,
    load_pseudonym_key,
    read_key_link,
    write_key_chain,
)
from strata.settings import Settings

OLD = b"old-key-0123456789abcdef"
NEW = b"new-key-fedcba9876543210"
RAW = [f"user-{i}" for i in range(200)] + ["  padded  "]


def test_one_link_is_the_unrotated_pseudonym() -> None:
    digest = hmac.new(OLD, b"abc", hashlib.sha256).digest()
    assert pseudonymise("abc", OLD) == int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def test_raw_to_old_to_new_equals_the_chained_id() -> None:
    chain = chain_key([OLD, NEW])
    old_ids = pseudonymise_many(RAW, OLD)
    stored = rekey_ids(old_ids, NEW)  # what a rotation writes
    assert np.array_equal(pseudonymise_many(RAW, chain), stored)
    assert [pseudonymise(r, chain) for r in RAW] == stored.tolist()
    arr = pseudonymise_array(pa.array(RAW + RAW[:5]), chain).to_numpy()
    assert np.array_equal(arr, np.concatenate([stored, stored[:5]]))
    # the new id is the 63-bit HMAC of the old pseudonym as 8 big-endian bytes
    one = hmac.new(NEW, int(old_ids[0]).to_bytes(8, "big"), hashlib.sha256).digest()
    assert stored[0] == int.from_bytes(one[:8], "big") & ((1 << 63) - 1)
    assert (stored >= 0).all() and not np.isin(stored, old_ids).any()


def test_three_links_chain_in_order() -> None:
    third = b"third-key-000000000000"
    chain = chain_key([OLD, NEW, third])
    want = rekey_ids(rekey_ids(pseudonymise_many(RAW, OLD), NEW), third)
    assert np.array_equal(pseudonymise_many(RAW, chain), want)
    assert not np.array_equal(pseudonymise_many(RAW, chain_key([OLD, third, NEW])), want)


def test_links_parse_and_reject_short_ones() -> None:
    assert key_links(OLD + b"\n\n  " + NEW + b"  \n") == [OLD, NEW]
    with pytest.raises(ValueError, match="16 bytes"):
        key_links(OLD + b"\nshort")
    with pytest.raises(ValueError, match="16 bytes"):
        pseudonymise("x", b"short")
    with pytest.raises(ValueError):
        chain_key([OLD, b"two\nlines-0123456789"])


def test_key_file_holds_the_chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STRATA_PSEUDONYM_KEY", raising=False)
    path = tmp_path / "keys" / "pseudonym.key"
    write_key_chain(path, chain_key([OLD, NEW]))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    key = load_pseudonym_key(Settings(key_file=path), create=False)
    assert key_links(key) == [OLD, NEW]
    assert key_fingerprint(key) != key_fingerprint(OLD) and len(key_fingerprint(key)) == 16
    assert OLD.decode() not in key_fingerprint(key)
    path.write_text(f"{OLD.decode()}\nshort\n")
    with pytest.raises(PseudonymKeyError, match="each line"):
        load_pseudonym_key(Settings(key_file=path), create=False)


def test_new_key_file_must_be_one_long_line(tmp_path: Path) -> None:
    f = tmp_path / "new.key"
    f.write_text(NEW.decode() + "\n")
    assert read_key_link(f) == NEW
    f.write_text("short\n")
    with pytest.raises(PseudonymKeyError, match="one line"):
        read_key_link(f)
    f.write_text(f"{NEW.decode()}\n{OLD.decode()}\n")
    with pytest.raises(PseudonymKeyError, match="one line"):
        read_key_link(f)
    with pytest.raises(PseudonymKeyError, match="cannot read"):
        read_key_link(tmp_path / "missing.key")
