"""The long Parquet tables written next to a tier report's ``report.json``.

Built from the report document alone, so the files and the JSON always agree:

* ``tiers``: one row per snapshot x tier with every :class:`~strata.reports.model.TierMetrics`;
* ``lifecycle``: one row per snapshot x stage;
* ``bands``: one row per snapshot x RFM base band x label (snapshots that have the bands);
* ``strategies``: one row per snapshot x tier x strategy;
* ``transitions``: one row per consecutive pair x from_tier x to_tier x rule (users > 0).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from strata.reports.model import TierMetrics, TiersReport

_TIERS_SCHEMA = pa.schema(
    [
        ("version", pa.string()),
        ("as_of", pa.string()),
        ("tier", pa.string()),
        *[
            (name, pa.int64() if name.endswith("users") else pa.float64())
            for name in TierMetrics.model_fields
        ],
    ]
)
_LIFECYCLE_SCHEMA = pa.schema(
    [("version", pa.string()), ("as_of", pa.string()), ("stage", pa.string()),
     ("users", pa.int64())]
)  # fmt: skip
_BANDS_SCHEMA = pa.schema(
    [("version", pa.string()), ("as_of", pa.string()), ("band", pa.string()),
     ("label", pa.string()), ("users", pa.int64())]
)  # fmt: skip
_STRATEGIES_SCHEMA = pa.schema(
    [("version", pa.string()), ("as_of", pa.string()), ("tier", pa.string()),
     ("strategy", pa.string()), ("reach", pa.int64()), ("converted", pa.int64()),
     ("conversion", pa.float64())]
)  # fmt: skip
_TRANSITIONS_SCHEMA = pa.schema(
    [("from_version", pa.string()), ("to_version", pa.string()), ("from_tier", pa.string()),
     ("to_tier", pa.string()), ("rule", pa.string()), ("users", pa.int64())]
)  # fmt: skip


def _table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


def report_tables(report: TiersReport) -> dict[str, pa.Table]:
    """The report's long tables by name (see the module docstring)."""
    tiers, stages, bands, strategies, moves = [], [], [], [], []
    for s in report.snapshots:
        key = {"version": s.version, "as_of": s.as_of}
        for tier, m in s.tiers.items():
            tiers.append({**key, "tier": tier, **m.model_dump()})
        for stage, users in s.lifecycle.items():
            stages.append({**key, "stage": stage, "users": users})
        for band, labels in s.bands.items():
            for label, users in labels.items():
                bands.append({**key, "band": band, "label": label, "users": users})
        for tier, by_strategy in s.strategies.items():
            for name, sm in by_strategy.items():
                strategies.append({**key, "tier": tier, "strategy": name, **sm.model_dump()})
    for t in report.transitions:
        for f, row in t.by_rule.items():
            for to, rules in row.items():
                for rule, users in rules.items():
                    moves.append(
                        {"from_version": t.from_version, "to_version": t.to_version,
                         "from_tier": f, "to_tier": to, "rule": rule, "users": users}
                    )  # fmt: skip
    return {
        "tiers": _table(tiers, _TIERS_SCHEMA),
        "lifecycle": _table(stages, _LIFECYCLE_SCHEMA),
        "bands": _table(bands, _BANDS_SCHEMA),
        "strategies": _table(strategies, _STRATEGIES_SCHEMA),
        "transitions": _table(moves, _TRANSITIONS_SCHEMA),
    }
