"""`strata erase` input checks (exit 2 naming the problem) and the erasure's key matching."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from jobs import cli
from strata.io.erasure import _names_user, _user_of_key

runner = CliRunner()


def test_a_bad_line_of_the_ids_file_exits_2_naming_the_line(tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("10000001\n\n10000002 10000003\n")
    result = runner.invoke(cli.app, ["erase", "--data", str(tmp_path), "--from", str(ids)])
    assert result.exit_code == 2
    assert "line 3" in result.output and "Traceback" not in result.output


def test_users_must_come_from_exactly_one_option(tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("1\n")
    both = ["erase", "--data", str(tmp_path), "--user", "1", "--from", str(ids)]
    for args in (["erase", "--data", str(tmp_path)], both):
        result = runner.invoke(cli.app, args)
        assert result.exit_code == 2 and "--user ID... or --from FILE" in result.output
    bad = runner.invoke(cli.app, ["erase", "--data", str(tmp_path), "--user", "a/b"])
    assert bad.exit_code == 2 and "not a user id" in bad.output
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    none = runner.invoke(cli.app, ["erase", "--data", str(tmp_path), "--from", str(empty)])
    assert none.exit_code == 2 and "no user id" in none.output


def test_an_unknown_data_root_exits_2_before_erasing(tmp_path: Path) -> None:
    result = runner.invoke(cli.app, ["erase", "--data", str(tmp_path / "nope"), "--user", "1"])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_real_time_keys_are_matched_by_the_user_they_name() -> None:
    users = {42, 7}
    assert _user_of_key("{p3}:u:42", users) == ("u", 42)
    assert _user_of_key("{p0}:live:7", users) == ("live", 7)
    assert _user_of_key("{p1}:exposed:exp:a:b:42", users) == ("exposed", 42)
    assert _user_of_key("{p5}:idem:win_back:42:2026-10-01:x", users) == ("idem", 42)
    assert _user_of_key("reserve:{win_back:2026-10-01}:win_back:7:e1", users) == ("reserve", 7)
    assert _user_of_key("{p2}:u:420", users) is None  # another user
    assert _user_of_key("{p2}:idem:win_back:420:42", users) is None  # 42 is the instance here
    assert _user_of_key("{p2}:seen:42", users) is None and _user_of_key("{p2}:stats", users) is None
    assert _user_of_key("{p2}:due", users) is None and _user_of_key("rules", users) is None
    # the old untagged names are not user keys of this layout (see docs/realtime.md)
    assert _user_of_key("u:42", users) is None
    assert _user_of_key("reserve:{win_back:2026-10-01}", users) is None
    assert _names_user({b"e": b'{"ts":1,"user_id":42}'}, users)
    assert not _names_user({b"e": b'{"user_id":420}'}, users)
    assert not _names_user(None, users)
