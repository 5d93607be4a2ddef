"""What-if simulation of tier settings over a snapshot's stored scores (no warehouse pass).

An operator tries new tier thresholds, weights, churn-warning or hysteresis settings before
publishing them: :func:`simulate` re-applies :func:`strata.tiering.tiers.tier_codes` (the very
code the recompute's :func:`~strata.tiering.tiers.assign_tiers` runs) to the snapshot's
``rfm_r/f/m``, ``rfm_score``, lifecycle stage, ``ltv_cny``, ``churn_p`` and previous tier, under
``configs/tiers.yaml`` with the overrides applied, and reports tier sizes before and after,
the movement matrix and the cost change of the strategies that follow tiers.

Overrides are dotted keys into tiers.yaml prefixed ``tiers.`` (bands addressed by name):
``tiers.weights.recency``, ``tiers.bands.high_value.min_score``,
``tiers.churn_warning.min_ltv_cny``, ``tiers.hysteresis_margin``, ... (:func:`adjustable_keys`
lists the numeric ones with slider bounds). Keys of ``tiers.measures`` change what the ranks
are computed from and are refused (they need ``strata recompute``).

Weights: the weights not set keep their proportions and are scaled so that the three sum to 1
(``recency=0.5`` with the shipped 0.4/0.3/0.3 gives 0.5/0.25/0.25); setting all three requires
a sum of 1. The result says the weights used.

Exactness: the snapshot stores scores rounded to 6 decimals, so a re-applied rule may in rare
cases land a user a hair on the other side of a threshold than the recompute did. A user whose
re-applied tier under the unchanged settings equals their tier under the new ones keeps their
stored tier (the overrides do not move them); ``unreproduced_users`` counts the users whose
stored tier the unchanged settings do not reproduce (0 when the snapshot was scored with the
current tiers.yaml, up to such rounding).

Cost (``cost_*_cny``): for each strategy of configs/strategies.yaml whose ``applies_to.tiers``
lists a tier, ``cost_per_action_cny`` x the users it applies to: users whose tier is listed or
whose lifecycle stage is listed in ``applies_to.stages`` (dynamic tags are live state, not in a
snapshot, so tag matches are not counted), who pass its eligibility on the snapshot's columns
(``monetary_90d``, ``frequency_90d``, ``recency_days``, ``churn_p``, ``price_sensitivity``;
``has_birthday`` only where the snapshot has ``birthday_md``, as at delivery) and who are
outside its standing holdout (:meth:`StrategiesConfig.in_holdout`, the same hash). That is the
cost of one action to every user the playbook reaches; ``cost_change_cny`` is after - before.

Pure: numpy, pyarrow, pydantic.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field, ValidationError

from strata.strategies.config import StrategiesConfig, Strategy
from strata.tiering.lifecycle import STAGES
from strata.tiering.tiers import (
    ScoreHistogram,
    TierRules,
    band_warnings,
    tier_codes,
)

__all__ = [
    "ELIGIBILITY_COLUMNS",
    "WEIGHT_NAMES",
    "AdjustableKey",
    "StrategyCost",
    "WhatIfError",
    "WhatIfInputs",
    "WhatIfResult",
    "adjustable_keys",
    "apply_overrides",
    "hash_units",
    "parse_overrides",
    "simulate",
    "tiers_after",
]

PREFIX = "tiers."
WEIGHT_NAMES: tuple[str, ...] = ("recency", "frequency", "monetary")
#: snapshot columns the strategies' eligibility reads (absent ones count as null)
ELIGIBILITY_COLUMNS: tuple[str, ...] = (
    "monetary_90d",
    "frequency_90d",
    "recency_days",
    "price_sensitivity",
    "birthday_md",
)
_SCALE = float(2**64)
_NONE = {"none", "null", ""}


class WhatIfError(ValueError):
    """An override key or value is refused; the message names the key and what is allowed."""


class AdjustableKey(BaseModel):
    """One numeric setting the what-if can change (a slider: current value and bounds)."""

    key: str
    value: float | None
    min: float
    max: float
    step: float


class StrategyCost(BaseModel):
    """One tier-following strategy before and after the change."""

    tiers: list[str]
    cost_per_action_cny: float
    users_before: int
    users_after: int
    cost_before_cny: float
    cost_after_cny: float
    cost_change_cny: float


class WhatIfResult(BaseModel):
    """The outcome of a simulation (``--json`` and ``POST /v1/whatif``).

    ``moves`` is the whole movement matrix, snapshot tier (FROM) -> what-if tier (TO), every
    tier on both sides (the diagonal: users who stay), so its cells sum to ``users``.
    """

    before: dict[str, int] = Field(description="Users per tier in the snapshot.")
    after: dict[str, int] = Field(description="Users per tier under the changed settings.")
    moves: dict[str, dict[str, int]] = Field(
        description="Snapshot tier -> what-if tier -> users (every cell; the diagonal stays)."
    )
    cost_change_cny: float = Field(description="cost_after_cny - cost_before_cny.")
    cost_before_cny: float = Field(
        description="One action of every tier-following strategy to each user it reaches."
    )
    cost_after_cny: float
    moved_users: int
    users: int
    version: str = Field(description="The snapshot simulated (the latest on disk).")
    as_of: str | None
    overrides: dict[str, str] = Field(description="The settings applied, as text.")
    weights: dict[str, float] = Field(description="The RFM weights used.")
    strategies: dict[str, StrategyCost]
    warnings: list[str] = Field(description="Score bands under min_band_share after the change.")
    unreproduced_users: int = Field(
        description="Users whose stored tier the unchanged settings do not reproduce."
    )
    config_matches_snapshot: bool | None
    churn_warning_by: str | None = Field(description="churn_p (a model) or lifecycle_stage.")
    tier_order: list[str]


@dataclass(repr=False)
class WhatIfInputs:
    """What a simulation reads of one snapshot (aligned arrays, one row per user).

    Attributes:
        version, as_of: the snapshot.
        rules: the current tier settings (configs/tiers.yaml) the overrides change.
        strategies: configs/strategies.yaml (costs, eligibility, holdouts).
        user_id: pseudonymised ids (the holdout hash).
        tier: the stored tier.
        rfm_r, rfm_f, rfm_m, rfm_score: the stored ranks and score.
        lifecycle_stage: stored stages (string array).
        ltv_cny: spend to date.
        previous_tier: the previous snapshot's tier (null for users new to it): hysteresis.
        churn_p: model churn probability (NaN where unknown), None when the snapshot was
            scored without a model (the lifecycle stage then decides churn warnings).
        columns: eligibility columns present in the snapshot (:data:`ELIGIBILITY_COLUMNS`).
        config_matches_snapshot: whether tiers.yaml and the other recompute configs hash to
            the snapshot's ``config_sha256`` (None when unknown).
    """

    version: str
    as_of: str | None
    rules: TierRules
    strategies: StrategiesConfig
    user_id: np.ndarray
    tier: pa.Array
    rfm_r: np.ndarray
    rfm_f: np.ndarray
    rfm_m: np.ndarray
    rfm_score: np.ndarray
    lifecycle_stage: pa.Array
    ltv_cny: np.ndarray
    previous_tier: pa.Array
    churn_p: np.ndarray | None = None
    columns: dict[str, pa.Array] = field(default_factory=dict)
    config_matches_snapshot: bool | None = None
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return f"WhatIfInputs(version={self.version!r}, users={self.users})"

    @property
    def users(self) -> int:
        return len(self.user_id)

    @property
    def names(self) -> list[str]:
        """Tier names: tiers.yaml's, then any stored tier it no longer has."""
        if "names" not in self._cache:
            known = self.rules.tier_names
            stored = pc.unique(pc.fill_null(self.tier, "(none)")).to_pylist()
            self._cache["names"] = known + sorted(str(t) for t in stored if t not in known)
        names: list[str] = self._cache["names"]
        return names

    def stored_codes(self) -> np.ndarray:
        """Stored tiers as indexes into :attr:`names`."""
        if "stored" not in self._cache:
            idx = pc.index_in(pc.fill_null(self.tier, "(none)"), pa.array(self.names))
            self._cache["stored"] = np.asarray(idx.to_numpy(zero_copy_only=False), np.int64)
        out: np.ndarray = self._cache["stored"]
        return out

    def codes(self, score: np.ndarray, rules: TierRules) -> np.ndarray:
        """Tier index of every user under ``rules`` (recompute's own tier code)."""
        idx, _, _ = tier_codes(
            score, self.lifecycle_stage, self.ltv_cny, self.previous_tier, rules, self.churn_p
        )
        return idx.astype(np.int64)

    def base_codes(self) -> np.ndarray:
        """Tiers re-applied under the unchanged settings (cached)."""
        if "base" not in self._cache:
            self._cache["base"] = self.codes(self.rfm_score, self.rules)
        out: np.ndarray = self._cache["base"]
        return out

    def _strategy_masks(self, s: Strategy) -> tuple[np.ndarray, np.ndarray]:
        """(stage match, eligible) of a strategy (cached: they do not depend on tiers)."""
        key = f"masks:{s.name}"
        if key not in self._cache:
            stages = s.applies_to.stages
            stage_m = (
                np.asarray(
                    pc.is_in(pc.fill_null(self.lifecycle_stage, ""), pa.array(stages)).to_numpy(
                        zero_copy_only=False
                    ),
                    dtype=bool,
                )
                if stages
                else np.zeros(self.users, dtype=bool)
            )
            self._cache[key] = (stage_m, _eligible(s, self))
        masks: tuple[np.ndarray, np.ndarray] = self._cache[key]
        return masks

    def held(self, s: Strategy, need: np.ndarray) -> np.ndarray:
        """Standing-holdout membership where ``need`` is set (False elsewhere); the hash
        positions are computed once per user and strategy, only for users that need them."""
        share = self.strategies.holdout_of(s)
        if share <= 0:
            return np.zeros(self.users, dtype=bool)
        key = f"units:{s.name}"
        units = self._cache.get(key)
        if units is None:
            units = np.full(self.users, np.nan)
            self._cache[key] = units
        todo = need & np.isnan(units)
        if todo.any():
            units[todo] = hash_units(self.strategies.holdout_salt, s.name, self.user_id[todo])
        return need & (units < share)


def hash_units(salt: str, experiment: str, user_ids: np.ndarray) -> np.ndarray:
    """:func:`strata.experiments.assignment.unit_of` of many users (same bytes, one pass)."""
    prefix = f"{salt}:{experiment}:".encode()
    sha = hashlib.sha256
    digests = b"".join(sha(prefix + b"%d" % u).digest()[:8] for u in user_ids.tolist())
    return np.frombuffer(digests, dtype=">u8").astype(np.float64) / _SCALE


def _num(inputs: WhatIfInputs, name: str) -> np.ndarray:
    col = inputs.columns.get(name)
    if col is None:
        return np.full(inputs.users, np.nan)
    return np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


def _eligible(s: Strategy, inputs: WhatIfInputs) -> np.ndarray:
    """Eligibility as :func:`strata.strategies.resolve` checks one record, vectorised."""
    rules = s.eligibility
    ok = np.ones(inputs.users, dtype=bool)
    if rules.min_monetary_90d_cny is not None:
        ok &= np.nan_to_num(_num(inputs, "monetary_90d")) >= rules.min_monetary_90d_cny
    if rules.min_frequency_90d is not None:
        ok &= np.nan_to_num(_num(inputs, "frequency_90d")) >= rules.min_frequency_90d
    if rules.max_recency_days is not None:
        rec = _num(inputs, "recency_days")
        ok &= ~np.isnan(rec) & (np.nan_to_num(rec) <= rules.max_recency_days)
    if rules.min_churn_p is not None:
        churn = inputs.churn_p if inputs.churn_p is not None else np.full(inputs.users, np.nan)
        ok &= ~np.isnan(churn) & (np.nan_to_num(churn) >= rules.min_churn_p)
    if rules.price_sensitivity:
        col = inputs.columns.get("price_sensitivity")
        if col is None:
            ok &= False
        else:
            hit = pc.is_in(pc.fill_null(col, ""), pa.array(rules.price_sensitivity))
            ok &= np.asarray(hit.to_numpy(zero_copy_only=False), dtype=bool)
    birthday = inputs.columns.get("birthday_md")
    if rules.has_birthday and birthday is not None:
        has = pc.greater(pc.utf8_length(pc.fill_null(pc.cast(birthday, pa.string()), "")), 0)
        ok &= np.asarray(has.to_numpy(zero_copy_only=False), dtype=bool)
    return ok


# --------------------------------------------------------------------------- overrides
def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    """``["tiers.weights.recency=0.5", ...]`` -> ``{"tiers.weights.recency": "0.5", ...}``.

    Raises:
        WhatIfError: an item is not KEY=VALUE, or a key is given twice.
    """
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise WhatIfError(
                f"--set {item!r}: expected KEY=VALUE, e.g. tiers.bands.high_value.min_score=0.75"
            )
        if key in out:
            raise WhatIfError(f"{key}: set twice (once per key)")
        out[key] = value.strip()
    return out


@dataclass(frozen=True)
class _Key:
    path: tuple[str | int, ...]  # into TierRules.model_dump()
    kind: str  # "float" | "optional_float" | "stages"
    allowed: str
    lo: float = 0.0
    hi: float = 1.0
    step: float = 0.01


def _keys(rules: TierRules) -> dict[str, _Key]:
    """Every settable key of ``rules``."""
    keys: dict[str, _Key] = {}
    for w in WEIGHT_NAMES:
        keys[f"tiers.weights.{w}"] = _Key(("weights", w), "float", "a number in [0, 1]", step=0.05)
    for i, b in enumerate(rules.bands):
        keys[f"tiers.bands.{b.name}.min_score"] = _Key(
            ("bands", i, "min_score"), "float", "a number in [0, 1]"
        )
    cw = rules.churn_warning
    if cw is not None:
        ltv_hi = max(1000.0, 10 * cw.min_ltv_cny)
        keys["tiers.churn_warning.min_ltv_cny"] = _Key(
            ("churn_warning", "min_ltv_cny"), "float", "a number >= 0", 0.0, ltv_hi, 10.0
        )
        keys["tiers.churn_warning.churn_p_min"] = _Key(
            ("churn_warning", "churn_p_min"),
            "optional_float",
            "a number in (0, 1), or none (lifecycle stages decide)",
            0.05,
            0.95,
        )
        keys["tiers.churn_warning.lifecycle_stages"] = _Key(
            ("churn_warning", "lifecycle_stages"),
            "stages",
            f"a comma list of lifecycle stages ({', '.join(STAGES)})",
        )
    keys["tiers.hysteresis_margin"] = _Key(
        ("hysteresis_margin",), "float", "a number in [0, 0.5)", 0.0, 0.2, 0.005
    )
    keys["tiers.min_band_share"] = _Key(
        ("min_band_share",), "float", "a number in [0, 1)", 0.0, 0.2, 0.005
    )
    return keys


def _allowed_text(rules: TierRules) -> str:
    return ", ".join(_keys(rules))


def _parse_value(key: str, spec: _Key, value: Any) -> Any:
    if spec.kind == "stages":
        items = value if isinstance(value, list) else str(value).split(",")
        stages = [str(s).strip() for s in items if str(s).strip()]
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise WhatIfError(f"{key}: unknown lifecycle stage {unknown[0]!r}; {spec.allowed}")
        return stages
    if spec.kind == "optional_float" and (value is None or str(value).strip().lower() in _NONE):
        return None
    if isinstance(value, bool):
        raise WhatIfError(f"{key}: {value!r} is not a number; {spec.allowed}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise WhatIfError(f"{key}: {value!r} is not a number; {spec.allowed}") from None
    if not math.isfinite(number):
        raise WhatIfError(f"{key}: {value!r} is not a finite number; {spec.allowed}")
    return number


def _text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def apply_overrides(
    rules: TierRules, overrides: Mapping[str, Any]
) -> tuple[TierRules, dict[str, str]]:
    """``rules`` with the overrides applied and validated (the weights rule included).

    Args:
        rules: the current tier settings.
        overrides: key -> value (text from the CLI, numbers or text from JSON).

    Returns:
        (the new rules, the applied overrides as text).

    Raises:
        WhatIfError: an unknown or refused key, a bad value, or settings TierRules refuses
            (bands out of order, ...): the message names the key and what is allowed.
    """
    keys = _keys(rules)
    data = rules.model_dump(mode="python")
    applied: dict[str, str] = {}
    weights_set: dict[str, float] = {}
    for key, raw in overrides.items():
        if key.startswith(PREFIX + "measures"):
            raise WhatIfError(
                f"{key}: the RFM measures decide what the ranks are computed from, which needs a "
                "warehouse pass: change configs/tiers.yaml and run strata recompute (what-if "
                f"keys: {_allowed_text(rules)})"
            )
        spec = keys.get(key)
        if spec is None:
            if key.startswith(PREFIX + "churn_warning.") and rules.churn_warning is None:
                raise WhatIfError(f"{key}: tiers.yaml has no churn_warning tier")
            raise WhatIfError(f"{key}: unknown key; allowed: {_allowed_text(rules)}")
        value = _parse_value(key, spec, raw)
        applied[key] = _text(value)
        if spec.path[0] == "weights":
            weights_set[str(spec.path[1])] = value
            continue
        target: Any = data
        for part in spec.path[:-1]:
            target = target[part]
        target[spec.path[-1]] = value
    if weights_set:
        data["weights"] = _weights(rules, weights_set)
    try:
        new = TierRules.model_validate(data)
    except ValidationError as exc:
        raise WhatIfError(_validation_text(exc, rules, applied)) from None
    return new, applied


def _weights(rules: TierRules, given: Mapping[str, float]) -> dict[str, float]:
    """All three weights from those given: the others keep their proportions and take what is
    left of 1 (equal shares when they were all 0)."""
    keys = ", ".join(f"tiers.weights.{k}={v:g}" for k, v in given.items())
    bad = [k for k, v in given.items() if not 0 <= v <= 1]
    if bad:
        raise WhatIfError(f"tiers.weights.{bad[0]}: {given[bad[0]]:g} is not in [0, 1]")
    total = sum(given.values())
    current = rules.weights.model_dump()
    rest = [w for w in WEIGHT_NAMES if w not in given]
    if not rest:
        if abs(total - 1) > 1e-6:
            raise WhatIfError(
                f"{keys}: the three weights sum to {total:g}; they must sum to 1 (or set fewer "
                "and the others are scaled to fill the rest)"
            )
        return {w: given[w] / total for w in WEIGHT_NAMES}
    left = 1.0 - total
    if left < -1e-9:
        raise WhatIfError(
            f"{keys}: the weights set sum to {total:g} > 1, leaving nothing for "
            f"{', '.join(f'tiers.weights.{w}' for w in rest)}"
        )
    left = max(left, 0.0)
    base = sum(current[w] for w in rest)
    out = dict(given)
    for w in rest:
        out[w] = left * current[w] / base if base > 0 else left / len(rest)
    return {w: out[w] for w in WEIGHT_NAMES}


def _validation_text(exc: ValidationError, rules: TierRules, applied: Mapping[str, str]) -> str:
    """One line naming the override key(s) at fault and what TierRules allows."""
    keys = _keys(rules)
    by_path = {spec.path: key for key, spec in keys.items()}
    problems = []
    for err in exc.errors():
        msg = str(err["msg"]).removeprefix("Value error, ")
        key = by_path.get(tuple(err["loc"]))
        if key is not None:
            problems.append(f"{key}={applied.get(key, '?')}: {msg}; {keys[key].allowed}")
            continue
        # a rule across keys (band order, unique names): name the overrides it involves
        section = str(err["loc"][0]) if err["loc"] else ("bands" if "band" in msg else "")
        involved = [
            f"{k}={v}" for k, v in applied.items() if not section or k.startswith(PREFIX + section)
        ]
        problems.append(f"{', '.join(involved or list(applied))}: {msg}")
    return "; ".join(problems)


def adjustable_keys(rules: TierRules, with_predictions: bool = True) -> list[AdjustableKey]:
    """The numeric settings a what-if can change, with current value and slider bounds.

    Args:
        rules: the current tier settings.
        with_predictions: whether the snapshot has a churn model (``churn_p_min`` decides
            churn warnings only then; without one it is left out).
    """
    out = []
    last = f"tiers.bands.{rules.bands[-1].name}.min_score"
    current = rules.model_dump(mode="python")
    for key, spec in _keys(rules).items():
        if spec.kind == "stages" or key == last:
            continue  # not a slider; the last band is fixed at 0
        if key == "tiers.churn_warning.churn_p_min" and not with_predictions:
            continue
        value: Any = current
        for part in spec.path:
            value = value[part]
        out.append(
            AdjustableKey(
                key=key,
                value=None if value is None else float(value),
                min=spec.lo,
                max=spec.hi,
                step=spec.step,
            )
        )
    return out


# --------------------------------------------------------------------------- simulation
def _score(inputs: WhatIfInputs, rules: TierRules) -> np.ndarray:
    w = rules.weights
    if w == inputs.rules.weights:
        return inputs.rfm_score
    return w.recency * inputs.rfm_r + w.frequency * inputs.rfm_f + w.monetary * inputs.rfm_m


def _counts(codes: np.ndarray, names: Sequence[str]) -> dict[str, int]:
    c = np.bincount(codes, minlength=len(names))
    return {n: int(c[i]) for i, n in enumerate(names)}


def _tier_mask(codes: np.ndarray, tiers: Iterable[str], names: Sequence[str]) -> np.ndarray:
    wanted = [names.index(t) for t in tiers if t in names]
    return np.isin(codes, np.asarray(wanted, dtype=np.int64))


def _final(inputs: WhatIfInputs, rules: TierRules, score: np.ndarray, changed: bool) -> np.ndarray:
    """What-if tier codes (into ``inputs.names``); users the change does not affect keep their
    stored tier (decided at recompute with exact scores; the snapshot stores them rounded)."""
    stored, base = inputs.stored_codes(), inputs.base_codes()
    after = inputs.codes(score, rules) if changed else base
    return np.where(after == base, stored, after)


def tiers_after(inputs: WhatIfInputs, overrides: Mapping[str, Any]) -> pa.Array:
    """Each user's what-if tier (aligned with ``inputs.user_id``), as :func:`simulate` counts.

    Raises:
        WhatIfError: a refused key or value.
    """
    rules, applied = apply_overrides(inputs.rules, overrides)
    final = _final(inputs, rules, _score(inputs, rules), bool(applied))
    return pa.array(np.asarray(inputs.names, dtype=object)[final], pa.string())


def _churn_by(inputs: WhatIfInputs, rules: TierRules) -> str | None:
    """What decides the churn warning: ``churn_p`` (a model), ``lifecycle_stage`` or None."""
    cw = rules.churn_warning
    if cw is None:
        return None
    return (
        "churn_p"
        if cw.churn_p_min is not None and inputs.churn_p is not None
        else ("lifecycle_stage")
    )


def simulate(inputs: WhatIfInputs, overrides: Mapping[str, Any]) -> WhatIfResult:
    """Tiers of the snapshot's users under ``inputs.rules`` with ``overrides`` applied.

    Args:
        inputs: the snapshot's scores and what the tiers and costs need.
        overrides: key -> value (see the module text; :func:`parse_overrides` for CLI items).

    Returns:
        Sizes before (stored) and after, the movement matrix, strategy costs and the settings
        used.

    Raises:
        WhatIfError: a refused key or value (names the key and what is allowed).
    """
    rules, applied = apply_overrides(inputs.rules, overrides)
    names = inputs.names
    stored = inputs.stored_codes()
    base = inputs.base_codes()
    score = _score(inputs, rules)
    final = _final(inputs, rules, score, bool(applied))
    k = len(names)
    matrix = np.bincount(stored * k + final, minlength=k * k).reshape(k, k)
    moves = {a: {b: int(matrix[i, j]) for j, b in enumerate(names)} for i, a in enumerate(names)}
    strategies: dict[str, StrategyCost] = {}
    for s in inputs.strategies.strategies:
        if not s.applies_to.tiers:
            continue
        stage_m, eligible = inputs._strategy_masks(s)
        m_before = (_tier_mask(stored, s.applies_to.tiers, names) | stage_m) & eligible
        m_after = (_tier_mask(final, s.applies_to.tiers, names) | stage_m) & eligible
        held = inputs.held(s, m_before | m_after)
        n_before = int((m_before & ~held).sum())
        n_after = int((m_after & ~held).sum())
        c = s.cost_per_action_cny
        strategies[s.name] = StrategyCost(
            tiers=list(s.applies_to.tiers),
            cost_per_action_cny=c,
            users_before=n_before,
            users_after=n_after,
            cost_before_cny=round(n_before * c, 2),
            cost_after_cny=round(n_after * c, 2),
            cost_change_cny=round((n_after - n_before) * c, 2),
        )
    cost_before = round(sum(x.cost_before_cny for x in strategies.values()), 2)
    cost_after = round(sum(x.cost_after_cny for x in strategies.values()), 2)
    hist = ScoreHistogram.of(score, rules)
    return WhatIfResult(
        before=_counts(stored, names),
        after=_counts(final, names),
        moves=moves,
        cost_change_cny=round(cost_after - cost_before, 2),
        cost_before_cny=cost_before,
        cost_after_cny=cost_after,
        moved_users=int(matrix.sum() - np.trace(matrix)),
        users=inputs.users,
        version=inputs.version,
        as_of=inputs.as_of,
        overrides=applied,
        weights=rules.weights.model_dump(),
        strategies=strategies,
        warnings=band_warnings(hist, rules),
        unreproduced_users=int((base != stored).sum()),
        config_matches_snapshot=inputs.config_matches_snapshot,
        churn_warning_by=_churn_by(inputs, rules),
        tier_order=names,
    )
