"""`strata generate` end to end on a local Ray: warehouse, buckets, truth, determinism."""

from __future__ import annotations

import datetime as dt
import os
import posixpath
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from jobs import cli, generate
from jobs._errors import BucketTaskError
from jobs._runtime import map_buckets
from strata.ids import bucket_of
from strata.io.warehouse import Warehouse
from strata.settings import Settings
from tests.conftest import TEST_KEY

pytestmark = pytest.mark.integration

END = dt.date(2025, 10, 8)
USERS = 2000
DAYS = 14


def _run(settings: Settings, **kwargs: Any) -> generate.GenerateResult:
    args: dict[str, Any] = {"users": USERS, "days": DAYS, "seed": 11, "end": END}
    args.update(kwargs)
    return generate.run(settings, show_progress=False, **args)


def _files(wh: Warehouse) -> dict[tuple[str, int], bytes]:
    out = {}
    for t in ("events", "users"):
        for b in wh.buckets(t):
            (path,) = wh.bucket_files(t, b)
            out[(t, b)] = Path(path).read_bytes()
    return out


@pytest.fixture(scope="module")
def generated(ray_local: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Any]:
    settings = Settings(
        data=str(tmp_path_factory.mktemp("gen") / "data"),
        pseudonym_key=SecretStr(TEST_KEY),
        n_buckets=16,
    )
    return settings, _run(settings)


def test_manifest_counts_match_the_rows_read_back(generated: tuple[Settings, Any]) -> None:
    settings, result = generated
    wh = Warehouse(settings.data)
    events = wh.read_table("events")
    assert events.num_rows == result.events == sum(wh.bucket_rows("events").values())
    assert result.orders == result.event_counts["order"] > USERS * DAYS * 0.15
    assert sum(result.event_counts.values()) == result.events
    assert all(wh.is_sorted(t, b) for t in ("events", "users") for b in wh.buckets(t))
    write = wh.manifest["writes"][-1]
    assert write["source"] == "generate" and write["events_rows"] == result.events
    assert write["seed"] == 11 and write["window_end"] == END.isoformat()
    assert result.peak_worker_rss_mb > 0 and result.events_per_s > 0


def test_each_user_lives_in_exactly_its_own_bucket(generated: tuple[Settings, Any]) -> None:
    settings, _ = generated
    wh = Warehouse(settings.data)
    seen: dict[int, int] = {}
    for b in wh.buckets("events"):
        ids = np.unique(wh.read_bucket("events", b, ["user_id"])["user_id"].to_numpy())
        assert np.all(bucket_of(ids, 16) == b)
        for uid in ids:
            assert uid not in seen
            seen[int(uid)] = b
    users = wh.read_table("users")
    assert users.num_rows == USERS
    assert len(np.unique(users["user_id"].to_numpy())) == USERS
    assert set(seen) <= set(users["user_id"].to_pylist())


def test_truth_file_has_one_row_per_user(generated: tuple[Settings, Any]) -> None:
    settings, result = generated
    assert result.truth_path == posixpath.join(settings.data, "truth", "users.parquet")
    truth = pq.read_table(result.truth_path)
    assert truth.num_rows == USERS
    assert sorted(truth["raw_user_id"].to_pylist()) == sorted(
        str(10_000_001 + i) for i in range(USERS)
    )
    users = Warehouse(settings.data).read_table("users")
    assert set(truth["user_id"].to_pylist()) == set(users["user_id"].to_pylist())
    assert not any(p.name.startswith("_staging") for p in Path(result.truth_path).parent.iterdir())


def test_same_seed_gives_byte_identical_files_whatever_the_id_ranges(
    generated: tuple[Settings, Any], tmp_path: Path
) -> None:
    """One range of every id (the fixture's run) and ranges of 700 ids (3, the last shorter),
    on 2 CPUs and on 1: the same bytes in every part and in the truth file."""
    settings, first = generated
    other = Settings(data=str(tmp_path / "again"), pseudonym_key=SecretStr(TEST_KEY), n_buckets=16)
    second = _run(other, workers=1, range_users=700)
    assert (first.id_ranges, second.id_ranges) == (1, 3)
    assert _files(Warehouse(settings.data)) == _files(Warehouse(other.data))
    assert Path(first.truth_path).read_bytes() == Path(second.truth_path).read_bytes()
    assert [p.name for p in Path(second.truth_path).parent.iterdir()] == ["users.parquet"]


def test_non_empty_warehouse_needs_overwrite(ray_local: Any, settings: Settings) -> None:
    _run(settings, users=200, days=5)
    wh = Warehouse(settings.data)
    before = wh.manifest["writes"]
    with pytest.raises(generate.GenerateError, match="overwrite"):
        _run(settings, users=200, days=5)
    wh.reload()
    assert wh.manifest["writes"] == before
    old_files = {
        p for t in ("events", "users") for b in wh.buckets(t) for p in wh.bucket_files(t, b)
    }
    result = _run(settings, users=300, days=5, overwrite=True, seed=3)
    wh.reload()
    assert wh.read_table("users").num_rows == 300
    assert wh.read_table("events").num_rows == result.events
    assert all(not Path(p).exists() for p in old_files)


def test_command_line(ray_local: Any, tmp_path: Path) -> None:
    data = str(tmp_path / "cli")
    args = ["generate", "--data", data, "--users", "300", "--days", "7", "--end", "2025-10-08"]
    result = CliRunner().invoke(cli.app, [*args, "--buckets", "4"])
    assert result.exit_code == 0, result.output
    assert "events" in result.output and "orders" in result.output
    assert Warehouse(data).n_buckets == 4
    again = CliRunner().invoke(cli.app, args)
    assert again.exit_code == 2 and "--overwrite" in again.output


_generate_shard = generate.generate_shard
FAILING, WRITING = 1, 0  # the first two buckets: both run at once on the session's 2 CPUs
_WRITER_STARTED = "late-writer-started"


def _failing_shard(*args: Any) -> generate.ShardResult:
    """Bucket FAILING fails once bucket WRITING is busy writing into the staging folder; that
    one keeps writing until it is killed, as a slow shard still in flight does."""
    data_root, staging, bucket = args[0], args[2], args[3]
    marker = Path(data_root) / _WRITER_STARTED
    if bucket == FAILING:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        raise RuntimeError("disk on fire")
    result = _generate_shard(*args)
    if bucket == WRITING:
        deadline = time.monotonic() + 60
        i = 0
        while time.monotonic() < deadline:
            os.makedirs(staging, exist_ok=True)
            (Path(staging) / f"late-{i}").write_bytes(b"x")
            if i == 0:
                marker.touch()
            i += 1
    return result


def test_a_failing_task_fails_the_job_and_commits_nothing(
    ray_local: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing of a failed run is left, even from a task that was still writing when another
    failed: the job waits until the cancelled tasks have ended before it cleans up."""
    monkeypatch.setattr(generate, "generate_shard", _failing_shard)
    t0 = time.monotonic()
    with pytest.raises(generate.GenerateError, match=rf"bucket {FAILING} failed.*disk on fire"):
        _run(settings, users=400, days=3)
    assert time.monotonic() - t0 < 45  # the writer was killed, not waited out
    assert (Path(settings.data) / _WRITER_STARTED).exists()  # the race really was set up
    time.sleep(0.5)  # a writer still alive would recreate the staging folder by now
    wh = Warehouse(settings.data)
    assert wh.manifest["writes"] == []
    assert wh.read_table("events").num_rows == 0
    truth = Path(settings.data) / "truth"
    assert not (truth / "users.parquet").exists()
    assert not any(p.name.startswith("_staging") for p in truth.iterdir())


_pseudonymise_range = generate.pseudonymise_range


def _failing_range(*args: Any) -> Any:
    """Range 2 (submitted once range 0 or 1 is done) fails after both wrote their scratch files,
    which must go too; it leaves a marker that it saw them."""
    data_root, staging, index = args[0], args[1], args[2]
    if index == 2:
        files = [Path(staging) / "users" / f"range-00000{i}.bin" for i in (0, 1)]
        deadline = time.monotonic() + 60
        while not all(f.exists() for f in files) and time.monotonic() < deadline:
            time.sleep(0.01)
        if all(f.exists() for f in files):
            (Path(data_root) / "scratch-seen").touch()
        raise RuntimeError("hash unit on fire")
    return _pseudonymise_range(*args)


def test_a_failing_range_fails_the_job_and_leaves_no_scratch(
    ray_local: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(generate, "pseudonymise_range", _failing_range)
    with pytest.raises(
        generate.GenerateError, match=r"id range 2 \(users 200\.\.299\) failed.*hash unit on fire"
    ):
        _run(settings, users=400, days=3, range_users=100)
    assert (Path(settings.data) / "scratch-seen").exists()  # the scratch really was there
    wh = Warehouse(settings.data)
    assert wh.manifest["writes"] == [] and wh.read_table("events").num_rows == 0
    assert list((Path(settings.data) / "truth").iterdir()) == []


def _sleeper(i: int, marker: str) -> int:
    if i == 0:
        Path(marker).touch()
        time.sleep(60)
    deadline = time.monotonic() + 60
    while not Path(marker).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    raise RuntimeError(f"task {i} failed")


def test_map_buckets_returns_only_after_the_cancelled_tasks_ended(
    ray_local: Any, tmp_path: Path
) -> None:
    """The contract every fan-out (generate, train's examples) relies on for its cleanup."""
    task = ray_local.remote(num_cpus=1, max_retries=0)(_sleeper)
    refs: list[Any] = []
    marker = str(tmp_path / "started")

    def submit(i: int) -> Any:
        refs.append(task.remote(i, marker))
        return refs[-1]

    t0 = time.monotonic()
    with pytest.raises(BucketTaskError, match="task 1 failed") as err:
        map_buckets(ray_local, range(4), lambda i: i, submit, 4, "test", show_progress=False)
    assert err.value.bucket == 1 and time.monotonic() - t0 < 30
    ready, left = ray_local.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
    assert left == [] and len(ready) == 4
