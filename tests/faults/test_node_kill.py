"""A whole Ray node (its raylet and every worker on it) killed mid-recompute, in a 2-node
``ray.cluster_utils.Cluster``: the job completes, the snapshot it publishes is byte-identical
to a fault-free run's, and the previous version answers every lookup until the flip.

The cluster lives in a child process (this session's driver is connected to the tests' own
local Ray); the child is this module run as a script, which ``bench/chaos.py`` runs too, with
more users and more kill points. It prints one JSON line of what it saw.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from tests.conftest import TEST_KEY

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
#: the previous published version is scored at an earlier as-of, so its records differ
PREVIOUS_AS_OF = "2026-09-15"
AS_OF = "2026-10-01"
#: where the worker node is killed: after a pass (the hook), or ``mid-<pass>``: a moment
#: after that pass starts, while its calls run
KILL_POINTS = ("features", "scoring", "mid-scoring", "mid-publishing")
NEXT_PASS = {"features": "scoring", "scoring": "publishing"}


def snapshot_digests(data: str, version: str) -> dict[str, str]:
    """SHA-256 of every Parquet file of a snapshot's features, by relative path."""
    from strata.io.snapshots import SnapshotStore

    base = Path(SnapshotStore(data).path(version)) / "features"
    return {
        str(p.relative_to(base)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(base.rglob("*.parquet"))
    }


def run_scenario(
    data: str, redis_url: str, kill_points: list[str], delay_s: float
) -> dict[str, Any]:
    """Previous version published, a fault-free reference, then one recompute per kill point
    with the worker node killed there (a new worker node joins before each), while a probe
    does batch lookups. Runs in its own process (it starts the cluster)."""
    import ray
    from ray.cluster_utils import Cluster

    from jobs.recompute import RecomputeError, RecomputeJob
    from strata.io.segment_store import SegmentStore
    from strata.io.snapshots import SnapshotStore
    from strata.io.warehouse import Warehouse
    from strata.settings import Settings
    from strata.timeutil import parse_as_of
    from tests.faults.conftest import LookupProbe

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    settings = Settings(data=data, pseudonym_key=SecretStr(TEST_KEY), redis_url=redis_url)
    out: dict[str, Any] = {"runs": []}
    try:
        t0 = time.perf_counter()
        previous = RecomputeJob(settings, parse_as_of(PREVIOUS_AS_OF), actors=2).run()
        reference = RecomputeJob(settings, parse_as_of(AS_OF), actors=2, publish=False).run()
        out["fault_free_s"] = round(time.perf_counter() - t0, 2)
        want = snapshot_digests(data, reference.version)
        ids = sorted(
            int(u) for u in Warehouse(data).read_table("users", ["user_id"])["user_id"].to_pylist()
        )[:1000]
        probe = LookupProbe(redis_url, ids)
        digests = {previous.version: probe.lookup()[1]}
        with probe:
            for point in kill_points:
                if worker is None:  # the last kill took it: a fresh node joins
                    worker = cluster.add_node(num_cpus=1)
                    cluster.wait_for_nodes()
                out["runs"].append(run_one(settings, cluster, worker, point, delay_s, want))
                worker = None if out["runs"][-1]["killed"] else worker
                store = SegmentStore(redis_url)
                current = store.current()
                store.close()
                if current is not None:
                    digests[current] = probe.lookup()[1]
        out["probe"] = probe.counts(digests)
        out["previous_version"] = previous.version
        probe.close()
        out["manifests"] = SnapshotStore(data).versions()
    except RecomputeError as exc:  # a fault-free run failed: the scenario itself is broken
        out["error"] = str(exc)
    finally:
        ray.shutdown()
        cluster.shutdown()
    return out


def run_one(
    settings: Any, cluster: Any, worker: Any, point: str, delay_s: float, want: dict[str, str]
) -> dict[str, Any]:
    """One recompute (published) with the worker node killed at ``point``."""
    import ray

    from jobs.recompute import RecomputeError, RecomputeJob
    from strata.io.segment_store import SegmentStore
    from strata.io.snapshots import SnapshotStore
    from strata.timeutil import parse_as_of

    run: dict[str, Any] = {"kill_at": point, "killed": False}
    worker_id = worker.node_id
    timer: list[threading.Timer] = []

    def kill() -> None:
        if not run["killed"]:
            run["killed"] = True
            run["killed_after_s"] = round(time.perf_counter() - t0, 2)
            cluster.remove_node(worker, allow_graceful=False)

    def hook(phase: str, shards: list[Any]) -> None:
        if phase == "features":
            nodes = ray.get([s.node_id.remote() for s in shards], timeout=60)
            run["actors_on_worker"] = sum(n == worker_id for n in nodes)
            run["actors"] = len(nodes)
        if phase == point:
            kill()
        elif point == "mid-" + NEXT_PASS.get(phase, ""):
            timer.append(threading.Timer(delay_s, kill))
            timer[0].start()

    store = SegmentStore(settings.redis_url)
    before = store.current()
    t0 = time.perf_counter()
    try:
        result = RecomputeJob(settings, parse_as_of(AS_OF), actors=2, on_phase=hook).run()
        run.update(completed=True, version=result.version, published=result.published)
        run["identical"] = snapshot_digests(settings.data, result.version) == want
        run["current_is_new"] = store.current() == result.version
    except RecomputeError as exc:
        run.update(completed=False, error=str(exc)[:300])
        run["current_unchanged"] = store.current() == before
    run["seconds"] = round(time.perf_counter() - t0, 2)
    for t in timer:
        t.cancel()
    run["snapshot_folders"] = len(os.listdir(SnapshotStore(settings.data).root))
    store.close()
    return run


def run_child(
    data: str, redis_url: str, points: list[str], delay_s: float, timeout_s: float
) -> dict[str, Any]:
    """Run :func:`run_scenario` in a child process; its JSON line."""
    out = subprocess.run(
        [sys.executable, "-m", "tests.faults.test_node_kill", "--data", data,
         "--redis-url", redis_url, "--delay-s", str(delay_s), *points],
        capture_output=True, text=True, cwd=REPO, timeout=timeout_s,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def test_a_node_killed_mid_recompute(small_warehouse: Path, tmp_path: Path, redis_url: str) -> None:
    data = tmp_path / "data"
    shutil.copytree(small_warehouse / "warehouse", data / "warehouse")
    out = run_child(str(data), redis_url, ["features", "scoring"], 0.2, timeout_s=300)
    assert "error" not in out, out
    for run in out["runs"]:
        assert run["actors"] == 2 and run["actors_on_worker"] == 1, run  # one on each node
        assert run["killed"], run
        # the lost shard's buckets ran again on the live node: same bytes, published
        assert run["completed"] and run["published"] and run["identical"], run
        assert run["current_is_new"], run
        assert run["seconds"] < 120, run  # a lost node is noticed, not waited for forever
    probe = out["probe"]
    assert probe["errors"] == 0 and probe["mixed"] == 0 and probe["unknown_versions"] == 0, probe
    assert probe["answers"] > 50, probe
    # the previous version answered until the first flip, then each new one in turn
    assert probe["versions"][0] == out["previous_version"], probe
    assert probe["flips"] == len(out["runs"]), probe
    # previous + reference + one per faulty run: no half-written snapshot folder stays behind
    assert len(out["manifests"]) == 2 + len(out["runs"]), out
    assert out["runs"][-1]["snapshot_folders"] == len(out["manifests"]), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--delay-s", type=float, default=0.2)
    parser.add_argument("points", nargs="+", choices=KILL_POINTS)
    args = parser.parse_args()
    os.environ.setdefault("STRATA_PSEUDONYM_KEY", TEST_KEY)
    print(json.dumps(run_scenario(args.data, args.redis_url, args.points, args.delay_s)))


if __name__ == "__main__":
    main()
