"""`strata keys` and the key file: create / list / revoke, and load_keyring's sources."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from jobs import keys
from jobs._errors import USER_ERROR_EXIT, UserErrorsGroup
from strata.io.keyfile import KeyFile, load_keyring
from strata.serving.apikeys import DEMO_KEY, KeyFileError, dump_records, hash_key, new_key
from strata.settings import Settings

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STRATA_API_KEYS", "STRATA_API_KEYS_FILE", "STRATA_DATA"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def app() -> typer.Typer:
    """A throwaway root app with the sub-app registered as jobs/cli.py will do it (and its
    handling of user errors: one message on stderr, exit 2)."""
    root = typer.Typer(cls=UserErrorsGroup)
    root.add_typer(keys.app, name="keys")

    @root.command()
    def other() -> None:  # a second command, so `keys` stays a sub-command group
        pass

    return root


def _create(app: typer.Typer, data: Path | str, *args: str) -> str:
    result = runner.invoke(app, ["keys", "create", "--data", str(data), *args])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout  # the key alone on stdout
    return lines[0]


def test_create_prints_key_once_that_authenticates(app: typer.Typer, tmp_path: Path) -> None:
    data = tmp_path / "data"  # not there yet: created with the key file
    result = runner.invoke(
        app,
        ["keys", "create", "--data", str(data), "--scope", "segments:read", "--name", "crm"],
    )
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    assert key.startswith("stk_")
    assert result.output.count(key) == 1
    assert "not stored" in result.stderr

    record = load_keyring(Settings(data=str(data))).authenticate(key)
    assert record is not None
    assert record.name == "crm"
    assert record.allows("segments:read")
    assert not record.allows("events:write")


def test_key_file_is_private_and_holds_only_the_hash(app: typer.Typer, tmp_path: Path) -> None:
    key = _create(app, tmp_path, "--scope", "admin", "--scope", "events:write")
    path = tmp_path / "api_keys.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert key not in text
    assert key[len("stk_") :] not in text
    (entry,) = json.loads(text)
    assert entry["sha256"] == hash_key(key)
    assert entry["scopes"] == ["admin", "events:write"]
    assert entry["name"].startswith("key-") and len(entry["name"]) == len("key-") + 8
    # no temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["api_keys.json", "api_keys.json.lock"]


def test_create_unknown_scope_fails(app: typer.Typer, tmp_path: Path) -> None:
    result = runner.invoke(app, ["keys", "create", "--data", str(tmp_path), "--scope", "root"])
    assert result.exit_code == 2
    assert "segments:read" in result.output
    assert not (tmp_path / "api_keys.json").exists()


def test_create_needs_a_scope(app: typer.Typer, tmp_path: Path) -> None:
    result = runner.invoke(app, ["keys", "create", "--data", str(tmp_path)])
    assert result.exit_code == 2
    assert "--scope" in result.output


def test_create_bad_or_taken_name_exits_2(app: typer.Typer, tmp_path: Path) -> None:
    _create(app, tmp_path, "--scope", "admin", "--name", "ops")
    taken = runner.invoke(
        app, ["keys", "create", "--data", str(tmp_path), "--scope", "admin", "--name", "ops"]
    )
    assert taken.exit_code == USER_ERROR_EXIT
    assert "exists already" in taken.output
    assert taken.stdout == ""  # no key printed for a key that was not stored
    bad = runner.invoke(
        app, ["keys", "create", "--data", str(tmp_path), "--scope", "admin", "--name", "a b"]
    )
    assert bad.exit_code == USER_ERROR_EXIT
    assert "invalid name" in bad.output
    assert len(KeyFile(tmp_path / "api_keys.json").read()) == 1


def test_create_refuses_a_name_taken_in_env(
    app: typer.Typer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRATA_API_KEYS", dump_records([new_key("ops", ["admin"])[1]]))
    result = runner.invoke(
        app, ["keys", "create", "--data", str(tmp_path), "--scope", "admin", "--name", "ops"]
    )
    assert result.exit_code == USER_ERROR_EXIT
    assert "STRATA_API_KEYS" in result.output


def test_list_shows_records_never_keys(app: typer.Typer, tmp_path: Path) -> None:
    key = _create(app, tmp_path, "--scope", "segments:read", "--name", "crm")
    _create(app, tmp_path, "--scope", "admin", "--name", "ops")
    result = runner.invoke(app, ["keys", "list", "--data", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "crm" in result.output and "ops" in result.output
    assert "segments:read" in result.output
    assert hash_key(key)[:8] in result.output
    assert hash_key(key) not in result.output
    assert key not in result.output
    assert key[len("stk_") : len("stk_") + 8] not in result.output


def test_list_empty(app: typer.Typer, tmp_path: Path) -> None:
    result = runner.invoke(app, ["keys", "list", "--data", str(tmp_path)])
    assert result.exit_code == 0
    assert "no API keys" in result.output


def test_list_bad_file_exits_2(app: typer.Typer, tmp_path: Path) -> None:
    (tmp_path / "api_keys.json").write_text("[{")
    result = runner.invoke(app, ["keys", "list", "--data", str(tmp_path)])
    assert result.exit_code == USER_ERROR_EXIT
    assert "not valid JSON" in result.output


def test_revoke(app: typer.Typer, tmp_path: Path) -> None:
    key_crm = _create(app, tmp_path, "--scope", "segments:read", "--name", "crm")
    key_ops = _create(app, tmp_path, "--scope", "admin", "--name", "ops")
    result = runner.invoke(app, ["keys", "revoke", "crm", "--data", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "revoked" in result.output

    ring = load_keyring(Settings(data=str(tmp_path)))
    assert ring.authenticate(key_crm) is None
    assert ring.authenticate(key_ops) is not None
    assert stat.S_IMODE((tmp_path / "api_keys.json").stat().st_mode) == 0o600


def test_revoke_unknown_exits_2(app: typer.Typer, tmp_path: Path) -> None:
    _create(app, tmp_path, "--scope", "admin", "--name", "ops")
    result = runner.invoke(app, ["keys", "revoke", "nope", "--data", str(tmp_path)])
    assert result.exit_code == USER_ERROR_EXIT
    assert "no API key named 'nope'" in result.output
    assert [r.name for r in KeyFile(tmp_path / "api_keys.json").read()] == ["ops"]


def test_revoke_without_key_file_exits_2(app: typer.Typer, tmp_path: Path) -> None:
    result = runner.invoke(app, ["keys", "revoke", "nope", "--data", str(tmp_path / "d")])
    assert result.exit_code == USER_ERROR_EXIT
    assert not (tmp_path / "d").exists()  # nothing created


def test_remote_data_root_asks_for_keys_file(
    app: typer.Typer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for args in (["create", "--scope", "admin"], ["revoke", "x"]):
        result = runner.invoke(app, ["keys", *args, "--data", "s3://bucket/strata"])
        assert result.exit_code == USER_ERROR_EXIT
        assert "STRATA_API_KEYS_FILE" in result.output

    keys_file = tmp_path / "secrets" / "keys.json"
    monkeypatch.setenv("STRATA_API_KEYS_FILE", str(keys_file))
    key = _create(app, "s3://bucket/strata", "--scope", "admin")
    assert keys_file.exists()
    assert load_keyring(Settings(data="s3://bucket/strata")).authenticate(key) is not None


def test_load_keyring_merges_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file_key, file_rec = new_key("file-key", ["segments:read"])
    KeyFile(tmp_path / "api_keys.json").add(file_rec)
    env_key, env_rec = new_key("env-key", ["events:write"])
    monkeypatch.setenv("STRATA_API_KEYS", dump_records([env_rec]))

    ring = load_keyring(Settings(data=str(tmp_path)))
    assert len(ring) == 2
    assert ring.authenticate(file_key) == file_rec
    assert ring.authenticate(env_key) == env_rec


def test_load_keyring_env_only_without_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_key, env_rec = new_key("env-key", ["events:write"])
    monkeypatch.setenv("STRATA_API_KEYS", dump_records([env_rec]))
    assert load_keyring(Settings(data="s3://bucket/x")).authenticate(env_key) == env_rec
    assert load_keyring(Settings(data=str(tmp_path / "missing"))).authenticate(env_key)


def test_load_keyring_name_in_file_and_env_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    KeyFile(tmp_path / "api_keys.json").add(new_key("ops", ["admin"])[1])
    monkeypatch.setenv("STRATA_API_KEYS", dump_records([new_key("ops", ["segments:read"])[1]]))
    with pytest.raises(KeyFileError, match=r"'ops' is defined in both .*api_keys\.json and STRATA"):
        load_keyring(Settings(data=str(tmp_path)))


def test_load_keyring_bad_env_names_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRATA_API_KEYS", '[{"name": "x", "scopes": ["god"], "sha256": "0"}]')
    with pytest.raises(KeyFileError, match=r"^STRATA_API_KEYS: entry 0 \('x'\): field 'scopes'"):
        load_keyring(Settings(data=str(tmp_path)))


def test_demo_key_only_in_demo_mode(tmp_path: Path) -> None:
    settings = Settings(data=str(tmp_path))
    assert load_keyring(settings).authenticate(DEMO_KEY) is None
    record = load_keyring(settings, demo=True).authenticate(DEMO_KEY)
    assert record is not None
    assert record.name == "demo"
    assert record.allows("segments:read")
    assert not record.allows("admin")


def test_key_file_add_revoke(tmp_path: Path) -> None:
    key_file = KeyFile(tmp_path / "deep" / "dir" / "keys.json")
    assert key_file.read() == []
    assert key_file.revoke("x") is False
    _, rec = new_key("x", ["admin"])
    key_file.add(rec)
    with pytest.raises(KeyFileError, match="'x' exists already"):
        key_file.add(new_key("x", ["segments:read"])[1])
    assert key_file.read() == [rec]
    assert key_file.revoke("x") is True
    assert key_file.read() == []
    assert stat.S_IMODE(key_file.path.stat().st_mode) == 0o600
