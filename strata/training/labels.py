"""Labels of training examples: churn, repurchase and spend in the window after a cutoff."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from strata.features import int64_values
from strata.schema import EventType
from strata.timeutil import DAY_MS
from strata.training._arrow import F64, f64_of
from strata.training.targets import LABEL_COLUMNS

__all__ = ["labels"]


def _is_order(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """event_type == "order" per row (string or dictionary<string>; null is not an order)."""
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    parts: list[np.ndarray] = []
    for chunk in chunks:
        if pa.types.is_dictionary(chunk.type):
            lut = np.asarray(
                pc.fill_null(pc.equal(chunk.dictionary, EventType.ORDER.value), False).to_numpy(
                    zero_copy_only=False
                ),
                dtype=bool,
            )
            idx = pc.fill_null(chunk.indices, -1).to_numpy(zero_copy_only=False)
            lut = np.append(lut, False)  # index -1: null slot
            parts.append(lut[np.asarray(idx, dtype=np.int64)])
        else:
            eq = pc.fill_null(pc.equal(chunk, EventType.ORDER.value), False)
            parts.append(np.asarray(eq.to_numpy(zero_copy_only=False), dtype=bool))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def labels(
    events: pa.Table,
    user_ids: np.ndarray,
    cutoff_ms: int,
    end_ms: int,
    repurchase_days: int,
) -> pa.Table:
    """Labels of ``user_ids`` from the orders in the window ``cutoff_ms <= ts < end_ms``.

    The window starts where compute_features stops (it counts ``ts < as_of``): an order at the
    cutoff instant is a label, never a feature. Only ``event_type == "order"`` rows count (every
    row when the column is absent, as for imported purchase logs). Line-level rows of one order
    need no merging: the labels are "any order" and a sum of amounts.

    Args:
        events: events with ``user_id``, ``ts`` and optionally ``event_type``, ``amount_cny``.
        user_ids: the users to label (any order; repeats allowed).
        cutoff_ms: start of the label window (inclusive), UTC epoch ms.
        end_ms: end of the label window (exclusive).
        repurchase_days: repurchase = an order in ``[cutoff, cutoff + repurchase_days)``
            (clipped to the window).

    Returns:
        Table aligned with ``user_ids``: ``label_churn`` (int8, 1 = no order in the window),
        ``label_repurchase`` (int8) and ``label_spend`` (float64, CNY; a null or NaN amount
        counts 0; null for every user when ``amount_cny`` is absent).
    """
    cutoff_ms, end_ms = int(cutoff_ms), int(end_ms)
    if end_ms <= cutoff_ms:
        raise ValueError(f"end_ms ({end_ms}) must be after cutoff_ms ({cutoff_ms})")
    if repurchase_days < 1:
        raise ValueError(f"repurchase_days must be >= 1, got {repurchase_days}")
    ids = np.asarray(user_ids, dtype=np.int64)
    names = events.column_names
    if "user_id" not in names or "ts" not in names:
        raise ValueError("events need at least the columns user_id and ts")
    ts = int64_values(events.column("ts"), "ts")
    sel = (ts >= cutoff_ms) & (ts < end_ms)
    if "event_type" in names:
        sel &= _is_order(events.column("event_type"))
    rows = np.flatnonzero(sel)
    uid = int64_values(events.column("user_id").take(pa.array(rows, type=pa.int64())), "user_id")
    uniq, inverse = np.unique(ids, return_inverse=True)
    n = len(uniq)
    pos = np.minimum(np.searchsorted(uniq, uid), max(n - 1, 0))
    hit = uniq[pos] == uid if n else np.zeros(len(uid), dtype=bool)
    p, t = pos[hit], ts[rows][hit]

    any_order = np.bincount(p, minlength=n)[inverse] > 0
    rep_end = min(end_ms, cutoff_ms + int(repurchase_days) * DAY_MS)
    early = np.bincount(p[t < rep_end], minlength=n)[inverse] > 0
    if "amount_cny" in names:
        amount = f64_of(events.column("amount_cny").take(pa.array(rows[hit], type=pa.int64())))
        amount[~np.isfinite(amount)] = 0.0
        spend: pa.Array = pa.array(np.bincount(p, weights=amount, minlength=n)[inverse], F64)
    else:
        spend = pa.nulls(len(ids), F64)
    return pa.Table.from_arrays(
        [
            pa.array((~any_order).astype(np.int8)),
            pa.array(early.astype(np.int8)),
            spend,
        ],
        names=list(LABEL_COLUMNS),
    )
