"""GET /v1/users/{id}/history over three weekly snapshots on disk and a live overlay in a real
embedded Redis: newest first, tier changes with their rule, 404, scopes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
from fastapi.testclient import TestClient

from api.app import create_app
from api.models import HistoryPublic
from strata.ids import pseudonymise_many
from strata.io.history import UserHistoryReader
from strata.io.snapshots import SnapshotStore
from strata.realtime.keys import RealtimeKeys
from strata.serving.apikeys import dump_records
from strata.settings import Settings
from strata.synth.users import raw_user_ids
from tests.conftest import TEST_KEY
from tests.integration.test_whatif import (
    REPORTS_KEY,
    REPORTS_REC,
    SEGMENTS_KEY,
    SEGMENTS_REC,
    USERS,
    weekly_snapshots,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory, ray_local: Any) -> str:
    return weekly_snapshots(tmp_path_factory.getbasetemp())


@pytest.fixture
def client(data_root: str, redis_url: str) -> Iterator[TestClient]:
    settings = Settings(
        data=data_root, redis_url=redis_url, api_keys=dump_records([REPORTS_REC, SEGMENTS_REC])
    )
    with TestClient(create_app(settings)) as c:
        yield c


def _auth(key: str = SEGMENTS_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _tiers(data_root: str) -> tuple[list[str], dict[int, list[Any]]]:
    """Versions newest first, and each user's (tier, rule) per version (None where absent)."""
    store = SnapshotStore(data_root)
    versions = sorted(store.versions(), key=lambda v: store.manifest(v)["as_of_ms"], reverse=True)
    out: dict[int, list[Any]] = {}
    for i, v in enumerate(versions):
        t = store.read(v, ["user_id", "tier", "tier_rule"]).to_pylist()
        for row in t:
            out.setdefault(row["user_id"], [None] * len(versions))[i] = (
                row["tier"],
                row["tier_rule"],
            )
    return versions, out


def test_history_newest_first_with_the_rule_of_each_change(
    client: TestClient, data_root: str
) -> None:
    versions, tiers = _tiers(data_root)
    raw = raw_user_ids(USERS)
    pseudo = dict(zip(pseudonymise_many(raw, TEST_KEY.encode()).tolist(), raw, strict=True))
    # a user in every snapshot whose tier changed between the two newest
    uid = next(
        u for u, seq in tiers.items() if None not in seq and seq[0][0] != seq[1][0] and u in pseudo
    )
    r = client.get(f"/v1/users/{pseudo[uid]}/history", headers=_auth())
    assert r.status_code == 200, r.text
    doc = HistoryPublic.model_validate(r.json())
    assert doc.user_id == pseudo[uid] and doc.snapshots == 3 and doc.live_available
    assert [e.version for e in doc.entries] == versions
    assert [e.source for e in doc.entries] == ["snapshot"] * 3
    assert [(e.tier, e.tier_rule) for e in doc.entries] == tiers[uid]
    as_ofs = [e.as_of for e in doc.entries]
    assert as_ofs == sorted(as_ofs, reverse=True)
    newest, older, oldest = doc.entries
    assert newest.changed is True and newest.from_tier == older.tier
    assert newest.changed_by == newest.tier_rule and newest.tier_explanation
    assert older.changed == (older.tier != oldest.tier)
    assert oldest.from_tier is None and oldest.changed is None  # first snapshot: no previous
    assert newest.rfm_score is not None and newest.lifecycle_stage


def test_history_shows_the_live_change_since_the_newest_snapshot(
    client: TestClient, data_root: str, redis_url: str
) -> None:
    versions, tiers = _tiers(data_root)
    raw = raw_user_ids(USERS)[:50]
    ids = pseudonymise_many(raw, TEST_KEY.encode()).tolist()
    k = next(i for i, u in enumerate(ids) if u in tiers and tiers[u][0] is not None)
    now_tier = tiers[ids[k]][0][0]
    live_tier = "high_value" if now_tier != "high_value" else "potential"
    overlay = {
        "version": versions[0],
        "tier": live_tier,
        "tier_rule": "score_band",
        "tier_explanation": "rfm_score 0.9 > 0.8 -> high_value",
        "lifecycle_stage": "growing",
        "rfm_score": 0.9,
        "last_event_at": "2026-10-02T10:00:00+08:00",
    }
    client_redis = redis.Redis.from_url(redis_url)
    keys = RealtimeKeys("strata", 8)  # the reader's partitions before any append
    client_redis.set(keys.live(ids[k]), orjson.dumps(overlay))
    # an overlay based on an older snapshot is stale: not shown
    stale = next(i for i, u in enumerate(ids) if i != k and u in tiers and tiers[u][0])
    client_redis.set(keys.live(ids[stale]), orjson.dumps({**overlay, "version": versions[1]}))
    client_redis.close()
    doc = client.get(f"/v1/users/{raw[k]}/history", headers=_auth()).json()
    live = doc["entries"][0]
    assert live["source"] == "live" and live["version"] == versions[0]
    assert live["tier"] == live_tier and live["from_tier"] == now_tier
    assert live["changed"] is True and live["changed_by"] == "score_band"
    assert live["as_of"] == "2026-10-02T10:00:00+08:00"
    assert [e["source"] for e in doc["entries"][1:]] == ["snapshot"] * (len(doc["entries"]) - 1)
    stale_doc = client.get(f"/v1/users/{raw[stale]}/history", headers=_auth()).json()
    assert all(e["source"] == "snapshot" for e in stale_doc["entries"])


def test_history_404_and_scope(client: TestClient) -> None:
    r = client.get("/v1/users/nobody-here/history", headers=_auth())
    assert r.status_code == 404 and "no retained snapshot" in r.json()["detail"]
    assert client.get("/v1/users/10000001/history").status_code == 401
    assert client.get("/v1/users/10000001/history", headers=_auth(REPORTS_KEY)).status_code == 403
    assert client.get("/v1/users/bad id!/history", headers=_auth()).status_code == 422


def test_reader_reads_one_bucket_file_per_snapshot(data_root: str) -> None:
    reader = UserHistoryReader(data_root)
    versions, tiers = _tiers(data_root)
    uid = next(iter(tiers))
    rows = reader.rows(uid)
    assert [r.snapshot.version for r in rows] == [
        v for v, t in zip(versions, tiers[uid], strict=True) if t is not None
    ]
    assert all(r.row["user_id"] == uid for r in rows)
    assert reader.rows(12345) == []
