"""API keys: generation, hashing, scopes, the key ring and record parsing (pure, no I/O)."""

from __future__ import annotations

import hashlib
import json

import pytest

from strata.serving.apikeys import (
    DEMO_KEY,
    KEY_PREFIX,
    KeyFileError,
    KeyRecord,
    KeyRing,
    Scope,
    demo_record,
    dump_records,
    generate_key,
    hash_key,
    new_key,
    parse_records,
)

ALLOWED = "segments:read, events:write, reports:read, metrics:read, admin"


def _entry(**overrides: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "name": "crm",
        "scopes": ["segments:read"],
        "sha256": hash_key("stk_x"),
        "created_at": "2024-05-01T08:00:00+00:00",
    }
    entry.update(overrides)
    return entry


def test_generate_key_is_prefixed_random_and_256_bit() -> None:
    keys = {generate_key() for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert key.startswith(KEY_PREFIX)
        # 32 bytes as unpadded URL-safe base64
        assert len(key) == len(KEY_PREFIX) + 43
        assert set(key[len(KEY_PREFIX) :]) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        )


def test_hash_key_is_sha256_hex_of_utf8() -> None:
    assert hash_key("stk_abc") == hashlib.sha256(b"stk_abc").hexdigest()
    assert hash_key("ключ") == hashlib.sha256("ключ".encode()).hexdigest()
    assert len(hash_key("x")) == 64


def test_new_key_record_holds_hash_not_key() -> None:
    key, record = new_key("crm-sync", ["segments:read", Scope.EVENTS_WRITE, "segments:read"])
    assert key.startswith(KEY_PREFIX)
    assert record.name == "crm-sync"
    assert record.scopes == (Scope.SEGMENTS_READ, Scope.EVENTS_WRITE)
    assert record.sha256 == hash_key(key)
    assert record.created_at.endswith("+00:00")
    assert key not in record.model_dump_json()


def test_new_key_rejects_unknown_scope_listing_allowed() -> None:
    with pytest.raises(ValueError, match="unknown scope 'segments:write'") as info:
        new_key("crm", ["segments:write"])
    assert f"allowed scopes: {ALLOWED}" in str(info.value)


@pytest.mark.parametrize("scopes", [[], ()])
def test_new_key_needs_a_scope(scopes: list[str]) -> None:
    with pytest.raises(ValueError, match="at least one scope"):
        new_key("crm", scopes)


@pytest.mark.parametrize("name", ["", "-x", ".x", "a b", "a/b", "é", "a" * 65])
def test_bad_names_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="field 'name'"):
        new_key(name, ["admin"])


@pytest.mark.parametrize("name", ["a", "A.b_c-d", "0x", "a" * 64])
def test_good_names_accepted(name: str) -> None:
    assert new_key(name, ["admin"])[1].name == name


def test_record_is_frozen_and_forbids_extra() -> None:
    record = KeyRecord.model_validate(_entry())
    with pytest.raises(ValueError):
        record.name = "other"
    with pytest.raises(ValueError):
        KeyRecord.model_validate(_entry(key="stk_plain"))


def test_record_sha256_normalised_and_checked() -> None:
    digest = hash_key("stk_x")
    assert KeyRecord.model_validate(_entry(sha256=digest.upper())).sha256 == digest
    for bad in ["abc", "g" * 64, digest + "0"]:
        with pytest.raises(ValueError, match="64 hex digits"):
            KeyRecord.model_validate(_entry(sha256=bad))


def test_allows_scopes_and_admin_implies_all() -> None:
    reader = KeyRecord.model_validate(_entry(scopes=["segments:read"]))
    assert reader.allows(Scope.SEGMENTS_READ)
    assert reader.allows("segments:read")
    assert not reader.allows(Scope.EVENTS_WRITE)
    assert not reader.allows("admin")
    admin = KeyRecord.model_validate(_entry(scopes=["admin"]))
    assert all(admin.allows(s) for s in Scope)
    assert admin.allows("events:write")


def test_allows_unknown_scope_is_an_error() -> None:
    admin = KeyRecord.model_validate(_entry(scopes=["admin"]))
    with pytest.raises(ValueError, match="allowed scopes"):
        admin.allows("segments:reed")


def test_keyring_authenticates_right_key_only() -> None:
    key_a, rec_a = new_key("a", ["segments:read"])
    key_b, rec_b = new_key("b", ["events:write"])
    ring = KeyRing([rec_a, rec_b])
    assert len(ring) == 2
    assert ring.records == (rec_a, rec_b)
    assert ring.authenticate(key_a) == rec_a
    assert ring.authenticate(key_b) == rec_b
    assert ring.authenticate(key_a + "x") is None
    assert ring.authenticate(key_a[:-1]) is None
    assert ring.authenticate(rec_a.sha256) is None  # the hash is not the key
    assert ring.authenticate("") is None
    assert KeyRing().authenticate(key_a) is None


def test_keyring_without_revoked_record_rejects_its_key() -> None:
    key_a, rec_a = new_key("a", ["segments:read"])
    key_b, rec_b = new_key("b", ["segments:read"])
    ring = KeyRing(r for r in [rec_a, rec_b] if r.name != "a")
    assert ring.authenticate(key_a) is None
    assert ring.authenticate(key_b) == rec_b


def test_keyring_rejects_duplicate_names_and_hashes() -> None:
    _, rec = new_key("dup", ["admin"])
    _, other = new_key("dup", ["segments:read"])
    with pytest.raises(ValueError, match="duplicate API key name 'dup'"):
        KeyRing([rec, other])
    same_key = rec.model_copy(update={"name": "alias"})
    with pytest.raises(ValueError, match="same key"):
        KeyRing([rec, same_key])


def test_demo_record() -> None:
    record = demo_record()
    assert record.name == "demo"
    assert record.scopes == (Scope.SEGMENTS_READ, Scope.EVENTS_WRITE, Scope.REPORTS_READ)
    assert record.sha256 == hash_key(DEMO_KEY)
    assert KeyRing([record]).authenticate(DEMO_KEY) == record
    assert not record.allows(Scope.ADMIN)


def test_dump_parse_round_trip_sorted() -> None:
    records = [new_key(n, ["admin", "segments:read"])[1] for n in ["zeta", "alpha", "mid"]]
    text = dump_records(records)
    parsed = parse_records(text, "test")
    assert [r.name for r in parsed] == ["alpha", "mid", "zeta"]
    assert sorted(records, key=lambda r: r.name) == parsed
    assert json.loads(text)[0]["scopes"] == ["admin", "segments:read"]
    assert dump_records(parsed) == text


def test_parse_blank_is_empty() -> None:
    assert parse_records("", "x") == []
    assert parse_records("  \n", "x") == []
    assert parse_records("[]", "x") == []


def test_parse_bad_json_names_source() -> None:
    with pytest.raises(KeyFileError, match=r"^STRATA_API_KEYS: not valid JSON \(line 1"):
        parse_records("[{", "STRATA_API_KEYS")


@pytest.mark.parametrize("text", ['{"name": "a"}', '"x"', "3"])
def test_parse_requires_a_list(text: str) -> None:
    with pytest.raises(KeyFileError, match=r"^f\.json: expected a JSON list"):
        parse_records(text, "f.json")


def test_parse_error_names_index_name_field_and_allowed_scopes() -> None:
    text = json.dumps([_entry(name="ok"), _entry(name="bad", scopes=["admin", "root"])])
    with pytest.raises(KeyFileError) as info:
        parse_records(text, "/data/api_keys.json")
    message = str(info.value)
    assert message.startswith("/data/api_keys.json: entry 1 ('bad'): field 'scopes'")
    assert "unknown scope 'root'" in message
    assert f"allowed scopes: {ALLOWED}" in message


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"scopes": ["admin"], "sha256": "0" * 64}, "entry 0: field 'name': missing"),
        (_entry(sha256="nothex"), "entry 0 ('crm'): field 'sha256': must be"),
        (_entry(scopes="admin"), "entry 0 ('crm'): field 'scopes': must be a list"),
        (_entry(scopes=[]), "entry 0 ('crm'): field 'scopes': needs at least one"),
        (_entry(key="stk_plain"), "entry 0 ('crm'): field 'key': unknown field; allowed fields"),
        (_entry(created_at="yesterday"), "field 'created_at': 'yesterday' is not an ISO"),
        ("not an object", "entry 0: expected an object, got str"),
    ],
)
def test_parse_error_messages(entry: object, expected: str) -> None:
    with pytest.raises(KeyFileError, match=r"^src: ") as info:
        parse_records(json.dumps([entry]), "src")
    assert expected in str(info.value)


def test_parse_rejects_duplicate_names() -> None:
    text = json.dumps([_entry(), _entry(sha256=hash_key("stk_y"))])
    with pytest.raises(KeyFileError, match=r"src: entry 1 \('crm'\): duplicate name 'crm'"):
        parse_records(text, "src")


def test_key_file_error_is_value_error() -> None:
    assert issubclass(KeyFileError, ValueError)
