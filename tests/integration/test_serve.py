"""The segment API on Ray Serve (HAProxy + direct ingress, api/deployment.py) against a real
embedded Redis: keyed lookups through Serve, and a replica killed under load is replaced."""

from __future__ import annotations

import http.client
import json
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest

from strata.ids import pseudonymise_many
from strata.io.redis_server import free_port
from strata.io.segment_store import SegmentStore
from strata.online.codec import (
    ACTIVE_SLOTS,
    LIFECYCLE_STAGES,
    TIERS,
    encode,
    n_groups_for,
    snapshot_layout,
)
from strata.serving.apikeys import dump_records, new_key
from strata.settings import Settings
from tests.conftest import TEST_KEY

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

N_USERS = 300
FIRST_RAW_ID = 10_000_001
LAYOUT = snapshot_layout(predictions=True)
#: bounds on what a killed replica may cost the clients (see the test for the measurements)
MAX_FAILED_AFTER_KILL = 10
MAX_OUTAGE_S = 20.0


def _columns(n: int) -> dict[str, Any]:
    i = np.arange(n)
    return {
        "tier": np.array(TIERS)[i % len(TIERS)].tolist(),
        "lifecycle_stage": np.array(LIFECYCLE_STAGES)[i % len(LIFECYCLE_STAGES)].tolist(),
        "top_category": ["fruit"] * n,
        "price_sensitivity": ["unknown"] * n,
        "active_slot": np.array(ACTIVE_SLOTS)[i % len(ACTIVE_SLOTS)].tolist(),
        "channel": ["ads"] * n,
        "rfm_r": (i % 200) / 200,
        "rfm_f": (i % 100) / 100,
        "rfm_m": (i % 50) / 50,
        "rfm_score": (i % 97) / 97,
        "recency_days": i % 365,
        "frequency_90d": i % 30,
        "monetary_90d": (i % 1000) + 0.5,
        "churn_p": (i % 100) / 100,
        "repurchase_p": ((i + 1) % 100) / 100,
        "predicted_spend": (i % 300) / 10,
    }


def _publish(redis_url: str) -> None:
    raw = [str(FIRST_RAW_ID + i) for i in range(N_USERS)]
    ids = pseudonymise_many(raw, TEST_KEY.encode())
    with SegmentStore(redis_url, namespace="strata") as store:
        store.begin_version("v1", LAYOUT, n_groups_for(N_USERS), as_of="2026-11-01T00:00:00+08:00")
        store.write_users("v1", ids, encode(_columns(N_USERS), LAYOUT, allow_missing=True))
        store.publish("v1", expected_users=N_USERS)


class _Client:
    """One keep-alive connection to the API (reconnects after an error)."""

    def __init__(self, base_url: str, key: str | None, timeout_s: float = 5.0) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.timeout_s = timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """``(status, decoded JSON)``; raises OSError / HTTPException on connection trouble."""
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        headers = dict(self.headers)
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            self._conn.request(method, path, body=payload, headers=headers)
            resp = self._conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            self._conn.close()
            self._conn = None
            raise
        return resp.status, json.loads(data) if data else None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def _replicas() -> list[str]:
    import ray

    from api.deployment import APP_NAME, DEPLOYMENT_NAME

    prefix = f"SERVE_REPLICA::{APP_NAME}#{DEPLOYMENT_NAME}#"
    return sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(prefix)
    )


def test_lookup_through_serve_and_replica_replaced(
    ray_local: Any, redis_url: str, settings: Settings
) -> None:
    from ray import serve

    from api.deployment import serve_mode, start

    _publish(redis_url)
    key, record = new_key("serve-test", ["segments:read"])
    served = settings.model_copy(
        update={"redis_url": redis_url, "api_keys": dump_records([record])}
    )
    try:
        t0 = time.monotonic()
        base_url = start(served, port=free_port(), num_replicas=1)
        deploy_s = time.monotonic() - t0
        assert serve_mode()["RAY_SERVE_ENABLE_HA_PROXY"] == "1"  # the configuration we ship
        client = _Client(base_url, key)

        # a keyed lookup of a raw platform id, answered from the published snapshot
        status, body = client.call("GET", f"/v1/users/{FIRST_RAW_ID + 5}/segment")
        assert status == 200, body
        assert body["user_id"] == str(FIRST_RAW_ID + 5) and body["found"] is True
        assert (body["tier"], body["version"]) == (TIERS[5 % len(TIERS)], "v1")
        assert body["lifecycle_stage"] == LIFECYCLE_STAGES[5 % len(LIFECYCLE_STAGES)]
        status, body = client.call(
            "POST", "/v1/segments/lookup", {"user_ids": [str(FIRST_RAW_ID + 7), "nobody"]}
        )
        assert status == 200 and body["version"] == "v1"
        assert [r["found"] for r in body["results"]] == [True, False]
        assert _Client(base_url, None).call("GET", f"/v1/users/{FIRST_RAW_ID}/segment")[0] == 401
        assert _Client(base_url, "stk_wrong").call("GET", "/v1/users/1/segment")[0] == 401

        # kill the replica while a thread keeps sending lookups: Serve starts a new one
        before = _replicas()
        assert len(before) == 1
        events: list[tuple[float, int]] = []  # (monotonic time, status; 0 = no answer)
        stop = threading.Event()

        def load() -> None:
            c = _Client(base_url, key, timeout_s=3.0)
            i = 0
            while not stop.is_set():
                try:
                    status = c.call("GET", f"/v1/users/{FIRST_RAW_ID + i % N_USERS}/segment")[0]
                except (OSError, http.client.HTTPException):
                    status = 0
                    time.sleep(0.05)
                events.append((time.monotonic(), status))
                i += 1
            c.close()

        sender = threading.Thread(target=load, daemon=True)
        sender.start()
        time.sleep(1.0)
        assert events and all(s == 200 for _, s in events)
        import ray

        ray.kill(ray.get_actor(before[0], namespace="serve"), no_restart=True)
        killed_at = time.monotonic()
        deadline = killed_at + 60
        recovered_at = None
        while time.monotonic() < deadline:
            recent = [s for t, s in events[-20:] if t > killed_at]
            now = _replicas()
            if len(recent) == 20 and all(s == 200 for s in recent) and now and now != before:
                recovered_at = time.monotonic()
                break
            time.sleep(0.2)
        stop.set()
        sender.join(10)
        after_kill = [(t, s) for t, s in events if t > killed_at]
        failed = sum(s != 200 for _, s in after_kill)
        # the outage: from the kill to the last request that did not get a 200
        outage_s = max((t - killed_at for t, s in after_kill if s != 200), default=0.0)
        assert recovered_at is not None, (
            f"no recovery within 60 s: replicas {_replicas()}, "
            f"{failed} of {len(after_kill)} requests failed since the kill"
        )
        # measured on 2 shared cores (3 runs): 2 failed, the last 3.1 s after the kill (a
        # client gives up after 3 s); the bounds allow a slower machine, not a minute of errors
        assert failed <= MAX_FAILED_AFTER_KILL, (failed, len(after_kill), outage_s)
        assert outage_s <= MAX_OUTAGE_S, (failed, len(after_kill), outage_s)
        assert _replicas() != before and len(_replicas()) == 1
        assert serve.status().applications["strata"].status == "RUNNING"
        status, body = client.call("GET", f"/v1/users/{FIRST_RAW_ID + 5}/segment")
        assert status == 200 and body["tier"] == TIERS[5 % len(TIERS)]
        print(
            f"deployed in {deploy_s:.1f} s; after the kill {failed} of {len(after_kill)} "
            f"requests failed, the last {outage_s:.1f} s after it; all succeed again after "
            f"{recovered_at - killed_at:.1f} s"
        )
        client.close()
    finally:
        serve.shutdown()


def test_serve_configs_agree_with_serve_env() -> None:
    """configs/serve.yaml, the RayService manifest and SERVE_ENV describe one configuration."""
    from pathlib import Path

    import yaml
    from ray.serve.schema import ServeDeploySchema

    from api.deployment import DEPLOYMENT_NAME, SERVE_ENV, build_app

    root = Path(__file__).resolve().parents[2]
    local = yaml.safe_load((root / "configs" / "serve.yaml").read_text())
    service = yaml.safe_load((root / "cluster" / "rayservice.yaml").read_text())
    cluster = yaml.safe_load(service["spec"]["serveConfigV2"])
    for config in (local, cluster):
        schema = ServeDeploySchema.model_validate(config)
        (app,) = schema.applications
        assert app.import_path == "api.deployment:build_app"
        assert app.deployments[0].name == DEPLOYMENT_NAME
        build_app(app.args)
    for key in ("proxy_location", "http_options", "logging_config"):
        assert local[key] == cluster[key], key
    assert local["applications"][0]["deployments"] == cluster["applications"][0]["deployments"]
    spec = service["spec"]["rayClusterConfig"]
    pods = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for pod in pods:
        env = {e["name"]: e.get("value") for e in pod["template"]["spec"]["containers"][0]["env"]}
        assert {k: env.get(k) for k in SERVE_ENV} == SERVE_ENV
