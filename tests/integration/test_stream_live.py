"""The real-time loop over a real recompute: a live order re-tiers its user within seconds
(``"source": "live"`` in the segment API), the sink lands it in the warehouse, calendar
campaigns issue once however often they run, rule statistics add up, and the trigger rules
reload without a restart (a bad file keeps the old ones)."""

from __future__ import annotations

import datetime as dt
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import redis
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.app import create_app
from jobs.campaigns import run_campaigns
from jobs.recompute import RecomputeJob
from strata.config import CONFIG_DIR
from strata.ids import pseudonymise
from strata.io.event_log import EventAppender
from strata.io.snapshots import SnapshotStore
from strata.io.warehouse import Warehouse
from strata.online.codec import snapshot_layout
from strata.realtime.keys import RealtimeKeys
from strata.realtime.stream_config import load_stream_config
from strata.serving.apikeys import dump_records, new_key
from strata.settings import Settings
from strata.timeutil import LOCAL_TZ
from tests.conftest import TEST_KEY
from tests.support import publish_raw_users, rt_stats

pytestmark = pytest.mark.usefixtures("ray_local")

KEYS = RealtimeKeys("strata", 8)  # configs/stream.yaml's partitions
READ_KEY, READ_REC = new_key("reader", ["segments:read"])
FIRST_RAW = 10_000_001
N_USERS = 300


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def wait_for(check: Callable[[], Any], timeout_s: float = 60.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def test_rules_reload_on_file_change_and_a_bad_file_keeps_the_old_rules(
    tmp_path: Path, redis_url: str, settings: Settings
) -> None:
    from jobs.stream import StreamPool

    configs = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, configs)
    publish_raw_users(redis_url, "v1", ["r1", "r2", "r3"], TEST_KEY)
    p = StreamPool(settings, redis_url, workers=1, sink=False, config_dir=str(configs))
    p.start()
    r = redis.Redis.from_url(redis_url)
    appender = EventAppender(redis_url, "strata", load_stream_config())

    def review(raw: str, rating: int) -> None:
        t = now_ms()
        uid = pseudonymise(raw, TEST_KEY.encode())
        event = {"event_id": f"rv.{raw}.{rating}", "user_id": uid, "event_type": "review",
                 "rating": rating, "ts": t}  # fmt: skip
        appender.append([event])

    def acted(raw: str) -> bool:
        return bool(r.llen(KEYS.actions(pseudonymise(raw, TEST_KEY.encode()))))

    try:
        triggers = configs / "triggers.yaml"
        text = triggers.read_text()
        # negative_review fires at rating <= 2; make it <= 3, then break the file
        assert "lte: 2" in text
        triggers.write_text(text.replace("lte: 2", "lte: 3", 1))
        time.sleep(3)  # the worker checks the file every 2 s
        review("r1", 3)
        wait_for(lambda: acted("r1"), what="the reloaded rule firing at rating 3")
        triggers.write_text(text.replace("rules:", "rulez:", 1))
        wait_for(lambda: p.poll()["reload_errors"], what="the reload error")
        assert "triggers.yaml" in p.poll()["reload_errors"][0]
        review("r2", 3)  # the old (reloaded) rules still apply
        wait_for(lambda: acted("r2"), what="the old rules kept")
        active = orjson.loads(r.get(KEYS.rules) or b"[]")
        assert {x["name"] for x in active} >= {"cart_abandoned", "negative_review"}
    finally:
        p.stop()
        appender.close()


# the module's other tests share one recomputed world (created after the test above)
@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, redis_server: Any) -> Iterator[Settings]:
    """A generated warehouse ending yesterday, recomputed as of today 00:00 and published."""
    from jobs import generate

    redis.Redis.from_url(redis_server.url).flushall()
    root = str(tmp_path_factory.mktemp("live") / "data")
    settings = Settings(data=root, pseudonym_key=TEST_KEY, n_buckets=8, redis_url=redis_server.url)
    today = dt.datetime.now(LOCAL_TZ).date()
    generate.run(settings, users=N_USERS, days=45, seed=5, end=today)
    as_of = dt.datetime.combine(today, dt.time(), LOCAL_TZ)
    RecomputeJob(settings, as_of, actors=2).run()
    yield settings


@pytest.fixture(scope="module")
def pool(world: Settings) -> Iterator[Any]:
    from jobs.stream import StreamPool

    assert world.redis_url
    p = StreamPool(world, world.redis_url, workers=2, sink=True)
    p.start()
    try:
        yield p
    finally:
        p.stop()


def snapshot_table(settings: Settings) -> Any:
    store = SnapshotStore(settings.data)
    return store.read(store.versions()[-1])


def _region(region: str | None) -> str | None:
    labels = snapshot_layout().field("region").labels
    return None if region is None else region if region in labels else "other"


def test_a_live_order_retiers_its_user_in_the_api_and_lands_in_the_warehouse(
    world: Settings, pool: Any
) -> None:
    assert world.redis_url
    table = snapshot_table(world)
    by_id = {r["user_id"]: r for r in table.to_pylist()}
    raw = next(
        str(FIRST_RAW + k)
        for k in range(N_USERS)
        if by_id.get(pseudonymise(str(FIRST_RAW + k), TEST_KEY.encode()), {}).get("tier")
        not in (None, "high_value")
    )
    uid = pseudonymise(raw, TEST_KEY.encode())
    before = by_id[uid]
    rows_before = Warehouse(world.data).summary()["events"]["rows"]
    t = now_ms()
    order = {"event_id": "live-order-1", "user_id": uid, "event_type": "order",
             "order_id": "LO1", "amount_cny": 5000.0, "ts": t, "received_ms": t}  # fmt: skip
    appender = EventAppender(world.redis_url, "strata", load_stream_config())
    assert appender.append([order]).accepted == 1
    appender.close()
    r = redis.Redis.from_url(world.redis_url)
    wait_for(lambda: r.exists(KEYS.live(uid)), what="the live overlay")
    settings = world.model_copy(update={"api_keys": dump_records([READ_REC])})
    with TestClient(create_app(settings)) as client:
        got = client.get(
            f"/v1/users/{raw}/segment", headers={"Authorization": f"Bearer {READ_KEY}"}
        ).json()
    assert got["source"] == "live" and got["last_event_at"] is not None
    assert got["scores"]["frequency_90d"] == (before["frequency_90d"] or 0) + 1
    assert got["scores"]["monetary_90d_cny"] == pytest.approx(
        (before["monetary_90d"] or 0) + 5000.0, abs=0.01
    )
    assert got["scores"]["recency_days"] == 0
    assert got["scores"]["rfm_score"] >= before["rfm_score"]
    # the tags a live order changes follow it: recency band, LTV, ARPU 30d
    behaviour, value = got["tag_groups"]["behaviour"], got["tag_groups"]["value"]
    assert behaviour["recency_band"] == "within_30d"
    assert behaviour["rfm_score"] == got["scores"]["rfm_score"]
    assert behaviour["spend_level"] == "high"  # 5,000 CNY tops every buyer's 90-day spend
    assert value["ltv_cny"] == pytest.approx((before["ltv_cny"] or 0) + 5000.0, abs=0.01)
    assert value["arpu_30d_cny"] == pytest.approx((before["arpu_30d_cny"] or 0) + 5000.0, abs=0.01)
    assert got["tag_groups"]["basic"]["region"] == _region(before["region"])
    assert got["lifecycle_stage"] not in ("declining", "churned")
    # the sink commits the order into the warehouse within its interval
    wait_for(
        lambda: Warehouse(world.data).summary()["events"]["rows"] == rows_before + 1,
        timeout_s=30,
        what="the order in the warehouse",
    )


def test_calendar_campaigns_issue_once_however_often_they_run(world: Settings, pool: Any) -> None:
    assert world.redis_url
    eve = dt.date(2026, 12, 31)  # new_year is 2027-01-01 in configs/calendar.yaml
    first = run_campaigns(world, eve, redis_url=world.redis_url)
    table = snapshot_table(world)
    targets = int(
        pc.sum(pc.is_in(table.column("tier"), pa.array(["high_value", "potential"]))).as_py()
    )
    assert first.targeted == targets > 0 and first.appended == targets
    again = run_campaigns(world, eve, redis_url=world.redis_url)
    assert again.appended == 0 and again.duplicates == targets
    assert run_campaigns(world, dt.date(2026, 12, 30), redis_url=world.redis_url).rules == []
    r = redis.Redis.from_url(world.redis_url)

    def fired() -> int:
        stats = rt_stats(r)
        return sum(
            int(v)
            for k, v in stats.items()
            if k.startswith(b"festival_eve|") and (k.endswith(b"|fired") or b"suppressed" in k)
        )

    wait_for(lambda: fired() == targets, what="every campaign entry decided")
    uid = int(table.filter(pc.equal(table.column("tier"), "high_value"))["user_id"][0].as_py())
    acts = [orjson.loads(a) for a in r.lrange(KEYS.actions(uid), 0, -1)]
    gift = next(a for a in acts if a["rule"] == "festival_eve" and a["action"] == "gift_pack")
    assert gift["trigger"]["campaign"] == "new_year"
    # rule statistics through the CLI
    from jobs.cli import app

    out = CliRunner().invoke(
        app, ["rules", "stats", "--data", world.data, "--json"],
        env={"STRATA_REDIS_URL": world.redis_url},
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    report = orjson.loads(out.output)
    eve_stats = next(x for x in report["rules"] if x["name"] == "festival_eve")
    assert eve_stats["fired"] + sum(eve_stats["suppressed"].values()) == targets
    assert set(eve_stats["by_tier"]) <= {"high_value", "potential"}


def test_an_experiment_arm_sets_the_coupon_and_the_exposure_reaches_the_warehouse(
    world: Settings, pool: Any
) -> None:
    """The shipped experiment (potential tier, coupon 10 vs 20 CNY) on the delivery path: a
    potential user's abandoned cart gets its arm's coupon, and its first exposure (source
    action) lands in the warehouse's exposures table through the sink."""
    from strata.experiments.config import load_experiments
    from strata.strategies.config import load_strategies

    assert world.redis_url
    exp = load_experiments().experiments[0]
    strategies = load_strategies()
    table = snapshot_table(world)
    potential = table.filter(pc.equal(table.column("tier"), "potential"))["user_id"].to_pylist()
    enabling = [s for s in strategies.strategies if "cart_abandoned" in s.trigger_rules
                and "potential" in s.applies_to.tiers]  # fmt: skip
    uid = next(
        u
        for u in potential
        if exp.assign(u) != "holdout" and not all(strategies.in_holdout(s, u) for s in enabling)
    )
    arm = exp.assign(uid)
    t = now_ms() - 31 * 60_000
    cart = {"event_id": "exp-cart-1", "user_id": uid, "event_type": "add_to_cart",
            "category": "seafood", "ts": t, "received_ms": now_ms()}  # fmt: skip
    appender = EventAppender(world.redis_url, "strata", load_stream_config())
    assert appender.append([cart]).accepted == 1
    appender.close()
    r = redis.Redis.from_url(world.redis_url)

    def coupon() -> dict[str, Any] | None:
        acts = [orjson.loads(a) for a in r.lrange(KEYS.actions(uid), 0, -1)]
        return next(
            (a for a in acts if a["rule"] == "cart_abandoned" and a["action"] == "coupon"), None
        )

    got = wait_for(coupon, what="the cart coupon")
    spec = exp.arm(arm)
    assert spec is not None
    assert got["params"]["value_cny"] == spec.overrides["coupon_value_cny"]
    assert r.get(KEYS.exposed(exp.name, uid)) == arm.encode()

    def exposed() -> bool:
        ex = Warehouse(world.data).read_table("exposures")
        rows = ex.filter(pc.equal(ex.column("user_id"), uid)).to_pylist()
        return bool(rows) and rows[0]["arm"] == arm and rows[0]["source"] == "action"

    wait_for(exposed, timeout_s=30, what="the exposure in the warehouse")
