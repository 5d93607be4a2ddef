"""One Redis namespace setting, end to end: the recompute publishes under it, rollback and the
API read under it, and nothing is visible under another namespace."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.app import create_app
from jobs import generate
from jobs.recompute import RecomputeJob
from strata.io.segment_store import SegmentStore
from strata.serving.apikeys import dump_records, new_key
from strata.settings import Settings
from strata.timeutil import parse_as_of
from tests.conftest import TEST_KEY

pytestmark = pytest.mark.integration

READ_KEY, READ_REC = new_key("reader", ["segments:read"])


def test_a_changed_namespace_reaches_publish_and_serving(
    tmp_path: Path, redis_url: str, ray_local: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRATA_REDIS_NAMESPACE", "shop-a:segments")
    settings = Settings(
        data=str(tmp_path / "data"),
        pseudonym_key=SecretStr(TEST_KEY),
        n_buckets=4,
        redis_url=redis_url,
        api_keys=dump_records([READ_REC]),
    )
    assert settings.redis_namespace == "shop-a:segments"  # read from the environment
    generate.run(settings, users=200, days=30, seed=3, end=dt.date(2026, 10, 1))
    result = RecomputeJob(settings, parse_as_of("2026-10-01"), actors=1).run()

    with SegmentStore(redis_url, namespace="shop-a:segments") as store:
        assert store.current() == result.version
    with SegmentStore(redis_url, namespace="strata") as default:
        assert default.current() is None  # nothing leaked into the default prefix

    auth = {"Authorization": f"Bearer {READ_KEY}"}
    with TestClient(create_app(settings)) as client:
        r = client.get("/v1/users/10000001/segment", headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["version"] == result.version
    other = settings.model_copy(update={"redis_namespace": "strata"})
    with TestClient(create_app(other)) as client:
        r = client.get("/v1/users/10000001/segment", headers=auth)
        assert r.status_code == 503  # nothing published under the default namespace


def test_a_bad_namespace_is_refused_by_the_settings() -> None:
    with pytest.raises(ValueError, match="namespace"):
        Settings(redis_namespace="a b")
