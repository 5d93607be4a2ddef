"""GET /v1/users/{id}/strategies and GET /v1/experiments on a real embedded redis-server:
strategies with reasons (live tier), experiment arms, first exposures logged once per user and
experiment (stream, marker, counts), a failing exposure write that does not fail the lookup."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from fastapi.testclient import TestClient

from api.app import create_app
from strata.config import CONFIG_DIR
from strata.experiments.assignment import assign
from strata.ids import pseudonymise
from strata.io.exposure_log import Exposure, ExposureLog, Logged
from strata.realtime.keys import EXPOSURE_FIELD, RealtimeKeys
from strata.serving.apikeys import dump_records, new_key
from strata.settings import Settings
from tests.conftest import TEST_KEY
from tests.support import publish_raw_users

pytestmark = pytest.mark.integration

READ_KEY, READ_REC = new_key("reader", ["segments:read"])
KEYS = RealtimeKeys("strata", 8)  # configs/stream.yaml's partitions
RAW = [str(30_000_001 + i) for i in range(40)]
AUTH = {"Authorization": f"Bearer {READ_KEY}"}

EXPERIMENTS = """
experiments:
  - name: pcv
    target: {tiers: [potential]}
    arms:
      - {name: control, weight: 1, strategies: [potential_targeted_coupon]}
      - {name: coupon_20, weight: 1, overrides: {coupon_value_cny: 20}}
    control: control
    holdout: 0.1
    start: 2020-01-01
    end: 2099-12-31
    salt: pcv-salt
    primary_metric: conversion
    guardrails: [{metric: coupon_cost_per_user, max: 15}]
  - name: later
    target: {tiers: [potential]}
    arms: [{name: control, weight: 1}, {name: b, weight: 1}]
    control: control
    start: 2099-01-01
    end: 2099-12-31
    salt: x
    primary_metric: conversion
  - name: over
    arms: [{name: control, weight: 1}, {name: b, weight: 1}]
    control: control
    start: 2020-01-01
    end: 2020-12-31
    salt: y
    primary_metric: revenue_per_user
"""


def _uid(raw: str) -> int:
    return pseudonymise(raw, TEST_KEY.encode())


def _overlay(version: str, tier: str, stage: str = "mature") -> bytes:
    return orjson.dumps(
        {"version": version, "tier": tier, "lifecycle_stage": stage, "rfm_score": 0.6,
         "recency_days": 2, "frequency_90d": 4, "monetary_90d": 150.0,
         "last_event_at": "2026-11-02T09:30:00+08:00"}
    )  # fmt: skip


@pytest.fixture
def client(tmp_path: Path, redis_url: str) -> Iterator[TestClient]:
    folder = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, folder)
    (folder / "experiments.yaml").write_text(EXPERIMENTS)
    settings = Settings(
        data=str(tmp_path / "data"), redis_url=redis_url, api_keys=dump_records([READ_REC])
    )
    with TestClient(create_app(settings, config_dir=folder)) as c:
        yield c


@pytest.fixture
def r(redis_url: str, client: TestClient) -> Iterator[redis.Redis]:
    publish_raw_users(redis_url, "v1", RAW, TEST_KEY)
    conn = redis.Redis.from_url(redis_url)
    for raw in RAW:
        conn.set(KEYS.live(_uid(raw)), _overlay("v1", "potential"))
    yield conn
    conn.close()


def _exposures(r: redis.Redis) -> list[dict[str, Any]]:
    return [
        orjson.loads(f[EXPOSURE_FIELD]) for p in range(8) for _, f in r.xrange(KEYS.exposures(p))
    ]


def _arm(raw: str) -> str:
    return assign("pcv-salt", "pcv", _uid(raw), [("control", 1), ("coupon_20", 1)], holdout=0.1)


def test_strategies_follow_the_live_tier_with_reasons_and_the_arm(
    client: TestClient, r: redis.Redis
) -> None:
    raw = RAW[0]
    resp = client.get(f"/v1/users/{raw}/strategies", headers=AUTH)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    segment = client.get(f"/v1/users/{raw}/segment", headers=AUTH).json()
    assert body["tier"] == segment["tier"] == "potential" and body["source"] == "live"
    assert [s["name"] for s in body["strategies"]] == [
        "potential_targeted_coupon",
        "new_product_trial",
        "category_discount",
        "double_checkin_rewards",
    ]
    coupon = body["strategies"][0]
    assert coupon["reason"] == "tier potential"
    assert coupon["trigger_rules"] == ["visit_streak_3d", "cart_abandoned"]
    assert coupon["actions"][0]["kind"] == "coupon" and coupon["cost_per_action_cny"] == 10.0
    assert coupon["applies"] == (coupon["eligible"] and not coupon["holdout"])
    # scheduled ("later") and ended ("over") experiments are not served
    assert [e["experiment"] for e in body["experiments"]] == ["pcv"]
    (pcv,) = body["experiments"]
    assert pcv["arm"] == _arm(raw) and pcv["reason"] == "targets tier potential"

    # a live tier change changes the answer; no running experiment targets high_value
    r.set(KEYS.live(_uid(raw)), _overlay("v1", "high_value"))
    r.hset(KEYS.tags(_uid(raw)), "cart_abandoner", 2**62)
    vip = client.get(f"/v1/users/{raw}/strategies", headers=AUTH).json()
    assert vip["tier"] == "high_value" and vip["dynamic_tags"] == ["cart_abandoner"]
    names = [s["name"] for s in vip["strategies"]]
    assert names[:3] == ["vip_service_channel", "member_day_early_access", "birthday_gift_pack"]
    assert names[3:] == ["ordinary_default"]
    assert vip["strategies"][3]["reason"] == "dynamic tag cart_abandoner"
    assert vip["experiments"] == []


def test_first_exposure_is_logged_once_per_user_and_experiment(
    client: TestClient, r: redis.Redis
) -> None:
    for _ in range(3):
        for raw in RAW:
            assert client.get(f"/v1/users/{raw}/strategies", headers=AUTH).status_code == 200
    logged = _exposures(r)
    assert len(logged) == len(RAW)
    assert {x["user_id"] for x in logged} == {_uid(raw) for raw in RAW}
    by_user = {x["user_id"]: x for x in logged}
    for raw in RAW:
        x = by_user[_uid(raw)]
        assert x["experiment"] == "pcv" and x["source"] == "serve"
        assert x["arm"] == _arm(raw) and isinstance(x["ts"], int)
        assert r.get(KEYS.exposed("pcv", _uid(raw))) == x["arm"].encode()
    expected = Counter(_arm(raw) for raw in RAW)
    stored: Counter[str] = Counter()
    for p in range(8):  # one count hash per partition
        stored.update(
            {k.decode(): int(v) for k, v in r.hgetall(KEYS.exposed_count("pcv", p)).items()}
        )
    assert stored == expected

    listed = client.get("/v1/experiments", headers=AUTH)
    assert listed.status_code == 200, listed.text
    exps = {e["name"]: e for e in listed.json()["experiments"]}
    assert [e["status"] for e in listed.json()["experiments"]] == ["running", "scheduled", "ended"]
    pcv = exps["pcv"]
    assert {a["name"]: a["exposed"] for a in pcv["arms"]} == {
        "control": expected["control"],
        "coupon_20": expected["coupon_20"],
    }
    assert pcv["holdout_exposed"] == expected["holdout"]
    assert pcv["holdout"] == 0.1 and pcv["control"] == "control"
    assert pcv["guardrails"] == [{"metric": "coupon_cost_per_user", "max": 15.0, "min": None}]
    assert exps["later"]["arms"][0]["exposed"] == 0


def test_a_failing_exposure_write_does_not_fail_the_lookup(
    client: TestClient, r: redis.Redis
) -> None:
    stream = KEYS.exposures(KEYS.partition_of(_uid(RAW[1])))
    r.set(stream, "not a stream")  # XADD fails with WRONGTYPE inside the script
    metrics = client.app.state.strata.metrics  # type: ignore[attr-defined]
    before = metrics.exposures.labels("error")._value.get()
    resp = client.get(f"/v1/users/{RAW[1]}/strategies", headers=AUTH)
    assert resp.status_code == 200, resp.text
    assert resp.json()["experiments"][0]["arm"] == _arm(RAW[1])
    assert metrics.exposures.labels("error")._value.get() == before + 1
    assert r.get(KEYS.exposed("pcv", _uid(RAW[1]))) is None  # the marker was taken back
    r.delete(stream)
    client.get(f"/v1/users/{RAW[1]}/strategies", headers=AUTH)
    assert [x["user_id"] for x in _exposures(r)] == [_uid(RAW[1])]


def test_the_arm_first_served_stays_when_the_hash_would_move(
    client: TestClient, r: redis.Redis
) -> None:
    # as after an edit of the weights: the marker holds another arm than today's hash
    raw = next(x for x in RAW if _arm(x) == "control")
    r.set(KEYS.exposed("pcv", _uid(raw)), "coupon_20")
    (pcv,) = client.get(f"/v1/users/{raw}/strategies", headers=AUTH).json()["experiments"]
    assert pcv["arm"] == "coupon_20" and pcv["overrides"] == {"coupon_value_cny": 20}
    assert pcv["strategies"] == []
    assert _exposures(r) == []  # not a first exposure


def test_unknown_users_and_missing_keys(client: TestClient, r: redis.Redis) -> None:
    assert client.get("/v1/users/nobody/strategies", headers=AUTH).status_code == 404
    assert client.get("/v1/users/nobody/strategies").status_code == 401
    assert client.get("/v1/experiments").status_code == 401
    assert _exposures(r) == []


def test_exposure_log_batches_and_counts(redis_url: str) -> None:
    log = ExposureLog(redis_url)
    try:
        batch = [Exposure("e1", "a", 7, 1000, "action"), Exposure("e2", "b", 7, 1000)]
        assert log.log(batch) == [Logged(True, "a"), Logged(True, "b")]
        # user 7 was first exposed to arm a of e1: it stays in a
        assert log.log([Exposure("e1", "b", 7, 2000), Exposure("e1", "a", 8, 2000)]) == [
            Logged(False, "a"),
            Logged(True, "a"),
        ]
        assert log.counts("e1") == {"a": 2} and log.counts("e2") == {"b": 1}
        assert log.counts("none") == {}
    finally:
        log.close()
