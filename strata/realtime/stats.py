"""Rule statistics: the ``{ns}:rt:{pP}:stats`` hashes and the active rule list, aggregated per
rule.

The stream workers count into one hash per partition (merged by :func:`merge_stat_hashes`),
field ``"{rule}|{tier}|{metric}"``, metric one of ``fired``, ``converted``, ``revenue_cny`` and
``coupon_cost_cny`` (CNY, HINCRBYFLOAT) and ``suppressed.{reason}`` (reason in
:data:`strata.realtime.model.SUPPRESSION_REASONS`).
:func:`rule_stats` turns that hash and the active rules (``{ns}:rt:rules``, JSON
``[{"name", "kind", ...}]``) into what ``GET /v1/rules`` and ``strata rules stats`` show: per
rule the totals over tiers and the same counters per tier. Rules with statistics that are no
longer active are listed after the active ones (``active: false``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from strata.realtime.model import SUPPRESSION_REASONS

__all__ = ["CNY_METRICS", "COUNT_METRICS", "empty_counters", "merge_stat_hashes", "rule_stats"]

#: integer counters besides the suppressions
COUNT_METRICS: tuple[str, ...] = ("fired", "converted")
#: CNY sums (rounded to fen in the answer)
CNY_METRICS: tuple[str, ...] = ("revenue_cny", "coupon_cost_cny")
_SUPPRESSED = "suppressed."


def empty_counters() -> dict[str, Any]:
    """Counters of a rule (or one tier of it) that has done nothing yet."""
    return {
        "fired": 0,
        "suppressed": dict.fromkeys(SUPPRESSION_REASONS, 0),
        "converted": 0,
        "revenue_cny": 0.0,
        "coupon_cost_cny": 0.0,
    }


def merge_stat_hashes(hashes: Iterable[Mapping[Any, Any]]) -> dict[bytes, bytes]:
    """The partitions' statistics hashes as one: each field summed (integers stay integers,
    CNY sums are added as floats), in the bytes shape of ``HGETALL``."""
    ints: dict[bytes, int] = {}
    floats: dict[bytes, float] = {}
    for h in hashes:
        for raw_name, raw_value in h.items():
            name = raw_name if isinstance(raw_name, bytes) else str(raw_name).encode()
            text = _text(raw_value)
            try:
                ints[name] = ints.get(name, 0) + int(text)
            except ValueError:
                floats[name] = floats.get(name, 0.0) + float(text)
    out = {k: str(v).encode() for k, v in ints.items()}
    for k, v in floats.items():
        out[k] = repr(v + ints.pop(k, 0)).encode()
    return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _add(counters: dict[str, Any], metric: str, value: float) -> bool:
    """Add one hash value to its counter; False for a metric this version does not know."""
    if metric in COUNT_METRICS:
        counters[metric] += int(value)
    elif metric in CNY_METRICS:
        counters[metric] += value
    elif metric.startswith(_SUPPRESSED) and metric[len(_SUPPRESSED) :] in counters["suppressed"]:
        counters["suppressed"][metric[len(_SUPPRESSED) :]] += int(value)
    else:
        return False
    return True


def _rounded(counters: dict[str, Any]) -> dict[str, Any]:
    for metric in CNY_METRICS:
        counters[metric] = round(counters[metric], 2)
    return counters


def _active_rules(rules_json: bytes | str | None) -> list[dict[str, Any]]:
    if not rules_json:
        return []
    try:
        rules = orjson.loads(rules_json)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(rules, list):
        return []
    return [r for r in rules if isinstance(r, dict) and isinstance(r.get("name"), str)]


def rule_stats(rules_json: bytes | str | None, stats_hash: Mapping[Any, Any]) -> dict[str, Any]:
    """Per-rule statistics from the active rule list and the stats hash.

    Args:
        rules_json: the value of ``{ns}:rt:rules`` (None before a worker started).
        stats_hash: the partitions' ``HGETALL {ns}:rt:{pP}:stats`` merged
            (:func:`merge_stat_hashes`; bytes or text keys and values).

    Returns:
        ``{"rules": [{"name", "kind", "active", "priority", "fired", "suppressed": {reason: n},
        "converted", "revenue_cny", "coupon_cost_cny", "by_tier": {tier: counters}}]}``:
        active rules in their listed order, then inactive rules with statistics by name.
        Malformed fields and unknown metrics are skipped.
    """
    by_rule: dict[str, dict[str, dict[str, Any]]] = {}
    for raw_field, raw_value in stats_hash.items():
        field = _text(raw_field)
        rule, sep, rest = field.partition("|")
        tier, sep2, metric = rest.rpartition("|")
        if not (sep and sep2 and rule and tier):
            continue
        try:
            value = float(_text(raw_value))
        except ValueError:
            continue
        tiers = by_rule.setdefault(rule, {})
        counters = tiers.get(tier)
        if counters is None:
            counters = tiers[tier] = empty_counters()
        _add(counters, metric, value)
    out: list[dict[str, Any]] = []
    listed: set[str] = set()
    for active in _active_rules(rules_json):
        name = active["name"]
        if name in listed:
            continue
        listed.add(name)
        out.append(
            _entry(name, active.get("kind"), True, active.get("priority"), by_rule.get(name))
        )
    for name in sorted(set(by_rule) - listed):
        out.append(_entry(name, None, False, None, by_rule[name]))
    return {"rules": out}


def _entry(
    name: str,
    kind: Any,
    active: bool,
    priority: Any,
    tiers: dict[str, dict[str, Any]] | None,
) -> dict[str, Any]:
    total = empty_counters()
    by_tier: dict[str, Any] = {}
    for tier in sorted(tiers or {}):
        counters = (tiers or {})[tier]
        for metric in (*COUNT_METRICS, *CNY_METRICS):
            total[metric] += counters[metric]
        for reason, n in counters["suppressed"].items():
            total["suppressed"][reason] += n
        by_tier[tier] = _rounded(counters)
    return {
        "name": name,
        "kind": kind if isinstance(kind, str) else None,
        "active": active,
        "priority": priority if isinstance(priority, int) else None,
        **_rounded(total),
        "by_tier": by_tier,
    }
