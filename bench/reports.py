"""Benchmark: the whole tier report on Modin vs plain pandas (the same functions) vs DuckDB.

    python bench/reports.py [--data /tmp/strata-bench-reports] [--users 1000000] [--snapshots 8]

1. Data: ``<STRATA_BENCH_DATA>-reports`` (generated when missing, kept for reruns). Eight real
   recomputes of 1M users would take far longer than the report itself, so the snapshots are
   *synthesised*: snapshot-shaped Parquet datasets (the recompute's bucket layout and the
   columns the report reads plus a few it does not: rfm_score, recency_days) a week apart,
   with users arriving every week, scores that drift (tiers churn between snapshots: a few
   percent move each week), lifecycle stages, the churn-warning tier, the recompute's three
   tier rules, and the RFM base bands on the newer half only (as when the bands were added).
   The warehouse holds their order events (Poisson per user, lognormal amounts, coupons on a
   third) over the snapshots' periods and strategy exposures (holdout arm included).
2. DuckDB (2 threads, in this process before Ray starts): the strongest SQL for the same
   metrics: each snapshot read once into a temporary table with only its columns, the orders
   once (filtered, projected), then per snapshot one aggregate per output (tiers, lifecycle,
   bands with GROUPING SETS, revenue join, the pair join grouped by (from, to, rule, churn
   flags), strategies). Warm once, best of ``--repeat``.
3. pandas: ``jobs._tiers_report.compute(engine="pandas")``: the same reading and metric code
   as `strata report tiers` (without writing the report files).
4. Modin: the same call with ``engine="modin"`` on a local Ray (``--cpus``, default 2).
5. Cross-check: DuckDB's numbers equal the pandas report's (every tier metric, lifecycle,
   bands, transition cells and rules, strategy reach and conversion; floats to 1e-9) and the
   Modin report equals the pandas one; mismatches are printed and counted.

Ratios follow the other benchmarks: DuckDB seconds / engine seconds (> 1: the engine is faster
than DuckDB). The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import posixpath
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _data
import duckdb
import numpy as np
import pyarrow as pa
from rich.console import Console
from rich.table import Table

from jobs._tiers_report import compute, default_spec
from strata.ids import bucket_of
from strata.io.report_inputs import snapshot_refs
from strata.io.snapshots import SnapshotStore
from strata.io.warehouse import Warehouse
from strata.reports.metrics import CHURNED_STAGE, HOLDOUT_ARM, period_bounds
from strata.reports.model import TiersReport
from strata.schema import TIMESTAMP
from strata.tiering.tiers import RULE_BAND, RULE_CHURN, RULE_HOLD
from strata.timeutil import DAY_MS, LOCAL_TZ

console = Console()
N_BUCKETS = 32
PERIOD_DAYS = 30
END = dt.datetime(2026, 11, 1, tzinfo=LOCAL_TZ)


# ----------------------------------------------------------------------------- data
def _write_snapshot(
    store: SnapshotStore, version: str, as_of: dt.datetime, cols: dict[str, Any]
) -> None:
    table = pa.table(cols)
    ids = table.column("user_id").to_numpy()
    buckets = bucket_of(ids, N_BUCKETS)
    order = np.argsort(buckets * (ids.max() + 1) + ids, kind="stable")
    table, buckets = table.take(pa.array(order)), buckets[order]
    cuts = np.searchsorted(buckets, np.arange(N_BUCKETS + 1))
    for b in range(N_BUCKETS):
        if cuts[b + 1] > cuts[b]:
            store.write_bucket(version, b, N_BUCKETS, table.slice(cuts[b], cuts[b + 1] - cuts[b]))
    as_of_ms = int(as_of.timestamp() * 1000)
    store.write_manifest(
        version, {"version": version, "as_of_ms": as_of_ms, "as_of": as_of.isoformat()}
    )


def _rank(x: np.ndarray) -> np.ndarray:
    r = np.empty(len(x))
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    return r / max(len(x) - 1, 1)


def synthesise(data: str, users: int, snapshots: int, seed: int = 5) -> None:
    """Write ``snapshots`` weekly snapshot datasets of up to ``users`` users, and the
    warehouse's orders and exposures over their periods (see the module docstring)."""
    rng = np.random.default_rng(seed)
    strategies = list(default_spec(PERIOD_DAYS).strategies)
    as_ofs = [END - dt.timedelta(days=7 * (snapshots - 1 - k)) for k in range(snapshots)]
    # users arrive over time: 1% of the final population joins each week
    present = [int(users * (1 - 0.01 * (snapshots - 1 - k))) for k in range(snapshots)]
    ids = np.arange(1, users + 1, dtype=np.int64) * 7919 + 1_000_003  # spread over buckets
    value = rng.normal(0, 1, users)
    drift = np.zeros(users)
    activity = rng.normal(0, 0.8, users)
    ltv = np.exp(value * 0.8 + 5.0) * rng.uniform(0.5, 1.5, users)
    store = SnapshotStore(data)
    prev_tier: np.ndarray | None = None
    tier_names = np.array(["high_value", "potential", "ordinary", "churn_warning"])
    for k, (as_of, n) in enumerate(zip(as_ofs, present, strict=True)):
        drift += rng.normal(0, 0.25, users)
        activity += rng.normal(0, 0.3, users)
        ltv *= 1 + rng.uniform(0, 0.03, users)
        score = _rank(value[:n] + drift[:n])
        band = np.where(score > 0.8, 0, np.where(score > 0.5, 1, 2))
        stage = np.select(
            [activity[:n] < -1.3, activity[:n] < -0.7, np.arange(n) >= present[max(0, k - 4)],
             value[:n] > 0.3],
            ["churned", "declining", "new", "mature"], "growing",
        )  # fmt: skip
        churn = np.isin(stage, ["declining", "churned"]) & (ltv[:n] >= 100)
        tier_idx = np.where(churn, 3, band)
        rule = np.where(churn, RULE_CHURN, RULE_BAND).astype(object)
        if prev_tier is not None:
            m = len(prev_tier)
            hold = (~churn[:m]) & (prev_tier < 3) & (prev_tier != band[:m])
            hold &= rng.random(m) < 0.3  # near a threshold: hysteresis keeps the old band
            tier_idx[:m] = np.where(hold, prev_tier, tier_idx[:m])
            rule[:m] = np.where(hold, RULE_HOLD, rule[:m])
        prev_tier = tier_idx.copy()
        cols: dict[str, Any] = {
            "user_id": ids[:n],
            "rfm_score": score,
            "recency_days": rng.integers(0, 200, n).astype(np.int32),
            "tier": tier_names[tier_idx],
            "tier_rule": rule.astype(str),
            "lifecycle_stage": stage,
            # a few users without a known LTV (null, as a recompute writes them)
            "ltv_cny": pa.array(ltv[:n], mask=rng.random(n) < 0.02),
        }
        if k >= snapshots // 2:  # the newer half has the RFM base bands
            rec = np.select(
                [activity[:n] > 0, activity[:n] > -0.5, activity[:n] > -1.0, activity[:n] > -1.5],
                ["within_30d", "lapsed_30d", "lapsed_90d", "lapsed_180d"], "no_order",
            )  # fmt: skip
            freq = np.select(
                [value[:n] > 1.0, value[:n] > 0, value[:n] > -1.0], ["weekly", "monthly",
                 "quarterly"], "rarer",
            )  # fmt: skip
            ltv_rank = _rank(ltv[:n])
            cols["recency_band"] = rec
            cols["frequency_band"] = freq
            cols["spend_level"] = np.where(
                ltv_rank > 0.8, "high", np.where(ltv_rank > 0.4, "mid", "low")
            )
        _write_snapshot(store, f"vbench{k:02d}", as_of, cols)
        console.print(f"synthesised snapshot {k + 1}/{snapshots} ({n:,} users)")

    lo = int(as_ofs[0].timestamp() * 1000) - PERIOD_DAYS * DAY_MS
    hi = int(as_ofs[-1].timestamp() * 1000)
    weeks = (hi - lo) / (7 * DAY_MS)
    rate = np.clip(0.3 * np.exp(0.6 * value), 0.02, 3.0) * weeks
    n_orders = rng.poisson(rate)
    who = np.repeat(ids, n_orders)
    total = len(who)
    amount = np.round(rng.lognormal(4.2, 0.5, total), 2)
    coupon = rng.random(total) < 0.33
    orders = pa.table(
        {
            "user_id": who,
            "ts": pa.array(rng.integers(lo, hi, total), pa.int64()).cast(TIMESTAMP),
            "event_type": pa.array(["order"] * total, pa.string()),
            "amount_cny": amount,
            "discount_cny": np.where(coupon, np.round(rng.uniform(3, 15, total), 2), 0.0),
        }
    )
    n_exp = users // 4
    exposed = rng.choice(users, n_exp, replace=False)
    exposures = pa.table(
        {
            "user_id": ids[exposed],
            "ts": pa.array(rng.integers(lo, hi, n_exp), pa.int64()).cast(TIMESTAMP),
            "experiment": np.array(strategies)[rng.integers(0, len(strategies), n_exp)],
            "arm": np.where(rng.random(n_exp) < 0.05, HOLDOUT_ARM, "treatment"),
            "source": np.full(n_exp, "action"),
        }
    )
    wh = Warehouse(data)
    wh.create(N_BUCKETS, overwrite=True)
    result = wh.write_partitioned("events", orders, "bench-orders")
    result.extend(wh.write_partitioned("exposures", exposures, "bench-exposures"))
    wh.commit(result, "bench")
    console.print(f"synthesised {total:,} orders and {n_exp:,} exposures")


# ----------------------------------------------------------------------------- DuckDB
def _connect(threads: int) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    return con


def duckdb_report(data: str, threads: int) -> dict[str, Any]:
    """Every number of the report, by SQL: {version: {...}} and the pairs' moves."""
    con = _connect(threads)
    spec = default_spec(PERIOD_DAYS)
    refs = snapshot_refs(data)
    lo = min(period_bounds(at, PERIOD_DAYS)[0] for _, at, _ in refs)
    hi = max(at for _, at, _ in refs)
    wh = Warehouse(data)
    events = [f for b in wh.buckets("events") for f in wh.bucket_files("events", b)]
    exposures = [f for b in wh.buckets("exposures") for f in wh.bucket_files("exposures", b)]
    con.execute(
        "CREATE TEMP TABLE orders AS SELECT user_id, epoch_ms(ts) AS ts_ms, amount_cny, "
        "discount_cny FROM read_parquet(?) WHERE event_type = 'order' AND epoch_ms(ts) >= ? "
        "AND epoch_ms(ts) < ?",
        [events, lo, hi],
    )
    names = ", ".join(f"'{s}'" for s in spec.strategies)
    con.execute(
        "CREATE TEMP TABLE exposed AS SELECT user_id, experiment, epoch_ms(ts) AS ts_ms "
        f"FROM read_parquet(?) WHERE arm <> '{HOLDOUT_ARM}' AND experiment IN ({names})",
        [exposures],
    )
    store = SnapshotStore(data)
    out: dict[str, Any] = {"snapshots": {}, "moves": {}}
    prev: str | None = None
    for version, as_of_ms, _ in refs:
        glob = posixpath.join(store.path(version), "features", "*", "*.parquet")
        described = con.execute(f"DESCRIBE SELECT * FROM read_parquet('{glob}')").fetchall()
        schema = [r[0] for r in described]
        bands = [c for c in ("recency_band", "frequency_band", "spend_level") if c in schema]
        cols = ", ".join(["user_id", "tier", "tier_rule", "lifecycle_stage", "ltv_cny", *bands])
        cur = f"s_{version}"
        con.execute(f"CREATE TEMP TABLE {cur} AS SELECT {cols} FROM read_parquet('{glob}')")
        p_lo, p_hi = period_bounds(as_of_ms, PERIOD_DAYS)
        snap: dict[str, Any] = {}
        snap["tiers"] = {
            t: {"users": n, "ltv_sum": s, "ltv_n": c}
            for t, n, s, c in con.execute(
                f"SELECT tier, count(*), sum(ltv_cny), count(ltv_cny) FROM {cur} GROUP BY tier"
            ).fetchall()
        }
        snap["lifecycle"] = dict(
            con.execute(f"SELECT lifecycle_stage, count(*) FROM {cur} GROUP BY 1").fetchall()
        )
        snap["bands"] = {}
        if bands:
            sets = ", ".join(f"({b})" for b in bands)
            sel = ", ".join(bands)
            for row in con.execute(
                f"SELECT {sel}, count(*) FROM {cur} GROUP BY GROUPING SETS ({sets})"
            ).fetchall():
                for band, label in zip(bands, row[:-1], strict=True):
                    if label is not None:
                        snap["bands"].setdefault(band, {})[label] = row[-1]
        snap["revenue"] = {
            t: {"revenue": r, "orders": n, "coupon": c}
            for t, r, n, c in con.execute(
                f"SELECT s.tier, sum(o.amount_cny), count(*), sum(o.discount_cny) FROM orders o "
                f"JOIN {cur} s USING (user_id) WHERE o.ts_ms >= ? AND o.ts_ms < ? GROUP BY 1",
                [p_lo, p_hi],
            ).fetchall()
        }
        snap["strategies"] = {
            (t, e): (reach, conv)
            for t, e, reach, conv in con.execute(
                f"""
                WITH first AS (
                  SELECT user_id, experiment, min(ts_ms) AS first_ms FROM exposed
                  WHERE ts_ms >= $lo AND ts_ms < $hi GROUP BY ALL),
                last AS (
                  SELECT user_id, max(ts_ms) AS last_ms FROM orders
                  WHERE ts_ms >= $lo AND ts_ms < $hi GROUP BY ALL)
                SELECT s.tier, f.experiment, count(*),
                       count(*) FILTER (WHERE l.last_ms > f.first_ms)
                FROM first f JOIN {cur} s USING (user_id) LEFT JOIN last l USING (user_id)
                GROUP BY ALL""",
                {"lo": p_lo, "hi": p_hi},
            ).fetchall()
        }
        snap["users"] = sum(t["users"] for t in snap["tiers"].values())
        if prev is not None:
            out["moves"][version] = con.execute(
                f"""SELECT p.tier, c.tier, c.tier_rule,
                          p.lifecycle_stage = '{CHURNED_STAGE}',
                          c.lifecycle_stage = '{CHURNED_STAGE}', count(*)
                   FROM {cur} c JOIN s_{prev} p USING (user_id) GROUP BY ALL"""
            ).fetchall()  # fmt: skip
            con.execute(f"DROP TABLE s_{prev}")
        out["snapshots"][version] = snap
        prev = version
    con.close()
    return out


def cross_check(duck: dict[str, Any], report: TiersReport) -> list[str]:
    """Where DuckDB's numbers and the report's differ (empty: they agree)."""
    bad: list[str] = []

    def same(a: float | None, b: float | None, where: str) -> None:
        if a is None or b is None:
            if (a or 0) != (b or 0):
                bad.append(f"{where}: {a} != {b}")
        elif not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6):
            bad.append(f"{where}: {a} != {b}")

    for i, s in enumerate(report.snapshots):
        d = duck["snapshots"][s.version]
        same(s.users, d["users"], f"{s.version} users")
        moves = duck["moves"].get(s.version, [])
        for tier, m in s.tiers.items():
            t = d["tiers"].get(tier, {"users": 0, "ltv_sum": None, "ltv_n": 0})
            r = d["revenue"].get(tier, {"revenue": 0.0, "orders": 0, "coupon": 0.0})
            w = f"{s.version} {tier}"
            same(m.users, t["users"], f"{w} users")
            if m.users:
                same(m.arpu_cny, r["revenue"] / m.users, f"{w} arpu")
                same(m.orders_per_user, r["orders"] / m.users, f"{w} orders/user")
                same(m.coupon_cost_cny, r["coupon"], f"{w} coupon")
                same(m.ltv_cny, t["ltv_sum"] / t["ltv_n"] if t["ltv_n"] else None, f"{w} ltv")
            if i:
                both = sum(n for _, to, _, _, _, n in moves if to == tier)
                lost = sum(n for f, _, _, was, now, n in moves if f == tier and now and not was)
                back = sum(n for _, to, _, was, now, n in moves if to == tier and was and not now)
                same(m.new_users, m.users - both, f"{w} new")
                same(m.lost_users, lost, f"{w} lost")
                same(m.returning_users, back, f"{w} returning")
        for stage, n in s.lifecycle.items():
            same(n, d["lifecycle"].get(stage, 0), f"{s.version} stage {stage}")
        for band, labels in s.bands.items():
            for label, n in labels.items():
                same(n, d["bands"].get(band, {}).get(label, 0), f"{s.version} {band}={label}")
        if set(s.bands) != set(d["bands"]):
            bad.append(f"{s.version} bands {sorted(s.bands)} != {sorted(d['bands'])}")
        strategies = {(t, e): (v.reach, v.converted) for t, m in s.strategies.items()
                      for e, v in m.items()}  # fmt: skip
        if strategies != d["strategies"]:
            bad.append(f"{s.version} strategies differ")
    for t in report.transitions:
        cells: dict[tuple[str, str, str], int] = {}
        for f, to, rule, _, _, n in duck["moves"][t.to_version]:
            cells[(f, to, rule)] = cells.get((f, to, rule), 0) + n
        ours = {(f, to, rule): n for f, row in t.by_rule.items() for to, rules in row.items()
                for rule, n in rules.items()}  # fmt: skip
        if ours != cells:
            bad.append(f"transition to {t.to_version}: by_rule differs")
        for f, row in t.matrix.items():
            for to, n in row.items():
                want = sum(v for (a, b, _), v in cells.items() if a == f and b == to)
                same(n, want, f"matrix {t.to_version} {f}->{to}")
    return bad


def engines_differ(a: TiersReport, b: TiersReport) -> int:
    """Leaves of two reports that differ (floats to 1e-9)."""

    def flat(x: Any, p: str = "") -> dict[str, Any]:
        if isinstance(x, dict):
            return {k: v for key, y in x.items() for k, v in flat(y, f"{p}.{key}").items()}
        if isinstance(x, list):
            return {k: v for i, y in enumerate(x) for k, v in flat(y, f"{p}[{i}]").items()}
        return {p: x}

    fa, fb = flat(a.model_dump()), flat(b.model_dump())
    n = len(set(fa) ^ set(fb))
    for k in set(fa) & set(fb):
        x, y = fa[k], fb[k]
        if isinstance(x, float) and isinstance(y, float):
            n += not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9)
        else:
            n += x != y
    return n


def _best(fn: Any, repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat + 1):  # the first run warms the page cache and is not counted
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times[1:]) if repeat else times[0], result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=_data.DEFAULT_DATA.rstrip("/") + "-reports")
    ap.add_argument("--users", type=int, default=_data.DEFAULT_USERS, help="when generating")
    ap.add_argument("--snapshots", type=int, default=8, help="when generating")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs after a warm-up (best)")
    ap.add_argument("--cpus", type=int, default=2, help="local Ray CPUs = DuckDB threads")
    ap.add_argument("--regenerate", action="store_true", help="synthesise the data again")
    args = ap.parse_args()

    os.environ.setdefault("STRATA_PSEUDONYM_KEY", _data.BENCH_KEY)
    if args.regenerate or not SnapshotStore(args.data).versions():
        t0 = time.perf_counter()
        synthesise(args.data, args.users, args.snapshots)
        console.print(f"synthesised the data in {time.perf_counter() - t0:.1f} s")
    refs = snapshot_refs(args.data)

    # DuckDB and pandas first, in this process, before any Ray process exists
    duck_s, duck = _best(lambda: duckdb_report(args.data, args.cpus), args.repeat)
    console.print(f"DuckDB, {args.cpus} threads: {duck_s:.2f} s")
    pandas_s, (pandas_report, n_orders) = _best(
        lambda: compute(args.data, "pandas", period_days=PERIOD_DAYS, show_progress=False),
        args.repeat,
    )
    console.print(f"pandas: {pandas_s:.2f} s")
    mismatches = cross_check(duck, pandas_report)
    for m in mismatches[:20]:
        console.print(f"[red]cross-check: {m}[/red]")
    if not mismatches:
        console.print("cross-check: DuckDB and the report agree on every number")

    import ray

    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    modin_s, (modin_report, _) = _best(
        lambda: compute(args.data, "modin", period_days=PERIOD_DAYS, show_progress=False),
        args.repeat,
    )
    ray.shutdown()
    console.print(f"Modin on Ray ({args.cpus} CPUs): {modin_s:.2f} s")
    engine_diff = engines_differ(modin_report, pandas_report)

    users = pandas_report.snapshots[-1].users
    table = Table(title=f"tier report: {len(refs)} snapshots, {users:,} users, {n_orders:,} orders")
    table.add_column("engine")
    table.add_column("seconds", justify="right")
    table.add_column("DuckDB / this", justify="right")
    for name, s in (("DuckDB (SQL)", duck_s), ("pandas", pandas_s), ("Modin on Ray", modin_s)):
        table.add_row(name, f"{s:.2f}", f"{duck_s / s:.2f}")
    console.print(table)
    figures = {
        "modin_s": round(modin_s, 3),
        "pandas_s": round(pandas_s, 3),
        "duckdb_s": round(duck_s, 3),
        "ratio_modin_vs_duckdb": round(duck_s / modin_s, 3),
        "ratio_pandas_vs_duckdb": round(duck_s / pandas_s, 3),
        "users": users,
        "snapshots": len(refs),
        "orders": n_orders,
        "cpus": args.cpus,
        "goal_30s_met": max(modin_s, pandas_s) <= 30,
        "crosscheck_mismatches": len(mismatches),
        "modin_vs_pandas_mismatches": engine_diff,
        "synthesised": True,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
