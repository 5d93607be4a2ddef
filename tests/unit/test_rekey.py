"""Re-keying a small hand-written warehouse (no Ray, no Redis): the ids, the chunking, and
an interrupted rotation finished by rerunning it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from strata.ids import bucket_of, chain_key, pseudonymise_many, rekey_ids
from strata.io.keys import key_fingerprint
from strata.io.rekey import RotationError, rekey_data_root, rotation_state
from strata.io.warehouse import Warehouse

OLD = b"old-key-0123456789abcdef"
NEW = b"new-key-fedcba9876543210"
RAW = [f"u{i}" for i in range(40)]


def _warehouse(root: Path) -> np.ndarray:
    wh = Warehouse(str(root), pseudonym_key=OLD)
    wh.create(4)
    ids = pseudonymise_many(RAW, OLD)
    ts = pa.array(np.arange(len(ids) * 3, dtype=np.int64) * 1000, pa.timestamp("ms", tz="UTC"))
    events = pa.table(
        {"user_id": np.repeat(ids, 3), "ts": ts, "event_type": ["view"] * (len(ids) * 3)}
    )
    users = pa.table({"user_id": ids})
    result = wh.write_partitioned("events", events, "w1")
    result.extend(wh.write_partitioned("users", users, "w1"))
    wh.commit(result, "test")
    return ids


def test_rekey_moves_every_row_to_its_new_bucket(tmp_path: Path) -> None:
    ids = _warehouse(tmp_path)
    saved: list[bytes] = []
    report = rekey_data_root(str(tmp_path), OLD, NEW, saved.append, chunk_rows=50)
    chain = chain_key([OLD, NEW])
    assert saved == [chain]
    assert report.rows == {"events": 120, "users": 40, "actions": 0, "exposures": 0}
    wh = Warehouse(str(tmp_path), pseudonym_key=chain)
    got = wh.read_table("users").column("user_id").to_numpy()
    assert sorted(got.tolist()) == sorted(pseudonymise_many(RAW, chain).tolist())
    assert sorted(got.tolist()) == sorted(rekey_ids(ids, NEW).tolist())
    for b in wh.buckets("events"):
        uid = wh.read_bucket("events", b).column("user_id").to_numpy()
        assert (bucket_of(uid, 4) == b).all()
    assert wh.read_table("events").num_rows == 120
    state = rotation_state(wh)
    assert state is not None and state["finished"] and state["new"] == key_fingerprint(chain)
    assert not (tmp_path / "rekey").exists()
    with pytest.raises(RotationError, match="already a link"):
        rekey_data_root(str(tmp_path), chain, NEW, saved.append)
    # rotating again with the old key is refused: the warehouse is keyed with the chain now
    with pytest.raises(RotationError, match="fingerprint"):
        rekey_data_root(str(tmp_path), OLD, NEW, saved.append)


def test_a_rotation_interrupted_after_its_commit_is_finished_by_a_rerun(tmp_path: Path) -> None:
    _warehouse(tmp_path)

    def crash(_: bytes) -> None:
        raise OSError("disk full while saving the key")

    with pytest.raises(OSError, match="disk full"):
        rekey_data_root(str(tmp_path), OLD, NEW, crash)
    wh = Warehouse(str(tmp_path), pseudonym_key=chain_key([OLD, NEW]))
    state = rotation_state(wh)
    assert state is not None and state["finished"] is False
    # another new key cannot start while this one is pending
    with pytest.raises(RotationError, match="interrupted"):
        rekey_data_root(str(tmp_path), OLD, b"other-key-0123456789abc", crash)
    saved: list[bytes] = []
    report = rekey_data_root(str(tmp_path), OLD, NEW, saved.append)
    assert report.resumed and saved == [chain_key([OLD, NEW])]
    wh.reload()
    assert rotation_state(wh)["finished"] is True  # type: ignore[index]
    want = sorted(pseudonymise_many(RAW, chain_key([OLD, NEW])).tolist())
    assert sorted(wh.read_table("users").column("user_id").to_pylist()) == want


def test_a_rotation_that_died_after_saving_the_key_finishes_with_the_new_chain(
    tmp_path: Path,
) -> None:
    _warehouse(tmp_path)
    saved: list[bytes] = []

    def save_then_die(chain: bytes) -> None:
        saved.append(chain)
        raise OSError("killed after the key was written")

    with pytest.raises(OSError, match="killed"):
        rekey_data_root(str(tmp_path), OLD, NEW, save_then_die)
    chain = chain_key([OLD, NEW])
    # the operator reruns the same command: the key file now holds the chain
    report = rekey_data_root(str(tmp_path), saved[0], NEW, saved.append)
    assert report.resumed and saved == [chain, chain]
    assert report.new_fingerprint == key_fingerprint(chain)
    wh = Warehouse(str(tmp_path), pseudonym_key=chain)
    assert rotation_state(wh)["finished"] is True  # type: ignore[index]
    want = sorted(pseudonymise_many(RAW, chain).tolist())
    assert sorted(wh.read_table("users").column("user_id").to_pylist()) == want


def test_imported_parts_keep_recording_the_columns_they_carry(tmp_path: Path) -> None:
    wh = Warehouse(str(tmp_path), pseudonym_key=OLD)
    wh.create(8)
    ids = pseudonymise_many(RAW, OLD)
    imported, generated = ids[:5], ids[5:]
    result = wh.write_partitioned(
        "users", pa.table({"user_id": imported}), "imp", columns=["user_id"]
    )
    result.extend(wh.write_partitioned("users", pa.table({"user_id": generated}), "gen"))
    wh.commit(result, "test")
    # a user's columns are known per bucket: all users of a bucket with an imported part
    partial = [
        int(u) for u in ids if wh.bucket_columns("users", int(bucket_of(u, 8))) == ["user_id"]
    ]
    assert 5 <= len(partial) < len(ids)
    rekey_data_root(str(tmp_path), OLD, NEW, lambda _: None)
    wh = Warehouse(str(tmp_path), pseudonym_key=chain_key([OLD, NEW]))
    new_partial = set(rekey_ids(np.array(partial), NEW).tolist())
    for b in wh.buckets("users"):
        got = set(wh.read_bucket("users", b).column("user_id").to_pylist())
        cols = wh.bucket_columns("users", b)
        assert (cols == ["user_id"]) == bool(got & new_partial), (b, cols)
