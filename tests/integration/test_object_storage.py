"""The data root on S3 (moto's standalone server on loopback, through pyarrow's S3FileSystem):
generate, import, recompute (snapshot on S3, published to Redis, byte-identical to a local
root), train (model on S3, used by the next recompute) and the API over that root; the
atomic manifest commit where the store has no rename; folders, listings and deletes on a
store that has no directories."""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import json
import os
import posixpath
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from typer.testing import CliRunner

from api.app import create_app
from jobs import cli, generate, ingest, train
from jobs._recompute_report import RecomputeResult
from jobs._train_report import TrainResult
from jobs.recompute import RecomputeJob
from strata.config import CONFIG_DIR
from strata.ids import pseudonymise
from strata.ingest import load_mapping
from strata.io.forget import expire_snapshots
from strata.io.models import ModelRegistry
from strata.io.paths import complete_folders
from strata.io.reports import ReportStore
from strata.io.snapshots import SnapshotStore
from strata.io.warehouse import (
    MANIFEST,
    Warehouse,
    WarehouseError,
    commit_file,
    read_committed,
    resolve,
)
from strata.privacy.retention import RetentionConfig
from strata.serving.apikeys import dump_records, new_key
from strata.settings import Settings
from strata.timeutil import parse_as_of
from tests.conftest import TEST_KEY
from tests.s3server import MotoS3Server

pytestmark = pytest.mark.integration

# Ray's worker processes read S3 too: local Ray passes them the environment it started with,
# so the (dummy) credentials are set when this module is collected, before any test starts
# Ray. The endpoint travels in the data-root URI itself (MotoS3Server.uri).
for _name, _value in MotoS3Server.credentials_env().items():
    os.environ.setdefault(_name, _value)

BUCKET = "strata-test"
END = dt.date(2026, 10, 1)
AS_OF = parse_as_of("2026-10-01")
LATER = parse_as_of("2026-10-02")
HORIZON = 14
USERS, DAYS, BUCKETS = 500, 60, 8
NOW_MS = 1_790_812_800_000  # 2026-10-01T00:00:00Z: no imported order is in the future
runner = CliRunner()


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoS3Server]:
    with MotoS3Server() as server:
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The shipped configs with training over 2 cutoffs 14 days apart (60 days of history),
    20 rounds at most."""
    folder = tmp_path_factory.mktemp("s3cfg") / "configs"
    shutil.copytree(CONFIG_DIR, folder)
    path = folder / "train.yaml"
    text = path.read_text()
    text = re.sub(r"(?m)^cutoffs: 4 ", "cutoffs: 2 ", text)
    text = re.sub(r"(?m)^cutoff_step_days: 30 ", "cutoff_step_days: 14 ", text)
    # few rounds: this test is about where the model is stored, not how good it is
    text = re.sub(r"(?m)^  num_boost_round: 400", "  num_boost_round: 20", text)
    text = re.sub(r"(?m)^  early_stopping_rounds: 30 ", "  early_stopping_rounds: 5 ", text)
    assert ("cutoffs: 2 " in text and "cutoff_step_days: 14 " in text
            and "num_boost_round: 20" in text), "configs/train.yaml changed its layout"  # fmt: skip
    path.write_text(text)
    return str(folder)


def _orders_csv(path: Path) -> Path:
    lines = ["uid,paid_at,amount"]
    for u in range(40):
        for k in range(1 + u % 3):
            lines.append(f"{9000 + u},2026-09-{1 + (u + 9 * k) % 28:02d} 1{k}:00:00,{12 + u}.5")
    path.write_text("\n".join(lines) + "\n")
    return path


def _settings(data: str, redis_url: str | None = None, **kw: Any) -> Settings:
    key = SecretStr(TEST_KEY)
    return Settings(data=data, pseudonym_key=key, n_buckets=BUCKETS, redis_url=redis_url, **kw)


def _load(settings: Settings, csv: Path, timings: dict[str, float]) -> None:
    """generate + import, timed."""
    t0 = time.perf_counter()
    generate.run(settings, users=USERS, days=DAYS, seed=5, end=END, show_progress=False)
    timings["generate_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    mapping = load_mapping(None, user_col="uid", time_col="paid_at", amount_col="amount")
    ingest.run(settings, [str(csv)], mapping, now_ms=NOW_MS, show_progress=False)
    timings["import_s"] = time.perf_counter() - t0


class Run:
    """One pipeline over one data root: what each stage produced and how long it took."""

    def __init__(self, data: str) -> None:
        self.data = data
        self.timings: dict[str, float] = {}
        self.first: RecomputeResult | None = None
        self.trained: TrainResult | None = None
        self.second: RecomputeResult | None = None


@pytest.fixture(scope="module")
def on_s3(
    s3: MotoS3Server,
    config_dir: str,
    tmp_path_factory: pytest.TempPathFactory,
    ray_local: Any,
    redis_server: Any,
) -> Run:
    """generate, import, recompute + publish, train, recompute with the model: all on S3."""
    run = Run(s3.uri(BUCKET, "strata"))
    settings = _settings(run.data, redis_server.url)
    _load(settings, _orders_csv(tmp_path_factory.mktemp("s3csv") / "orders.csv"), run.timings)
    t0 = time.perf_counter()
    run.first = RecomputeJob(settings, AS_OF, actors=2, config_dir=config_dir).run()
    run.timings["recompute_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    run.trained = train.run(
        settings, AS_OF, HORIZON, actors=2, config_dir=config_dir, show_progress=False
    )
    run.timings["train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    run.second = RecomputeJob(settings, LATER, actors=2, config_dir=config_dir).run()
    run.timings["recompute_with_model_s"] = time.perf_counter() - t0
    return run


@pytest.fixture(scope="module")
def on_disk(config_dir: str, tmp_path_factory: pytest.TempPathFactory, ray_local: Any) -> Run:
    """The same generate, import and first recompute on a local root (not published)."""
    base = tmp_path_factory.mktemp("s3local")
    run = Run(str(base / "data"))
    settings = _settings(run.data)
    _load(settings, _orders_csv(base / "orders.csv"), run.timings)
    t0 = time.perf_counter()
    run.first = RecomputeJob(settings, AS_OF, actors=2, config_dir=config_dir, publish=False).run()
    run.timings["recompute_s"] = time.perf_counter() - t0
    return run


def _feature_files(data: str, version: str) -> dict[str, str]:
    """sha256 of every file of a snapshot's features dataset, by path under features/."""
    store = SnapshotStore(data)
    base = posixpath.join(store.path(version), "features")
    out = {}
    for info in store.fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        if info.type == pafs.FileType.File:
            with store.fs.open_input_stream(info.path) as f:
                out[posixpath.relpath(info.path, base)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _boto_credentials() -> dict[str, str]:
    env = MotoS3Server.credentials_env()
    return {
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env["AWS_REGION"],
    }


def _events(ids: np.ndarray) -> pa.Table:
    """Purchase events of ``ids``, one each (the other columns are filled in by the schema)."""
    ts = pa.array(ids * 1000 + NOW_MS, pa.timestamp("ms", tz="UTC"))
    return pa.table({"user_id": ids, "ts": ts, "event_type": ["purchase"] * len(ids)})


def _keys(s3: MotoS3Server, prefix: str, bucket: str = BUCKET) -> list[str]:
    fs = s3.filesystem()
    selector = pafs.FileSelector(f"{bucket}/{prefix}", allow_not_found=True, recursive=True)
    return sorted(i.path for i in fs.get_file_info(selector) if i.type == pafs.FileType.File)


def test_the_pipeline_runs_on_s3_and_its_snapshot_matches_a_local_root(
    s3: MotoS3Server, on_s3: Run, on_disk: Run
) -> None:
    wh = Warehouse(on_s3.data)
    assert [w["source"] for w in wh.manifest["writes"]] == ["generate", "import"]
    assert wh.manifest["writes"][-1]["events_rows"] == 79
    assert wh.summary() == Warehouse(on_disk.data).summary()
    keys = _keys(s3, "strata")
    assert f"{BUCKET}/strata/warehouse/manifest.json" in keys
    assert any(k.startswith(f"{BUCKET}/strata/truth/") for k in keys)
    # every commit wrote its final key: no temporary object is left behind on S3
    assert not [k for k in keys if k.endswith(".tmp")]

    assert on_s3.first is not None and on_disk.first is not None
    assert on_s3.first.published and on_s3.first.users == on_disk.first.users
    remote = _feature_files(on_s3.data, on_s3.first.version)
    assert len(remote) == BUCKETS
    assert remote == _feature_files(on_disk.data, on_disk.first.version)
    print(f"\nstage seconds, S3: {on_s3.timings}\nstage seconds, local: {on_disk.timings}")


def test_train_writes_a_loadable_model_to_s3_that_the_next_recompute_uses(on_s3: Run) -> None:
    assert on_s3.trained is not None and on_s3.second is not None
    assert on_s3.trained.status == "good", on_s3.trained.problems
    print(f"\ntrain timings on S3: {on_s3.trained.timings}")
    registry = ModelRegistry(on_s3.data)
    assert registry.latest_good() == on_s3.trained.version
    meta = registry.meta(on_s3.trained.version)
    loaded = registry.load(on_s3.trained.version)
    assert loaded.version == on_s3.trained.version and set(meta["files"]) == set(loaded.boosters)
    # the training scratch shards were removed from S3 after the good run
    fs, root = resolve(on_s3.data)
    assert fs.get_file_info(posixpath.join(root, "models", "_work")).type != pafs.FileType.File
    manifest = SnapshotStore(on_s3.data).manifest(on_s3.second.version)
    assert manifest["predictions"]["model_version"] == on_s3.trained.version
    table = SnapshotStore(on_s3.data).read(on_s3.second.version, ["churn_p"])
    assert table.column("churn_p").null_count < table.num_rows


def test_the_api_serves_segments_history_and_the_dashboard_from_s3(
    on_s3: Run, redis_server: Any
) -> None:
    assert on_s3.second is not None
    out = runner.invoke(
        cli.app, ["report", "tiers", "--data", on_s3.data, "--json", "--engine", "pandas"]
    )
    assert out.exit_code == 0, out.output
    report = orjson.loads(out.stdout)
    assert ReportStore(on_s3.data).versions() == [report["report_version"]]

    key, rec = new_key("s3", ["segments:read", "reports:read"])
    settings = _settings(on_s3.data, redis_server.url, api_keys=dump_records([rec]))
    auth = {"Authorization": f"Bearer {key}"}
    raw = "9007"
    uid = pseudonymise(raw, TEST_KEY.encode())
    snap = SnapshotStore(on_s3.data).read(on_s3.second.version, ["user_id", "tier"]).to_pylist()
    tier = next(r["tier"] for r in snap if r["user_id"] == uid)
    with TestClient(create_app(settings)) as client:
        seg = client.get(f"/v1/users/{raw}/segment", headers=auth)
        assert seg.status_code == 200, seg.text
        assert (seg.json()["version"], seg.json()["tier"]) == (on_s3.second.version, tier)
        hist = client.get(f"/v1/users/{raw}/history", headers=auth)
        assert hist.status_code == 200, hist.text
        versions = [e["version"] for e in hist.json()["entries"] if e["source"] == "snapshot"]
        assert on_s3.first is not None
        assert versions == [on_s3.second.version, on_s3.first.version]
        page = client.get("/dashboard", headers=auth)
        assert page.status_code == 200, page.text
        found = re.search(r'<script type="application/json" id="dash-data">(.*?)</script>',
                          page.text, re.S)  # fmt: skip
        assert found is not None
        view = orjson.loads(html.unescape(found.group(1)))["view"]
        assert view["report_version"] == report["report_version"]
        assert [s["version"] for s in view["snapshots"]] == [
            s["version"] for s in report["snapshots"]
        ]


def test_the_env_vars_alone_point_pyarrow_at_the_server(
    s3: MotoS3Server, on_s3: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an operator sets: AWS_ENDPOINT_URL and the credentials, a plain s3:// root."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    plain = f"s3://{BUCKET}/strata"
    assert Warehouse(plain).summary() == Warehouse(on_s3.data).summary()
    assert SnapshotStore(plain).versions() == SnapshotStore(on_s3.data).versions()


def test_manifest_commits_on_s3_are_atomic_for_a_polling_reader(
    s3: MotoS3Server, tmp_path: Path
) -> None:
    """A reader polling the warehouse manifest and the snapshot versions while `strata import`
    commits sees only complete manifests, each one of those committed (the bucket keeps every
    version of the object: S3 versioning); the same reader does see the gap of a
    delete-then-write (so it would catch a non-atomic commit)."""
    bucket = "strata-atomic"
    s3.create_bucket(bucket)
    client = boto3.client("s3", endpoint_url=s3.endpoint, **_boto_credentials())
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    data = s3.uri(bucket, "atomic")
    settings = _settings(data)
    snaps = SnapshotStore(data)
    mapping = load_mapping(None, user_col="uid", time_col="paid_at", amount_col="amount")
    stop = threading.Event()
    seen: dict[str, int] = {"reads": 0, "missing": 0, "unparsable": 0, "lists": 0}
    bodies: list[bytes] = []
    bad_listing: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:  # how every strata reader reads it: a fresh Warehouse, its manifest
                manifest = Warehouse(data).manifest
            except (FileNotFoundError, WarehouseError):  # none yet, or the control's gap
                seen["missing"] += 1
                continue
            except Exception:
                seen["unparsable"] += 1
                continue
            seen["reads"] += 1
            bodies.append(json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8"))
            for v in SnapshotStore(data).versions():  # every listed version reads whole
                try:
                    SnapshotStore(data).manifest(v)
                except Exception as exc:
                    bad_listing.append(f"{v}: {exc}")
            seen["lists"] += 1

    thread = threading.Thread(target=reader, daemon=True)
    # the first import reads its input file from the store too (a URI with a query string)
    with s3.filesystem().open_output_stream(f"{bucket}/in/first.csv") as f:
        f.write(_orders_csv(tmp_path / "first.csv").read_bytes())
    first = ingest.run(settings, [s3.uri(bucket, "in/first.csv")], mapping, now_ms=NOW_MS,
                       show_progress=False)  # fmt: skip
    assert (first.accepted, first.rejected) == (79, 0)
    thread.start()
    t0 = time.perf_counter()
    for i in range(10):
        csv = tmp_path / f"orders-{i}.csv"
        csv.write_text(f"uid,paid_at,amount\n{500 + i},2026-09-0{1 + i % 9} 10:00:00,{i}.5\n")
        ingest.run(settings, [str(csv)], mapping, now_ms=NOW_MS, show_progress=False)
        snaps.write_manifest(f"v{i:03d}", {"as_of_ms": i, "outputs": {"users": i}})
    commits_s = time.perf_counter() - t0
    stop.set()
    thread.join(timeout=30)

    key = f"atomic/warehouse/{MANIFEST}"
    versions = client.list_object_versions(Bucket=bucket, Prefix=key)["Versions"]
    committed = {
        client.get_object(Bucket=bucket, Key=key, VersionId=v["VersionId"])["Body"].read()
        for v in versions
    }
    assert len(committed) == 12  # the empty warehouse, the first import and ten more
    print(f"\n{seen} while 10 imports committed ({commits_s:.2f} s)")
    assert seen["reads"] >= 10 and seen["lists"] >= 10
    assert (seen["missing"], seen["unparsable"]) == (0, 0)
    assert [b for b in bodies if b not in committed] == []
    assert len(set(bodies)) > 3  # it saw the manifest change, not one version throughout
    assert bad_listing == []
    assert Warehouse(data).summary()["events"]["rows"] == 79 + 10
    assert snaps.versions() == [f"v{i:03d}" for i in range(10)]
    assert not [k for k in _keys(s3, "atomic", bucket) if k.endswith(".tmp")]

    # control: a delete-then-write commit leaves a gap this reader sees
    fs, _ = resolve(data)
    path = Warehouse(data).manifest_path
    stop.clear()
    seen.update(reads=0, missing=0)
    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    body = fs.open_input_stream(path).read()
    for _ in range(3):
        fs.delete_file(path)
        # the gap stays open until the reader has been through it (a cycle of the reader
        # also lists and reads every snapshot manifest: a fixed short gap can fall between
        # two of its manifest reads), or 2 s
        missing, deadline = seen["missing"], time.monotonic() + 2.0
        while seen["missing"] == missing and time.monotonic() < deadline:
            time.sleep(0.01)
        with fs.open_output_stream(path) as f:
            f.write(body)
        time.sleep(0.02)
    stop.set()
    thread.join(timeout=30)
    assert seen["missing"] > 0


def test_a_torn_read_is_read_again_and_a_corrupt_file_still_fails(
    s3: MotoS3Server, tmp_path: Path
) -> None:
    """read_committed on S3 re-reads when the bytes do not parse (the HEAD-then-GET race of a
    commit), and gives up on a file that never parses; locally it reads once."""
    data = s3.uri(BUCKET, "torn")
    fs, root = resolve(data)
    path = posixpath.join(root, "m.json")
    commit_file(fs, path, b'{"ok": 1}')
    calls: list[bytes] = []

    def flaky(raw: bytes) -> Any:
        calls.append(raw)
        if len(calls) < 3:
            raise ValueError("cut short")
        return json.loads(raw)

    assert read_committed(fs, path, flaky) == {"ok": 1} and len(calls) == 3
    commit_file(fs, path, b'{"ok": ')
    with pytest.raises(ValueError):
        read_committed(fs, path, json.loads)
    local = pafs.LocalFileSystem()
    calls.clear()
    lpath = str(tmp_path / "m.json")
    commit_file(local, lpath, b'{"ok": 1}')
    with pytest.raises(ValueError):
        read_committed(local, lpath, flaky)
    assert len(calls) == 1


def test_folders_listings_and_deletes_work_without_directories(s3: MotoS3Server) -> None:
    """S3 has no directories: a folder exists while a key is under it. Versions list only
    complete folders, retention and deletes remove whole prefixes, vacuum finds orphans."""
    data = s3.uri(BUCKET, "dirs")
    fs, root = resolve(data)
    snaps = SnapshotStore(data)
    for i in range(4):
        snaps.write_bucket(f"v{i}", 0, BUCKETS, pa.table({"user_id": [i]}))
        if i != 2:  # v2 has no manifest: an incomplete snapshot
            snaps.write_manifest(f"v{i}", {"as_of_ms": i})
    assert complete_folders(fs, snaps.root, "manifest.json") == ["v0", "v1", "v3"]
    assert snaps.versions() == ["v0", "v1", "v3"]
    assert complete_folders(fs, posixpath.join(root, "nothing-here"), "manifest.json") == []
    gone = expire_snapshots(data, RetentionConfig(snapshots_keep=2))
    assert gone == ["v0"] and snaps.versions() == ["v1", "v3"]
    assert not [k for k in _keys(s3, "dirs/snapshots/v0")]
    snaps.delete("v2")
    assert not _keys(s3, "dirs/snapshots/v2")

    wh = Warehouse(data, pseudonym_key=TEST_KEY.encode())
    wh.create(BUCKETS)
    ids = np.arange(1, 50, dtype=np.int64)
    table = _events(ids)
    wh.commit(wh.write_partitioned("events", table, "kept"), "import")
    orphans = wh.write_partitioned("events", table, "orphan")  # never committed
    removed = wh.vacuum()
    assert sorted(removed) == sorted(
        posixpath.join(wh.bucket_dir(p.table, p.bucket), p.name) for p in orphans.parts
    )
    assert wh.read_table("events").num_rows == len(ids)
    wh.create(BUCKETS, overwrite=True)  # drops the table folders (delete_dir on prefixes)
    assert not [k for k in _keys(s3, "dirs/warehouse") if k.endswith(".parquet")]
    assert Warehouse(data).summary()["events"]["rows"] == 0


def test_key_rotation_refuses_a_remote_data_root_with_a_clear_message(tmp_path: Path) -> None:
    """The one command that cannot work on S3 (it moves folders) says so, exit 2, no traceback."""
    link = tmp_path / "new.key"
    link.write_text("0123456789abcdef0123456789abcdef\n")
    out = runner.invoke(
        cli.app,
        ["rotate-key", "--data", "s3://nowhere/strata", "--new-key-file", str(link),
         "--as-of", "2026-10-01", "--no-publish"],
    )  # fmt: skip
    assert out.exit_code == 2, out.output
    assert "key rotation needs a local data root" in out.output
    assert "Traceback" not in out.output
