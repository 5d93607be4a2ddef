"""A seeded, vectorised BG/NBD simulator: an orders-only log drawn from the BG/NBD process.

Per customer ``lambda ~ Gamma(r, rate alpha)`` (purchases per day) and ``p ~ Beta(a, b)``; the
first purchase falls uniformly in the first ``acquisition_days`` (staggered cohorts); repeat
purchases follow a Poisson process with rate ``lambda``; right after each repeat purchase the
customer drops out with probability ``p`` (so the number of repeat purchases a customer would
ever make is geometric on 1, 2, ...). Amounts: a per-customer mean spend ``~ Gamma(q, ...)`` and
order amounts ``~ Gamma(shape, mean / shape)`` around it (gamma-gamma, independent of timing).

The output is an order log (``customer`` string id, ``ts`` epoch ms UTC, ``amount``), the shape
``strata import`` accepts (``--time-format epoch_ms``). lifetimes' own generator no longer runs on
pandas 2; this one needs numpy only. Same arguments and seed => the same table.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from strata.config import StrictModel
from strata.timeutil import DAY_MS, LOCAL_TZ, to_epoch_ms

__all__ = ["SimParams", "simulate_bgnbd"]


class SimParams(StrictModel):
    """BG/NBD population parameters (defaults: the BG/NBD fit of CDNOW, days)."""

    r: float = 0.243
    alpha: float = 4.414
    a: float = 0.793
    b: float = 2.426
    #: gamma-gamma spend: per-customer mean ~ Gamma(q, scale mean_amount / q)
    q: float = 3.0
    mean_amount: float = 35.0
    #: order amounts around the customer's mean ~ Gamma(amount_shape, mean / amount_shape)
    amount_shape: float = 4.0


def simulate_bgnbd(
    n_customers: int,
    days: int,
    seed: int,
    params: SimParams | None = None,
    acquisition_days: int = 84,
    start: dt.datetime | None = None,
) -> pa.Table:
    """Draw an orders-only log from the BG/NBD process.

    Args:
        n_customers: customers (each makes a first purchase inside the window).
        days: length of the whole log in days (the observation ends ``days`` after ``start``).
        seed: random seed.
        params: population parameters (default :class:`SimParams`).
        acquisition_days: first purchases fall uniformly in ``[0, acquisition_days)``.
        start: first instant of the log (aware; default 2025-01-01 00:00 UTC+8).

    Returns:
        Table ``customer`` (string), ``ts`` (int64 epoch ms), ``amount`` (float64), one row
        per order, sorted by (customer, ts).
    """
    if n_customers < 1 or days < 1 or not 0 < acquisition_days <= days:
        raise ValueError("need n_customers >= 1, days >= 1 and 0 < acquisition_days <= days")
    p = params or SimParams()
    rng = np.random.default_rng(seed)
    n = int(n_customers)
    lam = rng.gamma(p.r, 1.0 / p.alpha, n)
    drop = rng.beta(p.a, p.b, n)
    first = rng.uniform(0.0, float(acquisition_days), n)
    mean_spend = rng.gamma(p.q, p.mean_amount / p.q, n)
    span = float(days) - first  # observation time after the first purchase
    # Poisson process on (0, span]: N ~ Poisson(lambda span), times uniform; keep the first
    # min(N, J) with J ~ Geometric(p) the repeat purchase after which the customer drops out
    n_events = rng.poisson(lam * span)
    lifetime_repeats = rng.geometric(np.clip(drop, 1e-12, 1.0))
    keep = np.minimum(n_events, lifetime_repeats)
    owner = np.repeat(np.arange(n), n_events)
    offset = rng.uniform(0.0, 1.0, len(owner)) * span[owner]
    order = np.lexsort((offset, owner))
    owner, offset = owner[order], offset[order]
    starts = np.concatenate(([0], np.cumsum(n_events)[:-1]))
    rank = np.arange(len(owner)) - starts[owner]
    live = rank < keep[owner]
    owner, offset = owner[live], offset[live]
    # first purchases plus the repeats, sorted by (customer, time)
    cust = np.concatenate([np.arange(n), owner])
    when = np.concatenate([first, first[owner] + offset])
    order = np.lexsort((when, cust))
    cust, when = cust[order], when[order]
    amount = rng.gamma(p.amount_shape, mean_spend[cust] / p.amount_shape)
    origin = start or dt.datetime(2025, 1, 1, tzinfo=LOCAL_TZ)
    ts = to_epoch_ms(origin) + np.floor(when * DAY_MS).astype(np.int64)
    width = len(str(n))
    names = np.char.add("c", np.char.zfill(np.arange(n).astype(str), width))
    return pa.table(
        {
            "customer": pa.array(names[cust]),
            "ts": pa.array(ts, type=pa.int64()),
            "amount": pa.array(np.round(amount, 2), type=pa.float64()),
        }
    )
