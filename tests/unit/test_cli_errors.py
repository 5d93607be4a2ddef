"""User errors of every command family are one short message and exit 2, never a traceback
(unless ``--debug`` / ``STRATA_DEBUG=1``); bugs keep their traceback.

Each test drives the real ``strata`` app (``jobs.cli.app``) with typer's CliRunner, with a
temporary copy of configs/ holding a typo (``STRATA_CONFIG_DIR`` or ``--config-dir``), an empty
data root, a bad file, or a Redis URL on a closed loopback port. None of them starts Ray.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from jobs import cli, demo, serve
from jobs._errors import USER_ERROR_EXIT, CommandError, user_error_message
from jobs.recompute import RecomputeError
from strata.config import CONFIG_DIR, ConfigError
from strata.io.redis_server import free_port
from strata.io.warehouse import WarehouseError
from strata.serving.apikeys import dump_records, new_key

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STRATA_DEBUG", "STRATA_CONFIG_DIR", "STRATA_REDIS_URL", "STRATA_API_KEYS"):
        monkeypatch.delenv(name, raising=False)


def _configs(tmp_path: Path, name: str, old: str, new: str) -> Path:
    """A copy of configs/ with ``old`` replaced by ``new`` (once) in ``<name>.yaml``."""
    out = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, out)
    path = out / f"{name}.yaml"
    text = path.read_text()
    assert old in text, (name, old)
    path.write_text(text.replace(old, new, 1))
    return out


def _user_error(result: Result, *expected: str) -> str:
    """Assert exit 2 and a short message without traceback; return the message."""
    out = result.output
    assert result.exit_code == USER_ERROR_EXIT, out
    assert result.exception is None or isinstance(result.exception, SystemExit), out
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 3, out
    assert lines[-1].startswith("error: "), out
    for text in expected:
        assert text in out, (text, out)
    return out


def _debug_raises(args: list[str], exc_type: type[BaseException]) -> None:
    """With --debug the error propagates (Python prints its traceback)."""
    result = runner.invoke(cli.app, ["--debug", *args])
    assert isinstance(result.exception, exc_type), result.output


# ---------------------------------------------------------------------------- recompute
def test_recompute_config_typo_is_one_line_naming_file_key_and_allowed_keys(
    tmp_path: Path,
) -> None:
    configs = _configs(tmp_path, "tiers", "  recency: 0.4", "  recncy: 0.4")
    args = ["recompute", "--data", str(tmp_path / "d"), "--as-of", "2024-01-01"]
    result = runner.invoke(cli.app, [*args, "--config-dir", str(configs)])
    out = _user_error(result)
    assert out.strip() == (
        f"error: invalid config {configs / 'tiers.yaml'}: weights.recncy: unknown key 'recncy' "
        "(did you mean 'recency'?); allowed keys: frequency, monetary, recency"
    )
    _debug_raises([*args, "--config-dir", str(configs)], ConfigError)


def test_recompute_on_an_empty_folder_and_rollback_without_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(cli.app, ["recompute", "--data", str(empty), "--as-of", "2024-01-01"])
    _user_error(result, "no warehouse at", "strata generate", "strata import")
    monkeypatch.setenv("STRATA_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    result = runner.invoke(cli.app, ["rollback", "--data", str(empty)])
    _user_error(result, "Redis is unreachable", "STRATA_REDIS_URL")


# ---------------------------------------------------------------------------- generate
def test_generate_config_typo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    configs = _configs(tmp_path, "generator", "    share: 0.14", "    shares: 0.14")
    monkeypatch.setenv("STRATA_CONFIG_DIR", str(configs))
    args = ["generate", "--data", str(tmp_path / "d"), "--users", "10", "--days", "2"]
    _user_error(runner.invoke(cli.app, args), "generator.yaml", "'shares'", "allowed keys")
    assert not (tmp_path / "d").exists()
    _debug_raises(args, ConfigError)


# ---------------------------------------------------------------------------- import
def test_import_mapping_typo_and_missing_file(tmp_path: Path) -> None:
    mapping = tmp_path / "map.yaml"
    mapping.write_text("user_column: uid\ntime_col: ts\namount_col: amt\n")
    data = ["--data", str(tmp_path / "d")]
    args = ["import", str(tmp_path / "x.csv"), *data, "--mapping", str(mapping)]
    _user_error(runner.invoke(cli.app, args), "map.yaml", "'user_column'", "user_col")
    mapping.write_text("user_col: uid\ntime_col: ts\namount_col: amt\n")
    _user_error(runner.invoke(cli.app, args), "x.csv: no such file")


# ---------------------------------------------------------------------------- train / models
def test_train_config_typo_and_models_of_an_unreadable_registry(tmp_path: Path) -> None:
    configs = _configs(tmp_path, "train", "horizon_days:", "horizon_dayz:")
    args = ["train", "--data", str(tmp_path / "d"), "--as-of", "2024-01-01"]
    _user_error(
        runner.invoke(cli.app, [*args, "--config-dir", str(configs)]),
        "train.yaml",
        "'horizon_dayz'",
        "did you mean 'horizon_days'",
    )
    result = runner.invoke(cli.app, [*args])  # valid configs, nothing in the warehouse
    _user_error(result, "no warehouse at")


# ---------------------------------------------------------------------------- serve
def test_serve_without_api_keys_or_redis_fails_before_ray(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_ray(*_args: object, **_kw: object) -> None:
        raise AssertionError("Ray started before the inputs were checked")

    monkeypatch.setattr(serve, "ray_session", no_ray)
    result = runner.invoke(cli.app, ["serve", "--data", str(tmp_path / "d")])
    _user_error(result, "no API keys", "strata keys create")
    _debug_raises(["serve", "--data", str(tmp_path / "d")], CommandError)
    monkeypatch.setenv("STRATA_API_KEYS", dump_records([new_key("ops", ["admin"])[1]]))
    monkeypatch.setenv("STRATA_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    result = runner.invoke(cli.app, ["serve", "--data", str(tmp_path / "d")])
    _user_error(result, "Redis is unreachable", "127.0.0.1")


@pytest.mark.parametrize(
    ("name", "old", "new", "expected"),
    [
        ("strategies", "trigger_rules: [visit_streak_3d", "trigger_rules: [visit_streak_9d",
         "strategies.3.trigger_rules: unknown rule 'visit_streak_9d'"),
        ("experiments", "control: control", "control: nobody", "experiments.0"),
    ],
)  # fmt: skip
def test_serve_with_a_bad_playbook_fails_before_ray(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, old: str, new: str, expected: str
) -> None:
    def no_ray(*_args: object, **_kw: object) -> None:
        raise AssertionError("Ray started before the inputs were checked")

    monkeypatch.setattr(serve, "ray_session", no_ray)
    monkeypatch.setenv("STRATA_CONFIG_DIR", str(_configs(tmp_path, name, old, new)))
    result = runner.invoke(cli.app, ["serve", "--data", str(tmp_path / "d")])
    _user_error(result, f"{name}.yaml", expected)


# ---------------------------------------------------------------------------- keys
def test_keys_list_with_a_broken_key_file(tmp_path: Path) -> None:
    (tmp_path / "api_keys.json").write_text("[{")
    result = runner.invoke(cli.app, ["keys", "list", "--data", str(tmp_path)])
    _user_error(result, "not valid JSON")


# ------------------------------------------------------------------ compact / info / vacuum
@pytest.mark.parametrize("command", ["compact", "info", "vacuum"])
def test_warehouse_commands_on_an_empty_folder(tmp_path: Path, command: str) -> None:
    result = runner.invoke(cli.app, [command, "--data", str(tmp_path)])
    _user_error(result, "no warehouse at", str(tmp_path))
    _debug_raises([command, "--data", str(tmp_path)], WarehouseError)


# ---------------------------------------------------------------------------- demo
def test_demo_config_typo_fails_before_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    configs = _configs(tmp_path, "lifecycle", "\n", "\nlifecylce_typo: 1\n")
    monkeypatch.setenv("STRATA_CONFIG_DIR", str(configs))

    def no_ray(*_args: object, **_kw: object) -> None:
        raise AssertionError("Ray started before the configs were checked")

    monkeypatch.setattr(demo, "ray_session", no_ray)
    result = runner.invoke(cli.app, ["demo", "--data", str(tmp_path / "d"), "--no-serve"])
    _user_error(result, "lifecycle.yaml", "'lifecylce_typo'")


def test_invalid_settings_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRATA_N_BUCKETS", "0")
    result = runner.invoke(cli.app, ["demo", "--data", str(tmp_path / "d"), "--no-serve"])
    _user_error(result, "invalid Settings", "STRATA_", "n_buckets")


# ---------------------------------------------------------------------------- mechanism
def test_bugs_keep_their_traceback_and_ray_wrappers_are_unwrapped() -> None:
    from ray.exceptions import RayTaskError

    assert user_error_message(KeyError("x")) is None
    try:
        raise RecomputeError("recompute failed, nothing published: 'x'") from KeyError("x")
    except RecomputeError as wrapped_bug:
        assert user_error_message(wrapped_bug) is None
    cause = ConfigError("invalid config tiers.yaml: weights: unknown key")
    remote = RayTaskError("features", "Traceback (most recent call last): ...", cause)
    as_raised = remote.as_instanceof_cause()  # what ray.get raises
    assert user_error_message(as_raised) == str(cause)
    try:
        raise RecomputeError(f"recompute failed, nothing published: {cause}") from as_raised
    except RecomputeError as job_error:
        assert user_error_message(job_error) == f"recompute failed, nothing published: {cause}"
    assert user_error_message(RecomputeError("the warehouse holds no events")) is not None


def test_an_actor_whose_init_raised_a_domain_error_gives_that_message() -> None:
    from ray.exceptions import ActorDiedError, RayTaskError

    cause = WarehouseError("no warehouse at /x (missing manifest.json)")
    traceback_text = (
        'Traceback (most recent call last):\n  File "actors/feature_shard.py", line 1\n'
        f"strata.io.warehouse.WarehouseError: {cause}"
    )
    died = ActorDiedError(RayTaskError("FeatureShardActor.__init__", traceback_text, cause))
    assert died.actor_init_failed
    assert user_error_message(died) == str(cause)
    bug = RayTaskError("FeatureShardActor.__init__", "...\nKeyError: 'x'", KeyError("x"))
    assert user_error_message(ActorDiedError(bug)) is None


def test_module_entry_point_short_message_and_debug_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "STRATA_PSEUDONYM_KEY": "k" * 20}
    env.pop("STRATA_DEBUG", None)
    args = [
        sys.executable,
        "-m",
        "jobs.recompute",
        "--data",
        str(tmp_path),
        "--as-of",
        "2024-01-01",
    ]
    short = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert short.returncode == USER_ERROR_EXIT, short.stderr
    assert short.stderr.startswith("error: no warehouse at") and "Traceback" not in short.stderr
    debug = subprocess.run(
        args, cwd=REPO, env={**env, "STRATA_DEBUG": "1"}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "WarehouseError: no warehouse at" in debug.stderr


# ---------------------------------------------------------------------------- real-time loop
def test_stream_with_a_malformed_rule_fails_before_redis_and_ray(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobs import stream

    configs = _configs(tmp_path, "triggers", "    cooldown: 24h", "    cooldwn: 24h")
    monkeypatch.setenv("STRATA_CONFIG_DIR", str(configs))

    def nothing(*_args: object, **_kw: object) -> None:
        raise AssertionError("Redis or Ray started before the rules were checked")

    monkeypatch.setattr(stream, "redis_session", nothing)
    monkeypatch.setattr(stream, "ray_session", nothing)
    result = runner.invoke(cli.app, ["stream", "--data", str(tmp_path / "d")])
    _user_error(result, "triggers.yaml", "'cooldwn'", "cooldown")


def test_campaigns_run_with_a_bad_date_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(
        cli.app, ["campaigns", "run", "--data", str(tmp_path), "--date", "2026-13-01"]
    )
    assert result.exit_code == 2, result.output
    assert "2026-13-01" in result.output and "Traceback" not in result.output
