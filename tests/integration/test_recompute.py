"""Recompute job end to end on local Ray (2 CPUs) with a real embedded Redis."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pytest
import ray

from actors import feature_shard
from actors.feature_shard import FeatureShard
from jobs import generate
from jobs.recompute import RecomputeError, RecomputeJob
from strata.config import CONFIG_DIR, ConfigError
from strata.features import RfmPartials
from strata.io.segment_store import SegmentStore
from strata.io.snapshots import SnapshotStore
from strata.io.warehouse import Warehouse
from strata.settings import Settings
from strata.tiering.explain import explain, rules_from_meta
from strata.tiering.tiers import load_tier_rules
from strata.timeutil import parse_as_of
from tests.conftest import TEST_KEY

pytestmark = pytest.mark.integration

END = dt.date(2026, 10, 1)
AS_OF = parse_as_of("2026-10-01")
EARLIER = parse_as_of("2026-09-15")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def warehouse_root(tmp_path_factory: pytest.TempPathFactory, ray_local: Any) -> str:
    """One small generated warehouse shared by the module's tests (copied where mutated)."""
    root = str(tmp_path_factory.mktemp("recompute") / "data")
    settings = Settings(data=root, pseudonym_key=TEST_KEY, n_buckets=16)
    generate.run(settings, users=1500, days=120, seed=7, end=END)
    return root


def _copy(root: str, tmp_path: Path) -> Settings:
    target = tmp_path / "data"
    shutil.copytree(Path(root) / "warehouse", target / "warehouse")
    return Settings(data=str(target), pseudonym_key=TEST_KEY)


def _digests(settings: Settings, version: str) -> dict[str, str]:
    base = Path(SnapshotStore(settings.data).path(version)) / "features"
    return {
        str(p.relative_to(base)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(base.rglob("*.parquet"))
    }


def test_output_is_identical_for_1_2_4_actors(warehouse_root: str, tmp_path: Path) -> None:
    settings = _copy(warehouse_root, tmp_path)
    digests = []
    for n in (1, 2, 4):
        result = RecomputeJob(settings, AS_OF, actors=n, publish=False).run()
        digests.append(_digests(settings, result.version))
        assert result.users > 1000
    assert digests[0] == digests[1] == digests[2]
    assert len(digests[0]) == 16  # one file per bucket


def test_snapshot_columns_manifest_and_tiers(warehouse_root: str, tmp_path: Path) -> None:
    settings = _copy(warehouse_root, tmp_path)
    result = RecomputeJob(settings, AS_OF, actors=2, publish=False).run()
    snaps = SnapshotStore(settings.data)
    table = snaps.read(result.version)
    required = [
        "user_id",
        "tier",
        "lifecycle_stage",
        "rfm_r",
        "rfm_f",
        "rfm_m",
        "rfm_score",
        "recency_days",
        "frequency_90d",
        "monetary_90d",
        "first_order_ts",
        "last_order_ts",
        "btyd_frequency",
        "btyd_recency",
        "btyd_t",
        "btyd_monetary_value",
        "top_category",
        "price_sensitivity",
        "active_slot",
        "channel",
        "tier_rule",
        "tier_explanation",
    ]
    missing = [c for c in required if c not in table.column_names]
    assert not missing
    assert table.num_rows == result.users
    assert pc.count_distinct(table.column("user_id")).as_py() == table.num_rows
    manifest = snaps.manifest(result.version)
    assert manifest["outputs"]["users"] == result.users
    assert sum(manifest["outputs"]["tiers"].values()) == result.users
    assert manifest["config_sha256"] and manifest["as_of_ms"] == int(AS_OF.timestamp() * 1000)
    assert set(result.tiers) <= {"high_value", "potential", "ordinary", "churn_warning"}
    assert result.tiers.get("high_value", 0) > 0 and result.tiers.get("ordinary", 0) > 0
    score = table.column("rfm_score").to_numpy()
    tiers = table.column("tier").to_pylist()
    rules = table.column("tier_rule").to_pylist()
    for s, t, r in zip(score, tiers, rules, strict=True):
        if r == "score_band":
            assert (t == "high_value") == (s > 0.8)
    explanation = table.column("tier_explanation").to_pylist()
    assert all(e for e in explanation)


def test_publish_hysteresis_transitions_and_rollback(
    warehouse_root: str, tmp_path: Path, redis_url: str
) -> None:
    settings = _copy(warehouse_root, tmp_path).model_copy(update={"redis_url": redis_url})
    first = RecomputeJob(settings, EARLIER, actors=2).run()
    second = RecomputeJob(settings, AS_OF, actors=2).run()
    assert first.published and second.published
    assert second.previous_version == first.version
    assert sum(sum(row.values()) for row in second.transitions.values()) == second.users
    store = SegmentStore(redis_url, namespace="strata")
    assert store.current() == second.version
    snap = SnapshotStore(settings.data).read(second.version).slice(0, 50)
    version, records = store.get_many(snap.column("user_id").to_pylist())
    assert version == second.version
    for rec, tier, stage in zip(
        records,
        snap.column("tier").to_pylist(),
        snap.column("lifecycle_stage").to_pylist(),
        strict=True,
    ):
        assert rec is not None and rec["tier"] == tier and rec["lifecycle_stage"] == stage
    # the version carries what the online API needs to explain records and list the tiers
    info = store.info(second.version)
    assert info is not None
    rules = rules_from_meta(info.meta)
    assert rules == load_tier_rules()
    assert info.meta["tiers"] == second.tiers
    assert info.meta["lifecycle_stages"] == second.stages
    assert "model_version" in info.meta
    user_id = int(snap.column("user_id")[0].as_py())
    got = store.get(user_id)
    assert got is not None and got[0] == second.version
    assert got[1]["tier_rule"] == snap.column("tier_rule")[0].as_py()
    assert got[1]["tier_rule"] in {"score_band", "hysteresis_hold", "churn_warning"}
    why = explain(got[1], rules)
    assert (why.tier, why.rule) == (got[1]["tier"], got[1]["tier_rule"])
    assert store.rollback() == first.version
    assert store.current() == first.version
    store.close()


class _RecordingShard(FeatureShard):
    """A FeatureShard that notes every call as ``<data>/calls/<method>-<actor>-<pid>-<n>``;
    with ``<data>/calls/slow`` present, the first score call of the shard owning bucket 0
    stays in flight (sleeps) until it is killed."""

    def _note(self, method: str) -> int:
        calls = Path(self.data_root) / "calls"
        calls.mkdir(exist_ok=True)
        actor = ray.get_runtime_context().get_actor_id()
        n = len(list(calls.glob(f"{method}-{actor}-*")))
        (calls / f"{method}-{actor}-{os.getpid()}-{n}").touch()
        return n

    def features(self, fresh: bool = False) -> dict[str, Any]:
        self._note("features")
        return super().features(fresh)

    def score(
        self, partials: RfmPartials, version: str, previous_version: str | None
    ) -> dict[str, Any]:
        n = self._note("score")
        if n == 0 and 0 in self.buckets and (Path(self.data_root) / "calls" / "slow").exists():
            time.sleep(120)  # the kill lands in here
        return super().score(partials, version, previous_version)


_RecordingShardActor = ray.remote(max_restarts=3, max_task_retries=3)(_RecordingShard)


def _calls(settings: Settings, method: str, actor: str) -> list[int]:
    """The pids of ``actor``'s calls of ``method``, in call order."""
    found = [p.name.split("-") for p in (Path(settings.data) / "calls").glob(f"{method}-{actor}-*")]
    return [int(pid) for _, _, pid, _ in sorted(found, key=lambda f: int(f[3]))]


@pytest.mark.parametrize("when", ["between_passes", "during_scoring"])
def test_actor_killed_mid_job_gives_identical_output(
    warehouse_root: str, tmp_path: Path, ray_local: Any, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """A shard's process killed between the passes, or while its score call is in flight: Ray
    restarts the actor, the call is retried on the new process, the output is the same."""
    settings = _copy(warehouse_root, tmp_path)
    clean = RecomputeJob(settings, AS_OF, actors=2, publish=False).run()
    monkeypatch.setattr(feature_shard, "FeatureShardActor", _RecordingShardActor)
    calls = Path(settings.data) / "calls"
    calls.mkdir()
    if when == "during_scoring":
        (calls / "slow").touch()
    killed: list[str] = []
    killers: list[threading.Thread] = []

    def kill_one(phase: str, shards: list[Any]) -> None:
        if phase != "features" or killed:
            return
        if when == "between_passes":
            ray_local.kill(shards[0], no_restart=False)
            killed.append(shards[0]._actor_id.hex())
            return
        by_id = {s._actor_id.hex(): s for s in shards}

        def kill_in_flight() -> None:  # once the shard owning bucket 0 sits in score()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                for actor in by_id:
                    if _calls(settings, "score", actor):
                        time.sleep(0.2)  # inside its sleep by now
                        ray_local.kill(by_id[actor], no_restart=False)
                        killed.append(actor)
                        return
                time.sleep(0.02)

        killers.append(threading.Thread(target=kill_in_flight, daemon=True))
        killers[0].start()

    t0 = time.monotonic()
    faulty = RecomputeJob(settings, AS_OF, actors=2, publish=False, on_phase=kill_one).run()
    for k in killers:
        k.join(5)
    assert len(killed) == 1
    (actor,) = killed
    (first_pid,) = _calls(settings, "features", actor)
    score_pids = _calls(settings, "score", actor)
    if when == "between_passes":
        assert len(score_pids) == 1 and score_pids[0] != first_pid  # ran on the new process
    else:
        # the call in flight died with the process and was retried on the restarted actor
        assert len(score_pids) == 2 and score_pids[0] == first_pid != score_pids[1]
        assert time.monotonic() - t0 < 100  # retried at once, not after the sleep
    assert _digests(settings, clean.version) == _digests(settings, faulty.version)


def test_unreadable_bucket_fails_and_keeps_current(
    warehouse_root: str, tmp_path: Path, redis_url: str
) -> None:
    settings = _copy(warehouse_root, tmp_path).model_copy(update={"redis_url": redis_url})
    good = RecomputeJob(settings, EARLIER, actors=2).run()
    wh = Warehouse(settings.data)
    bad_file = wh.bucket_files("events", wh.buckets()[3])[0]
    Path(bad_file).write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(RecomputeError) as err:
        RecomputeJob(settings, AS_OF, actors=2).run()
    assert bad_file in str(err.value)
    store = SegmentStore(redis_url, namespace="strata")
    assert store.current() == good.version
    assert store.versions() == [good.version]
    store.close()
    assert SnapshotStore(settings.data).versions() == [good.version]


@pytest.mark.parametrize(
    ("file", "patch", "message"),
    [
        ("tiers.yaml", ("recency: 0.4", "recency: 0.5"), "sum to 1"),
        ("tiers.yaml", ("min_score: 0.5", "min_score: 0.9"), "decreasing"),
        ("tiers.yaml", ("hysteresis_margin:", "hysteresis_margn:"), "hysteresis_margn"),
        ("lifecycle.yaml", ("new_within_days: 30", "new_within_days: 120"), "below"),
    ],
)
def test_invalid_configs_fail_before_work(
    tmp_path: Path, file: str, patch: tuple[str, str], message: str
) -> None:
    configs = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, configs)
    path = configs / file
    text = path.read_text()
    assert patch[0] in text
    path.write_text(text.replace(patch[0], patch[1], 1))
    settings = Settings(data=str(tmp_path / "nowhere"), pseudonym_key=TEST_KEY)
    with pytest.raises(ConfigError, match=message) as err:
        RecomputeJob(settings, AS_OF, config_dir=str(configs))
    assert file in str(err.value)
    assert not (tmp_path / "nowhere").exists()


def test_two_node_cluster_matches_single_node(warehouse_root: str, tmp_path: Path) -> None:
    """A 2-node cluster (ray.cluster_utils.Cluster, in a child process) gives the same bytes."""
    single = _copy(warehouse_root, tmp_path / "single")
    multi = _copy(warehouse_root, tmp_path / "multi")
    ref = RecomputeJob(single, AS_OF, actors=2, publish=False).run()
    script = textwrap.dedent(
        f"""
        import json, sys
        import ray
        from ray.cluster_utils import Cluster
        from jobs.recompute import RecomputeJob
        from strata.settings import Settings
        from strata.timeutil import parse_as_of
        cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 1}})
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        settings = Settings(data={multi.data!r}, pseudonym_key={TEST_KEY!r})
        result = RecomputeJob(settings, parse_as_of("2026-10-01"), actors=2, publish=False).run()
        nodes = {{n["NodeID"] for n in ray.nodes() if n["Alive"]}}
        ray.shutdown()
        cluster.shutdown()
        print(json.dumps({{"version": result.version, "nodes": len(nodes)}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=240
    )
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["nodes"] == 2
    assert _digests(single, ref.version) == _digests(multi, info["version"])


def test_imported_minimal_logs_leave_unknown_features_null(tmp_path: Path, ray_local: Any) -> None:
    """user/time/amount only: coupon and category features are unknown (null), not zero."""
    from jobs import ingest
    from strata.ids import pseudonymise
    from strata.ingest import load_mapping

    lines = ["uid,paid_at,amount"]
    for u in range(60):
        for k in range(1 + u % 4):
            lines.append(f"{1000 + u},2026-09-{1 + (u + 7 * k) % 28:02d} 1{k}:00:00,{10 + u}.5")
    src = tmp_path / "orders.csv"
    src.write_text("\n".join(lines) + "\n")
    settings = Settings(data=str(tmp_path / "data"), pseudonym_key=TEST_KEY, n_buckets=4)
    mapping = load_mapping(None, user_col="uid", time_col="paid_at", amount_col="amount")
    imported = ingest.run(settings, [str(src)], mapping)
    assert imported.accepted == len(lines) - 1 and imported.rejected == 0
    result = RecomputeJob(settings, AS_OF, actors=2, publish=False).run()
    table = SnapshotStore(settings.data).read(result.version).sort_by("user_id")
    assert table.num_rows == 60
    assert table.column("top_category").null_count == 60
    assert table.column("coupon_order_share").null_count == 60
    assert set(table.column("price_sensitivity").to_pylist()) == {"unknown"}
    assert table.column("recency_days").null_count == 0
    uid = pseudonymise("1003", TEST_KEY.encode())
    row = table.filter(pc.equal(table.column("user_id"), uid)).to_pylist()[0]
    assert row["orders_total"] == 4 and row["spend_total_cny"] == pytest.approx(4 * 13.5)
