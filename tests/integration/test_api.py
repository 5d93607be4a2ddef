"""The segment API (api/app.py) on a real embedded redis-server: endpoints, keys and scopes,
bad input, one version per answer during a publish, Redis down or slow, no raw ids in logs."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import ApiSetupError, create_app
from strata.io.keyfile import KeyFile
from strata.io.redis_server import EmbeddedRedis
from strata.online.codec import RecordLayout
from strata.serving.apikeys import dump_records, new_key
from strata.serving.config import load_api_config
from strata.settings import Settings
from tests.conftest import TEST_KEY
from tests.support import BASE, publish_raw_users

pytestmark = pytest.mark.integration

RAW = [str(10_000_001 + i) for i in range(300)]
READ_KEY, READ_REC = new_key("reader", ["segments:read"])
EVENTS_KEY, EVENTS_REC = new_key("events", ["events:write"])
ADMIN_KEY, ADMIN_REC = new_key("ops", ["admin"])
METRICS_KEY, METRICS_REC = new_key("prometheus", ["metrics:read"])


def _auth(key: str = READ_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _settings(tmp_path: Path, url: str) -> Settings:
    return Settings(
        data=str(tmp_path / "data"),
        redis_url=url,
        api_keys=dump_records([READ_REC, EVENTS_REC, ADMIN_REC, METRICS_REC]),
    )


@pytest.fixture
def client(tmp_path: Path, redis_url: str) -> Iterator[TestClient]:
    publish_raw_users(
        redis_url, "v1", RAW, TEST_KEY, meta={"tiers": {"high_value": 100}, "model_version": "m1"}
    )
    with TestClient(create_app(_settings(tmp_path, redis_url))) as c:
        yield c


def test_single_lookup_answers_the_public_shape(client: TestClient) -> None:
    r = client.get("/v1/users/10000001/segment", headers=_auth())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_id"] == "10000001" and body["found"] is True
    assert body["version"] == "v1" and body["as_of"] == "2026-11-01T00:00:00+08:00"
    assert body["tier"] and body["lifecycle_stage"]
    assert set(body["tags"]) == {"top_category", "price_sensitivity", "active_slot", "channel"}
    assert body["scores"]["frequency_90d"] == 1
    assert set(body["predictions"]) == {"churn_p", "repurchase_p", "predicted_spend_cny"}
    assert body["dynamic_tags"] == []


TAG_GROUPS = {
    "basic": {"age_band", "gender", "region", "device"},
    "behaviour": {
        "rfm_r", "rfm_f", "rfm_m", "rfm_score", "recency_band", "frequency_band", "spend_level",
        "top_category", "price_sensitivity", "active_slot", "active_daytype", "channel",
    },
    "value": {"ltv_cny", "arpu_30d_cny", "discount_sensitivity"},
    "predictive": {"churn_p", "repurchase_p", "predicted_spend_cny"},
}  # fmt: skip


def test_lookup_returns_the_four_tag_groups(client: TestClient) -> None:
    body = client.get("/v1/users/10000003/segment", headers=_auth()).json()
    groups = body["tag_groups"]
    assert {g: set(v) for g, v in groups.items()} == TAG_GROUPS
    behaviour, basic = groups["behaviour"], groups["basic"]
    assert behaviour["rfm_score"] == body["scores"]["rfm_score"]
    assert behaviour["top_category"] == body["tags"]["top_category"]
    assert behaviour["recency_band"] in {
        "within_30d", "lapsed_30d", "lapsed_90d", "lapsed_180d", "no_order",
    }  # fmt: skip
    assert behaviour["frequency_band"] in {"weekly", "monthly", "quarterly", "rarer"}
    assert behaviour["spend_level"] in {"high", "mid", "low"}
    assert basic["age_band"] == "25-34" and basic["device"] == "ios"
    assert basic["gender"] in {"female", "male"} and basic["region"]
    assert groups["value"]["ltv_cny"] is not None and groups["value"]["arpu_30d_cny"] is not None
    assert groups["predictive"]["churn_p"] == body["predictions"]["churn_p"]
    assert groups["predictive"]["predicted_spend_cny"] == body["predictions"]["predicted_spend_cny"]
    batch = client.post("/v1/segments/lookup", headers=_auth(), json={"user_ids": ["10000003"]})
    assert batch.json()["results"][0]["tag_groups"] == groups
    why = client.get("/v1/users/10000003/explain", headers=_auth()).json()
    bands = {b["band"]: b for b in why["bands"]}
    assert bands["recency_band"]["label"] == behaviour["recency_band"]
    assert bands["recency_band"]["thresholds"]["within_30d"] == "recency_days <= 30"
    assert (
        bands["spend_level"]["condition"]
        == bands["spend_level"]["thresholds"][behaviour["spend_level"]]
    )


def test_a_version_without_the_tag_fields_answers_nulls(tmp_path: Path, redis_url: str) -> None:
    old = RecordLayout(fields=tuple(f for f in BASE.fields if f.name not in _NEW_FIELDS))
    publish_raw_users(redis_url, "old", RAW[:5], TEST_KEY, layout=old)
    with TestClient(create_app(_settings(tmp_path, redis_url))) as c:
        body = c.get(f"/v1/users/{RAW[0]}/segment", headers=_auth()).json()
    assert body["version"] == "old" and body["tier"]
    groups = body["tag_groups"]
    assert set(groups["basic"].values()) == {None}
    assert set(groups["predictive"].values()) == {None} and body["predictions"] is None
    assert groups["behaviour"]["recency_band"] is None
    assert groups["behaviour"]["top_category"] == body["tags"]["top_category"]


_NEW_FIELDS = {
    "recency_band", "frequency_band", "spend_level", "active_daytype", "age_band", "gender",
    "region", "device", "ltv_cny", "arpu_30d_cny", "discount_sensitivity",
}  # fmt: skip


def test_batch_answers_in_input_order_with_not_found(client: TestClient) -> None:
    ids = ["10000005", "nobody", "10000001", "10000005"]
    r = client.post("/v1/segments/lookup", headers=_auth(), json={"user_ids": ids})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["version"] == "v1"
    assert [x["user_id"] for x in body["results"]] == ids
    assert [x["found"] for x in body["results"]] == [True, False, True, True]
    assert body["results"][1] == {"user_id": "nobody", "found": False}
    single = client.get("/v1/users/10000005/segment", headers=_auth()).json()
    assert body["results"][0] == single


def test_explain_and_tiers(client: TestClient) -> None:
    r = client.get("/v1/users/10000002/explain", headers=_auth())
    assert r.status_code == 200, r.text
    why = r.json()
    seg = client.get("/v1/users/10000002/segment", headers=_auth()).json()
    assert why["tier"] == seg["tier"] and why["version"] == "v1"
    assert why["rule"] in {"score_band", "hysteresis_hold", "churn_warning"}
    assert why["features"]["rfm_score"] == seg["scores"]["rfm_score"]
    assert why["thresholds"] and why["summary"]
    tiers = client.get("/v1/tiers", headers=_auth()).json()
    assert tiers["version"] == "v1" and tiers["users"] == len(RAW)
    assert tiers["model_version"] == "m1"
    by_name = {t["tier"]: t for t in tiers["tiers"]}
    assert by_name["high_value"]["members"] == 100 and by_name["high_value"]["min_score"] == 0.8


def _metrics(c: TestClient) -> list[tuple[str, dict[str, str], float]]:
    """The samples of GET /metrics: ``(name, labels, value)``."""
    from prometheus_client.parser import text_string_to_metric_families

    r = c.get("/metrics", headers=_auth(METRICS_KEY))
    assert r.status_code == 200, r.text
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    ]


def _value(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` (0 when none)."""
    return sum(
        v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items())
    )


SEGMENT_ROUTE = "/v1/users/{user_id}/segment"


def test_health_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/healthz/ready")
    assert ready.status_code == 200 and ready.json()["version"] == "v1"
    before = _metrics(client)
    assert client.get("/v1/users/10000001/segment", headers=_auth()).status_code == 200
    assert client.get("/v1/users/nobody/segment", headers=_auth()).status_code == 404
    assert client.get("/v1/users/10000002/segment", headers=_auth()).status_code == 200
    after = _metrics(client)

    def moved(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    requests = "strata_api_requests_total"
    assert moved(requests, method="GET", route=SEGMENT_ROUTE, status="200") == 2
    assert moved(requests, method="GET", route=SEGMENT_ROUTE, status="404") == 1
    assert moved("strata_api_request_seconds_count", route=SEGMENT_ROUTE) == 3
    assert moved("strata_api_lookup_users_total") == 3
    assert moved("strata_api_redis_errors_total") == 0
    assert moved("strata_api_breaker_rejections_total") == 0
    assert _value(after, "strata_api_snapshot_version_info", version="v1") == 1
    assert _value(after, "strata_api_breaker_open") == 0


def test_keys_and_scopes(client: TestClient) -> None:
    path = "/v1/users/10000001/segment"
    missing = client.get(path)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert client.get(path, headers=_auth("stk_wrong")).status_code == 401
    assert client.get(path, headers={"Authorization": f"Basic {READ_KEY}"}).status_code == 401
    wrong_scope = client.get(path, headers=_auth(EVENTS_KEY))
    assert wrong_scope.status_code == 403 and "segments:read" in wrong_scope.json()["detail"]
    assert client.get(path, headers=_auth(ADMIN_KEY)).status_code == 200


def test_metrics_need_a_metrics_key_by_default(
    client: TestClient, tmp_path: Path, redis_url: str
) -> None:
    """configs/api.yaml's default: GET /metrics answers a ``metrics:read`` (or admin) key
    only; ``metrics_require_key: false`` opens it to anyone who reaches the API port."""
    missing = client.get("/metrics")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong_scope = client.get("/metrics", headers=_auth(READ_KEY))
    assert wrong_scope.status_code == 403 and "metrics:read" in wrong_scope.json()["detail"]
    assert "strata_api" not in missing.text + wrong_scope.text
    for key in (METRICS_KEY, ADMIN_KEY):
        r = client.get("/metrics", headers=_auth(key))
        assert r.status_code == 200 and "strata_api_requests_total" in r.text
    open_config = load_api_config().model_copy(update={"metrics_require_key": False})
    with TestClient(create_app(_settings(tmp_path, redis_url), config=open_config)) as c:
        assert c.get("/metrics").status_code == 200


def test_revoked_key_in_the_key_file_stops_working(tmp_path: Path, redis_url: str) -> None:
    publish_raw_users(redis_url, "v1", RAW[:10], TEST_KEY)
    settings = Settings(data=str(tmp_path / "data"), redis_url=redis_url)
    key, record = new_key("svc", ["segments:read"])
    keys = KeyFile(settings.keys_path())  # type: ignore[arg-type]
    keys.add(record)
    with TestClient(create_app(settings)) as c:
        assert c.get("/v1/users/10000001/segment", headers=_auth(key)).status_code == 200
        keys.revoke("svc")
        os.utime(settings.keys_path(), (time.time() + 5, time.time() + 5))  # type: ignore[arg-type]
        deadline = time.monotonic() + 5
        while c.get("/v1/users/10000001/segment", headers=_auth(key)).status_code != 401:
            assert time.monotonic() < deadline, "revoked key still accepted after 5 s"
            time.sleep(0.2)


def test_no_key_configured_refuses_to_start(tmp_path: Path, redis_url: str) -> None:
    with pytest.raises(ApiSetupError, match="no API keys"):
        create_app(Settings(data=str(tmp_path / "d"), redis_url=redis_url))
    with pytest.raises(ApiSetupError, match="STRATA_REDIS_URL"):
        create_app(Settings(data=str(tmp_path / "d"), api_keys=dump_records([READ_REC])))
    # demo mode accepts only the fixed demo key, and only when asked for
    app = create_app(Settings(data=str(tmp_path / "d"), redis_url=redis_url), demo=True)
    assert app.state.strata.keyring().authenticate("stk_demo_only_do_not_use_in_production")


def test_bad_input(client: TestClient) -> None:
    assert client.get("/v1/users/not%20an%20id/segment", headers=_auth()).status_code == 422
    assert client.get("/v1/users/" + "9" * 65 + "/segment", headers=_auth()).status_code == 422
    assert client.get("/v1/users/nobody/segment", headers=_auth()).status_code == 404
    bad = client.post("/v1/segments/lookup", headers=_auth(), json={"user_ids": ["ok", "no way"]})
    assert bad.status_code == 422 and "user_ids" in bad.text
    assert (
        client.post("/v1/segments/lookup", headers=_auth(), json={"user_ids": []}).status_code
        == 422
    )
    assert (
        client.post("/v1/segments/lookup", headers=_auth(), json={"ids": ["1"]}).status_code == 422
    )
    over = client.post(
        "/v1/segments/lookup", headers=_auth(), json={"user_ids": [str(i) for i in range(1001)]}
    )
    assert over.status_code == 413 and "1000" in over.json()["detail"]
    huge = client.post(
        "/v1/segments/lookup",
        headers={**_auth(), "Content-Type": "application/json"},
        content=b'{"user_ids": ["' + b"1" * 200_000 + b'"]}',
    )
    assert huge.status_code == 413


def test_logs_carry_no_raw_user_ids(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    raw = "rawid7654321"
    caplog.set_level(logging.DEBUG)
    client.get(f"/v1/users/{raw}/segment", headers=_auth())
    client.get(f"/v1/users/{raw}/explain", headers=_auth())
    client.post("/v1/segments/lookup", headers=_auth(), json={"user_ids": [raw, "10000001"]})
    client.post("/v1/segments/lookup", headers=_auth(), json={"user_ids": [raw, "bad id"]})
    # the test's own HTTP client (httpx) logs the URLs it calls; everything else is the server
    server = [
        r.getMessage() for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))
    ]
    assert any("/v1/users/{user_id}/segment" in m for m in server), "one log line per request"
    assert not [m for m in server if raw in m or "10000001" in m]


def test_every_answer_comes_from_one_version_during_publishes(
    client: TestClient, redis_url: str
) -> None:
    """frequency_90d carries each version's marker: a mixed answer would show two markers."""
    ids = RAW[:200]
    stop = threading.Event()
    seen: list[tuple[str, set[int]]] = []
    errors: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            r = client.post("/v1/segments/lookup", headers=_auth(), json={"user_ids": ids})
            if r.status_code != 200:
                errors.append(r.text)
                continue
            body = r.json()
            markers = {x["scores"]["frequency_90d"] for x in body["results"]}
            seen.append((body["version"], markers))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(reader) for _ in range(4)]
        for n in range(2, 6):
            publish_raw_users(redis_url, f"v{n}", RAW, TEST_KEY, marker=n, layout=BASE)
            time.sleep(0.05)
        stop.set()
        for f in futures:
            f.result()
    assert not errors
    versions = {v for v, _ in seen}
    assert len(versions) >= 2, f"readers saw only {versions}"
    mixed = [(v, m) for v, m in seen if m != {int(v[1:])}]
    assert not mixed, f"{len(mixed)} of {len(seen)} answers mixed versions: {mixed[:3]}"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server of this test alone (it gets stopped, paused and restarted)."""
    server = EmbeddedRedis(persist_dir=str(tmp_path / "redis"))
    server.start()
    try:
        yield server
    finally:
        if server.pid is not None:
            os.kill(server.pid, signal.SIGCONT)
        server.stop()


def _timed_get(c: TestClient, path: str) -> tuple[int, float, dict[str, str]]:
    t0 = time.perf_counter()
    r = c.get(path, headers=_auth())
    return r.status_code, time.perf_counter() - t0, dict(r.headers)


def _wait_ok(c: TestClient, path: str, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while (status := c.get(path, headers=_auth()).status_code) != 200:
        assert status == 503, status
        assert time.monotonic() < deadline, f"not recovered within {within_s} s"
        time.sleep(0.2)


def test_redis_down_then_back(tmp_path: Path, own_redis: EmbeddedRedis) -> None:
    publish_raw_users(own_redis.url, "v1", RAW[:20], TEST_KEY)
    path = "/v1/users/10000001/segment"
    failures = 3  # configs/api.yaml: breaker_failures
    with TestClient(create_app(_settings(tmp_path, own_redis.url))) as c:
        assert c.get(path, headers=_auth()).status_code == 200
        before = _metrics(c)
        own_redis.stop()  # saves dump.rdb in persist_dir, then exits
        for _ in range(6):  # failures, then the open breaker answering at once
            status, elapsed, headers = _timed_get(c, path)
            assert status == 503 and elapsed < 0.5, (status, elapsed)
            assert int(headers["retry-after"]) >= 1
        down = _metrics(c)
        assert c.get("/healthz").status_code == 200  # alive, not ready
        assert c.get("/healthz/ready").status_code == 503
        own_redis.start()  # same port, same data
        _wait_ok(c, path, within_s=10)
        assert c.get("/healthz/ready").status_code == 200
        after = _metrics(c)

    def moved(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
        return _value(samples, name, **labels) - _value(before, name, **labels)

    segment_503 = {"method": "GET", "route": SEGMENT_ROUTE, "status": "503"}
    assert moved(down, "strata_api_requests_total", **segment_503) == 6
    # the first `failures` calls reach Redis and fail; the open breaker refuses the rest
    assert moved(down, "strata_api_redis_errors_total") == failures
    assert moved(down, "strata_api_breaker_rejections_total") == 6 - failures
    assert _value(before, "strata_api_breaker_open") == 0
    assert _value(down, "strata_api_breaker_open") == 1
    assert _value(after, "strata_api_breaker_open") == 0  # closed again by a good probe
    assert moved(after, "strata_api_requests_total", route=SEGMENT_ROUTE, status="200") >= 1


def test_redis_hanging_then_back(tmp_path: Path, own_redis: EmbeddedRedis) -> None:
    publish_raw_users(own_redis.url, "v1", RAW[:20], TEST_KEY)
    path = "/v1/users/10000001/segment"
    with TestClient(create_app(_settings(tmp_path, own_redis.url))) as c:
        assert c.get(path, headers=_auth()).status_code == 200
        assert own_redis.pid is not None
        os.kill(own_redis.pid, signal.SIGSTOP)  # accepts connections, never answers
        try:
            for _ in range(5):
                status, elapsed, headers = _timed_get(c, path)
                assert status == 503 and elapsed < 0.5, (status, elapsed)
                assert "retry-after" in headers
        finally:
            os.kill(own_redis.pid, signal.SIGCONT)
        _wait_ok(c, path, within_s=10)
