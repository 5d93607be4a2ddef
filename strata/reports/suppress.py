"""Small-cell suppression (k-anonymity of shown counts) and the one rounding rule of the
dashboard. Pure.

Every count the dashboard shows (users of a tier, a lifecycle stage, a band, a transition
cell, a rule's fired users, a strategy's reach, an experiment arm) goes through
:func:`suppress_count`: a count of ``1 .. k-1`` users becomes ``None`` (shown as ``"<k"``),
and so does every figure derived from it (its share, ARPU, LTV, orders per user, coupon
cost, conversion, rate), so the page never shows a group small enough to single anyone out.
A count of 0 describes nobody and is shown as 0.

Where a group's total is shown beside its cells (a snapshot's users beside its tiers,
stages and bands; a what-if's before/after and each row of its moves, which adds up to the
tier's users before; the rules that split a shown transition cell), one suppressed cell
could be recovered by subtraction: :func:`suppress_group` then also suppresses the next
smallest cell (secondary suppression).

Rounding (:func:`round_half_up`): half away from zero on the decimal value, the same for
every figure: shares and rates in percent to 1 decimal, CNY and per-user ratios to 2
decimals. The pages show the rounded numbers and the charts plot the very same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

#: decimals of each kind of figure (the dashboard's one rounding rule)
DECIMALS: dict[str, int] = {"pct": 1, "cny": 2, "ratio": 2, "effect": 3, "p": 4}


def round_half_up(value: float | None, decimals: int) -> float | None:
    """``value`` rounded half away from zero to ``decimals`` places (``None`` stays ``None``).

    The decimal representation of the float is rounded (``0.125 -> 0.13``), unlike Python's
    ``round`` (binary, half to even: ``round(0.125, 2) == 0.12``).
    """
    if value is None:
        return None
    quantum = Decimal(1).scaleb(-decimals)
    return float(Decimal(repr(float(value))).quantize(quantum, rounding=ROUND_HALF_UP))


def pct(value: float | None) -> float | None:
    """A share or rate (0..1) as a rounded percentage."""
    return None if value is None else round_half_up(value * 100, DECIMALS["pct"])


def suppress_count(n: int | None, k: int) -> int | None:
    """``n`` when it is 0 or at least ``k``; ``None`` (shown as ``"<k"``) otherwise."""
    if n is None or n == 0 or n >= k:
        return n
    return None


def suppress_group(counts: Mapping[str, int], k: int) -> dict[str, int | None]:
    """Suppress the cells of a group whose total is shown too.

    Cells of ``1 .. k-1`` become ``None``; when that leaves exactly one suppressed cell, the
    smallest other non-zero cell is suppressed as well, so no cell follows from the total.
    """
    out: dict[str, int | None] = {name: suppress_count(n, k) for name, n in counts.items()}
    hidden = [name for name, v in out.items() if v is None]
    if len(hidden) == 1:
        shown = [(n, name) for name, n in counts.items() if out[name] not in (None, 0)]
        if shown:
            out[min(shown)[1]] = None
    return out


def hidden(k: int) -> str:
    """The marker a suppressed cell carries in a display view: ``"<k"`` (e.g. ``"<10"``)."""
    return f"<{k}"


Cell = int | float | str | None
"""A figure of a display view: a number, ``None`` (the report has none), or ``"<k"``."""


def _cell(n: int | None, original: int | None, k: int) -> Cell:
    """A suppressed count (``None`` from :func:`suppress_count`) as the ``"<k"`` marker."""
    if original is None:
        return None
    return hidden(k) if n is None else n


def _count(n: int | None, k: int) -> Cell:
    return _cell(suppress_count(n, k), n, k)


def _group(counts: Mapping[str, int], k: int) -> dict[str, Cell]:
    shown = suppress_group(counts, k)
    return {name: _cell(v, counts[name], k) for name, v in shown.items()}


def is_hidden(value: Cell) -> bool:
    """Whether a display figure is suppressed."""
    return isinstance(value, str)


def _metric(value: float | None, users: Cell, decimals: int, k: int) -> Cell:
    """A metric derived from ``users`` users: suppressed with them."""
    if is_hidden(users):
        return hidden(k)
    return round_half_up(value, decimals)


def suppress_tiers_report(report: Mapping[str, Any], k: int) -> dict[str, Any]:
    """The display view of a tier report document (``TiersReport.model_dump()``): counts
    suppressed (``"<k"``), figures derived from them suppressed with them, all rounded.

    Returns the report's shape with shares and rates as percentages (``share_pct``,
    ``lifecycle_pct``, ``rate_pct``) and every figure a :data:`Cell`; per snapshot
    ``hidden_share_pct`` / ``lifecycle_hidden_pct`` pool the suppressed tiers / stages.
    """
    snapshots = []
    for snap in report["snapshots"]:
        tiers = snap["tiers"]
        users = _group({t: m["users"] for t, m in tiers.items()}, k)
        out_tiers = {}
        for tier, m in tiers.items():
            n = users[tier]
            out_tiers[tier] = {
                "users": n,
                "share_pct": hidden(k) if is_hidden(n) else pct(m["share"]),
                "arpu_cny": _metric(m.get("arpu_cny"), n, DECIMALS["cny"], k),
                "orders_per_user": _metric(m.get("orders_per_user"), n, DECIMALS["ratio"], k),
                "ltv_cny": _metric(m.get("ltv_cny"), n, DECIMALS["cny"], k),
                "coupon_cost_cny": _metric(m.get("coupon_cost_cny"), n, DECIMALS["cny"], k),
                "new_users": _count(m.get("new_users"), k),
                "lost_users": _count(m.get("lost_users"), k),
                "returning_users": _count(m.get("returning_users"), k),
            }
        total = int(snap["users"])
        lifecycle = snap.get("lifecycle") or {}
        stages = _group(lifecycle, k)
        hidden_tiers = sum(m["share"] for t, m in tiers.items() if is_hidden(users[t]))
        hidden_stages = sum(n for s, n in lifecycle.items() if is_hidden(stages[s]))
        snapshots.append(
            {
                "version": snap["version"],
                "as_of": snap["as_of"],
                "users": _count(total, k),
                "period_days": snap.get("period_days"),
                "tiers": out_tiers,
                # the suppressed cells pooled (= 100% - the shown shares: no new disclosure),
                # so a stacked chart still adds up to 100%
                "hidden_share_pct": pct(hidden_tiers),
                "lifecycle": stages,
                "lifecycle_hidden_pct": pct(hidden_stages / total) if total else 0.0,
                "lifecycle_pct": {
                    s: hidden(k) if is_hidden(v) else (pct(lifecycle[s] / total) if total else None)
                    for s, v in stages.items()
                },
                "bands": {
                    group: _group(cells, k) for group, cells in (snap.get("bands") or {}).items()
                },
                "strategies": {
                    tier: {name: _strategy(s, k) for name, s in per.items()}
                    for tier, per in (snap.get("strategies") or {}).items()
                },
            }
        )
    transitions = []
    for tr in report["transitions"]:
        matrix = {f: {t: _count(n, k) for t, n in row.items()} for f, row in tr["matrix"].items()}
        rates = tr.get("rates") or {}
        transitions.append(
            {
                "from_version": tr["from_version"],
                "to_version": tr["to_version"],
                "matrix": matrix,
                "rate_pct": {
                    f: {
                        t: hidden(k) if is_hidden(v) else pct(rates.get(f, {}).get(t))
                        for t, v in row.items()
                    }
                    for f, row in matrix.items()
                },
                # the rules split a shown cell: a group (one hidden part would follow)
                "by_rule": {
                    f: {t: _group(rules, k) for t, rules in row.items()}
                    for f, row in (tr.get("by_rule") or {}).items()
                },
            }
        )
    return {
        "report_version": report.get("report_version", ""),
        "generated_at": report.get("generated_at", ""),
        "tier_order": list(report.get("tier_order") or []),
        "stage_order": list(report.get("stage_order") or []),
        "snapshots": snapshots,
        "transitions": transitions,
    }


def _strategy(s: Mapping[str, Any], k: int) -> dict[str, Cell]:
    reach = _count(int(s["reach"]), k)
    converted = hidden(k) if is_hidden(reach) else _count(int(s["converted"]), k)
    conv = s.get("conversion")
    return {
        "reach": reach,
        "converted": converted,
        "conversion_pct": hidden(k) if is_hidden(converted) else pct(conv),
    }


def suppress_rules(doc: Mapping[str, Any], k: int) -> list[dict[str, Any]]:
    """The rules of ``GET /v1/reports/rules`` for display: fired / converted counts and the
    suppression reasons under ``k`` suppressed, revenue and coupon cost with converted."""
    out = []
    for rule in doc.get("rules") or []:
        fired = _count(int(rule.get("fired") or 0), k)
        converted = hidden(k) if is_hidden(fired) else _count(int(rule.get("converted") or 0), k)
        suppressed = rule.get("suppressed") or {}
        if not isinstance(suppressed, Mapping):
            suppressed = {"all": suppressed}
        money = {
            name: hidden(k)
            if is_hidden(converted)
            else round_half_up(float(rule.get(name) or 0.0), DECIMALS["cny"])
            for name in ("revenue_cny", "coupon_cost_cny")
        }
        out.append(
            {
                "name": str(rule.get("name", "")),
                "kind": str(rule.get("kind") or ""),
                "active": bool(rule.get("active", True)),
                "fired": fired,
                "suppressed": {str(r): _count(int(n), k) for r, n in suppressed.items()},
                "converted": converted,
                **money,
            }
        )
    return out


def _result(res: Mapping[str, Any]) -> dict[str, float | None]:
    return {
        name: round_half_up(res.get(name), DECIMALS["p" if name == "p_value" else "effect"])
        for name in ("effect", "ci_low", "ci_high", "p_value")
    }


def suppress_experiment(doc: Mapping[str, Any], k: int, srm_p_threshold: float) -> dict[str, Any]:
    """One experiment's analysis (``strata report experiment NAME --json``, or ``{"error"}``
    when the warehouse holds too little of it) for display: arms under ``k`` users lose their
    users and means, comparisons that involve them their effects; ``srm_status`` is
    ``mismatch`` when the SRM p-value is under ``srm_p_threshold``."""
    if doc.get("error"):
        return {
            "experiment": str(doc.get("experiment", "")),
            "error": str(doc["error"]),
            "srm_p_value": None,
            "srm_status": "unknown",
            "exposed": None,
            "warnings": [],
            "arms": [],
            "comparisons": [],
        }
    arms = []
    small: set[str] = set()
    for arm in doc.get("arms") or []:
        users = _count(int(arm.get("users") or 0), k)
        if is_hidden(users):
            small.add(str(arm.get("arm")))
        arms.append(
            {
                "arm": str(arm.get("arm")),
                "users": users,
                "metrics": {
                    name: hidden(k)
                    if is_hidden(users)
                    else round_half_up(m.get("mean"), DECIMALS["effect"])
                    for name, m in (arm.get("metrics") or {}).items()
                },
            }
        )
    comparisons = []
    for c in doc.get("comparisons") or []:
        hide = str(c.get("arm")) in small or str(c.get("baseline")) in small
        comparisons.append(
            {
                "arm": str(c.get("arm")),
                "baseline": str(c.get("baseline")),
                "metric": str(c.get("metric")),
                "cuped": bool(c.get("cuped", False)),
                "hidden": hide,
                **{
                    kind: None if hide else _result(c.get(kind) or {})
                    for kind in ("absolute", "relative")
                },
            }
        )
    srm = doc.get("srm_p_value")
    status = "unknown" if srm is None else ("mismatch" if srm < srm_p_threshold else "ok")
    exposed = doc.get("exposed")
    return {
        "experiment": str(doc.get("experiment", "")),
        "error": None,
        "exposed": None if exposed is None else _count(int(exposed), k),
        "warnings": [str(w) for w in doc.get("warnings") or []],
        "srm_p_value": round_half_up(srm, DECIMALS["p"]),
        "srm_status": status,
        "arms": arms,
        "comparisons": comparisons,
    }


def suppress_whatif(doc: Mapping[str, Any], k: int) -> dict[str, Any]:
    """A what-if result (``POST /v1/whatif``) for display: before and after as groups (their
    total is the snapshot's users), move cells under ``k`` suppressed, the cost rounded."""
    return {
        "before": _group({t: int(n) for t, n in (doc.get("before") or {}).items()}, k),
        "after": _group({t: int(n) for t, n in (doc.get("after") or {}).items()}, k),
        # a row adds up to the tier's users before, shown above: each row is a group
        "moves": {
            f: _group({t: int(n) for t, n in row.items()}, k)
            for f, row in (doc.get("moves") or {}).items()
        },
        "cost_change_cny": round_half_up(doc.get("cost_change_cny"), DECIMALS["cny"]),
    }
