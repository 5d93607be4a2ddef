"""Schemathesis over the API's own OpenAPI spec, against a real uvicorn server and Redis:
generated requests (valid and invalid) must never get a 5xx or an answer that breaks the
documented schema, status codes, content types or headers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from api.app import create_app
from strata.io.redis_server import free_port
from strata.serving.apikeys import dump_records, new_key
from strata.settings import Settings
from tests.conftest import TEST_KEY
from tests.support import publish_raw_users

pytestmark = pytest.mark.integration

KEY, RECORD = new_key("schema", ["segments:read"])


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory, redis_server: Any) -> Iterator[str]:
    """A uvicorn server with the app on a free port, over a published snapshot."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    # a few ids schemathesis is likely to generate ("0", "00", "A", ...) exist, so 200s are
    # checked too, not only 404s
    raw = ["0", "00", "000", "1", "A", "a", "_", "-", *[str(10_000_001 + i) for i in range(50)]]
    publish_raw_users(redis_server.url, "v1", raw, TEST_KEY, meta={"tiers": {"ordinary": 3}})
    data = tmp_path_factory.mktemp("schema") / "data"
    app = create_app(
        Settings(data=str(data), redis_url=redis_server.url, api_keys=dump_records([RECORD]))
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


OPERATIONS = [
    ("GET", "/v1/users/{user_id}/segment"),
    ("POST", "/v1/segments/lookup"),
    ("GET", "/v1/users/{user_id}/explain"),
    ("GET", "/v1/tiers"),
    ("GET", "/healthz"),
    ("GET", "/healthz/ready"),
    ("GET", "/metrics"),
]

NO_INPUT = {"/v1/tiers", "/healthz", "/healthz/ready", "/metrics"}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_api_conforms_to_its_openapi_spec(
    api_url: str, method: str, path: str, mode: GenerationMode
) -> None:
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    operation = schema[path][method]
    if mode is GenerationMode.NEGATIVE and path in NO_INPUT:
        pytest.skip("no parameters or body: nothing to make invalid")
    auth = {"Authorization": f"Bearer {KEY}"}

    @given(case=operation.as_strategy(mode))
    @settings(
        max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def run(case: Any) -> None:
        case.call_and_validate(base_url=api_url, headers=auth)

    run()


def test_spec_documents_every_route(api_url: str, tmp_path: Path) -> None:
    import httpx

    spec = httpx.get(f"{api_url}/openapi.json").json()
    assert set(spec["paths"]) == {
        "/v1/users/{user_id}/segment",
        "/v1/segments/lookup",
        "/v1/users/{user_id}/explain",
        "/v1/tiers",
        "/healthz",
        "/healthz/ready",
        "/metrics",
    }
    names = set(spec["components"]["schemas"])
    assert {"SegmentPublic", "LookupPublic", "ExplainPublic", "TiersPublic"} <= names
