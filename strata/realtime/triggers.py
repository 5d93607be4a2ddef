"""configs/triggers.yaml: the trigger rules of the real-time loop, validated at the edge.

Four kinds of rule (``kind``):

- ``event``: an event of type ``on`` whose fields (and the user) meet ``where``.
- ``absence``: a ``start`` event not followed by a ``stop`` event within ``within``, one open
  instance per user and value of the event field ``key`` (a ``cancel`` event with the same
  key closes it too); fires when the timer (start ts + within) runs and it is still open.
- ``streak``: events of type ``on`` on ``days`` consecutive local calendar days; fires on the
  day the streak reaches ``days``.
- ``calendar``: ``festival_offset_days`` relative to each festival of configs/calendar.yaml
  (-1: the day before); the campaign scheduler sends one internal entry per target user.

Conditions (``where``, ``segment``) map a field to operators ``{eq, ne, lt, lte, gt, gte, in,
not_in}``. ``where`` (event rules) may name the event's fields (``rating``, ``category``,
``amount_cny``, ...) and the user's; ``segment`` (any kind) only the user's: ``tier``,
``lifecycle_stage``, ``top_category`` and ``tag.NAME`` (a snapshot tag of the segment, else a
dynamic tag: true while unexpired). A missing value meets only ``ne`` and ``not_in``.

Durations are written ``90s``, ``30m``, ``2h``, ``24h``, ``7d``. Loading fails with a
:class:`strata.config.ConfigError` naming the file and the key (unknown keys, event types,
tiers, lifecycle stages and categories, duplicate rule names, fields of another kind).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from strata.config import (
    CalendarConfig,
    ConfigError,
    StrictModel,
    config_path,
    parse_yaml,
)
from strata.realtime.model import ACTION_KINDS
from strata.realtime.wire import EVENT_FIELDS
from strata.schema import CATEGORIES, EVENT_TYPES
from strata.tiering.lifecycle import STAGES

__all__ = [
    "EVENT_CONDITION_FIELDS",
    "OPERATORS",
    "RULE_KINDS",
    "USER_FIELDS",
    "Budget",
    "Caps",
    "Coupon",
    "ExclusionGroup",
    "GiftPack",
    "Push",
    "RuleAction",
    "ServiceTask",
    "TagSpec",
    "TriggerConfig",
    "TriggerRule",
    "campaigns_due",
    "load_triggers",
    "load_triggers_text",
    "parse_duration",
    "target_tiers",
]

RULE_KINDS: tuple[str, ...] = ("event", "absence", "streak", "calendar")
OPERATORS: tuple[str, ...] = ("eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in")
#: event fields a condition or an absence key may name (scalars of the warehouse schema)
EVENT_CONDITION_FIELDS: tuple[str, ...] = tuple(
    f for f in EVENT_FIELDS if f not in ("user_id", "ts", "event_type", "categories")
)
#: user fields a condition may name, besides ``tag.NAME``
USER_FIELDS: tuple[str, ...] = ("tier", "lifecycle_stage", "top_category")
TAG_PREFIX = "tag."
#: placeholders of action parameters
EVENT_CATEGORY = "$event"
TOP_CATEGORY = "$top_category"
FESTIVAL = "$festival"

_NAME = r"^[a-z][a-z0-9_]*$"
_NAME_RE = re.compile(_NAME)
_DURATION_RE = re.compile(r"^\s*(\d+)\s*(s|m|h|d)\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
#: allowed values of user fields with a closed vocabulary (tiers are checked at load)
_CLOSED_VALUES: dict[str, tuple[str, ...]] = {
    "lifecycle_stage": STAGES,
    "top_category": CATEGORIES,
    "category": CATEGORIES,
}
_KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "event": ("on", "where"),
    "absence": ("start", "stop", "cancel", "within", "key"),
    "streak": ("on", "days"),
    "calendar": ("festival_offset_days",),
}
_KIND_REQUIRED: dict[str, tuple[str, ...]] = {
    "event": ("on",),
    "absence": ("start", "stop", "within"),
    "streak": ("on", "days"),
    "calendar": ("festival_offset_days",),
}


def parse_duration(value: Any) -> dt.timedelta:
    """A positive duration from ``"30m"``-style text (s, m, h, d) or a timedelta.

    Raises:
        ValueError: anything else (the message shows the accepted forms).
    """
    if isinstance(value, dt.timedelta):
        if value <= dt.timedelta(0):
            raise ValueError("a duration must be positive")
        return value
    m = _DURATION_RE.match(value) if isinstance(value, str) else None
    if m is None or int(m.group(1)) == 0:
        raise ValueError(f"{value!r} is not a duration like 90s, 30m, 2h, 24h or 7d")
    return dt.timedelta(seconds=int(m.group(1)) * _UNIT_S[m.group(2)])


Duration = Annotated[dt.timedelta, BeforeValidator(parse_duration)]
#: field -> {operator: value}
Conditions = dict[str, dict[str, Any]]


def _check_event_type(value: str | None) -> str | None:
    if value is not None and value not in EVENT_TYPES:
        raise ValueError(f"unknown event type {value!r}; allowed: {', '.join(EVENT_TYPES)}")
    return value


def _check_conditions(conditions: Conditions, *, event_fields: bool) -> Conditions:
    """Field names and operand types of a condition mapping (ValueError names the key)."""
    for name, ops in conditions.items():
        if name.startswith(TAG_PREFIX):
            if not _NAME_RE.match(name[len(TAG_PREFIX) :]):
                raise ValueError(f"{name}: a tag condition is tag.NAME with NAME like {_NAME}")
        elif name not in USER_FIELDS and not (event_fields and name in EVENT_CONDITION_FIELDS):
            allowed = [*USER_FIELDS, "tag.NAME"]
            if event_fields:
                allowed = [*EVENT_CONDITION_FIELDS, *allowed]
            raise ValueError(f"{name}: unknown field; allowed: {', '.join(allowed)}")
        if not ops:
            raise ValueError(f"{name}: needs at least one of {', '.join(OPERATORS)}")
        for op, operand in ops.items():
            where = f"{name}.{op}"
            if op not in OPERATORS:
                raise ValueError(f"{where}: unknown operator; allowed: {', '.join(OPERATORS)}")
            if op in ("in", "not_in"):
                if not isinstance(operand, list) or not operand:
                    raise ValueError(f"{where}: needs a non-empty list")
                values = operand
            elif op in ("eq", "ne"):
                values = [operand]
            else:
                if isinstance(operand, bool) or not isinstance(operand, int | float):
                    raise ValueError(f"{where}: needs a number, got {operand!r}")
                values = []
            for v in values:
                if not isinstance(v, str | int | float | bool):
                    raise ValueError(f"{where}: {v!r} is not a string, number or boolean")
            closed = _CLOSED_VALUES.get(name)
            unknown = [v for v in values if closed is not None and v not in closed]
            if unknown:
                raise ValueError(
                    f"{where}: unknown value {unknown[0]!r}; allowed: {', '.join(closed or ())}"
                )
    return conditions


# ------------------------------------------------------------------------------ actions
class Coupon(StrictModel):
    """A discount coupon: ``value_cny`` off an order of at least ``min_spend_cny``, valid
    ``valid_for`` from issue, on ``category`` (a catalogue category, ``$event`` = the
    trigger's category, ``$top_category`` = the user's top category; none: any category)."""

    value_cny: float = Field(gt=0, le=10_000)
    min_spend_cny: float = Field(0.0, ge=0)
    valid_for: Duration = dt.timedelta(hours=24)
    category: str | None = None

    @field_validator("category")
    @classmethod
    def _category(cls, v: str | None) -> str | None:
        if v is not None and v not in (EVENT_CATEGORY, TOP_CATEGORY, *CATEGORIES):
            allowed = [EVENT_CATEGORY, TOP_CATEGORY, *CATEGORIES]
            raise ValueError(f"unknown category {v!r}; allowed: {', '.join(allowed)}")
        return v


class ServiceTask(StrictModel):
    """A follow-up task for a customer-service queue."""

    queue: str = Field(min_length=1)
    reason: str = Field(min_length=1)


class GiftPack(StrictModel):
    """A gift pack (``$festival``: the festival's own pack, calendar rules only)."""

    pack: str = Field(min_length=1)


class Push(StrictModel):
    """A push notification rendered from ``template`` by the delivery system."""

    template: str = Field(min_length=1)


class RuleAction(StrictModel):
    """One action of a rule: exactly one of its keys (``- coupon: {...}``)."""

    coupon: Coupon | None = None
    service_task: ServiceTask | None = None
    gift_pack: GiftPack | None = None
    push: Push | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> RuleAction:
        if len(self.model_fields_set) != 1:
            raise ValueError(f"an action has exactly one of the keys {', '.join(ACTION_KINDS)}")
        return self

    @property
    def kind(self) -> str:
        """``coupon``, ``service_task``, ``gift_pack`` or ``push``."""
        return next(iter(self.model_fields_set))

    @property
    def spec(self) -> Coupon | ServiceTask | GiftPack | Push:
        """The action's parameters."""
        value = getattr(self, self.kind)
        assert value is not None
        return value


# ------------------------------------------------------------------------------ rules
class TagSpec(StrictModel):
    """A dynamic tag set on the user when the rule fires, expiring after ``ttl``."""

    name: str = Field(pattern=_NAME, max_length=64)
    ttl: Duration


class Caps(StrictModel):
    """Most firings of the rule per user per local calendar day / week (Monday first)."""

    per_day: int | None = Field(None, ge=1)
    per_week: int | None = Field(None, ge=1)


class Budget(StrictModel):
    """The rule's daily budget over all users (checked by the stream worker)."""

    daily_count: int | None = Field(None, ge=1)
    daily_cny: float | None = Field(None, gt=0)


class ExclusionGroup(StrictModel):
    """Rules of a group act at most once per user per ``window`` (highest priority wins)."""

    window: Duration


class TriggerRule(StrictModel):
    """One trigger rule (see the module docstring for the kinds and conditions).

    Attributes:
        name: unique, ``[a-z][a-z0-9_]*`` (part of action keys and statistics).
        kind: event | absence | streak | calendar.
        priority: higher wins among rules of one exclusion group matching at once.
        on: event type (event, streak).
        where: conditions on the event and the user (event).
        start, stop, cancel, within, key: the absence pattern (key: the event field that
            keys open instances; none: one per user).
        days: consecutive local days (streak).
        festival_offset_days: days relative to each festival (calendar; -1 = the eve).
        segment: conditions on the user (any kind).
        actions: what a firing issues.
        tag: a dynamic tag set by a firing.
        cooldown: no second firing of this rule for the user within this time.
        caps: per-user caps per local day / week.
        exclusion_group: a name of the top-level ``exclusion_groups``.
        budget: the rule's daily count / CNY budget (all users).
        attribution_window: an order this long after a firing converts it (last touch).
        enabled: false keeps the rule in the file but inactive.
    """

    name: str = Field(pattern=_NAME, max_length=64)
    kind: Literal["event", "absence", "streak", "calendar"]
    description: str | None = None
    enabled: bool = True
    priority: int = 0
    on: str | None = None
    where: Conditions = Field(default_factory=dict)
    start: str | None = None
    stop: str | None = None
    cancel: str | None = None
    within: Duration | None = None
    key: str | None = None
    days: int | None = Field(None, ge=2, le=30)
    festival_offset_days: int | None = Field(None, ge=-30, le=30)
    segment: Conditions = Field(default_factory=dict)
    actions: list[RuleAction] = Field(min_length=1)
    tag: TagSpec | None = None
    cooldown: Duration | None = None
    caps: Caps | None = None
    exclusion_group: str | None = None
    budget: Budget | None = None
    attribution_window: Duration = dt.timedelta(hours=72)

    @model_validator(mode="before")
    @classmethod
    def _on_key(cls, data: Any) -> Any:
        # YAML 1.1 reads the bare key `on` as the boolean true
        if isinstance(data, dict) and True in data:
            data = dict(data)
            data["on"] = data.pop(True)
        return data

    @field_validator("on", "start", "stop", "cancel")
    @classmethod
    def _event_types(cls, v: str | None) -> str | None:
        return _check_event_type(v)

    @field_validator("key")
    @classmethod
    def _key_field(cls, v: str | None) -> str | None:
        if v is not None and v not in EVENT_CONDITION_FIELDS:
            allowed = ", ".join(EVENT_CONDITION_FIELDS)
            raise ValueError(f"unknown event field {v!r}; allowed: {allowed}")
        return v

    @field_validator("where")
    @classmethod
    def _where(cls, v: Conditions) -> Conditions:
        return _check_conditions(v, event_fields=True)

    @field_validator("segment")
    @classmethod
    def _segment(cls, v: Conditions) -> Conditions:
        return _check_conditions(v, event_fields=False)

    @model_validator(mode="after")
    def _fields_of_kind(self) -> TriggerRule:
        own = _KIND_FIELDS[self.kind]
        for kind, fields in _KIND_FIELDS.items():
            for f in fields:
                if kind != self.kind and f not in own and f in self.model_fields_set:
                    raise ValueError(f"{f}: not a key of {self.kind} rules (it is for {kind})")
        missing = [f for f in _KIND_REQUIRED[self.kind] if getattr(self, f) is None]
        if missing:
            raise ValueError(f"{self.kind} rule {self.name!r} needs {', '.join(missing)}")
        if self.kind == "absence" and self.start in (self.stop, self.cancel):
            raise ValueError(f"start: {self.start!r} cannot also be the stop or cancel event")
        for i, action in enumerate(self.actions):
            pack = action.gift_pack.pack if action.gift_pack is not None else None
            if pack == FESTIVAL and self.kind != "calendar":
                raise ValueError(f"actions.{i}.gift_pack.pack: $festival needs a calendar rule")
        return self

    @property
    def action_kinds(self) -> list[str]:
        """The kinds of its actions, in order."""
        return [a.kind for a in self.actions]

    @property
    def event_types(self) -> tuple[str, ...]:
        """Event types the rule looks at (none for calendar rules)."""
        types = (self.on, self.start, self.stop, self.cancel)
        return tuple(t for t in types if t is not None)


class TriggerConfig(StrictModel):
    """configs/triggers.yaml: exclusion groups and rules."""

    exclusion_groups: dict[str, ExclusionGroup] = Field(default_factory=dict)
    rules: list[TriggerRule] = Field(default_factory=list)

    @field_validator("exclusion_groups")
    @classmethod
    def _group_names(cls, v: dict[str, ExclusionGroup]) -> dict[str, ExclusionGroup]:
        for name in v:
            if not _NAME_RE.match(name):
                raise ValueError(f"{name}: a group name is like {_NAME}")
        return v

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, v: list[TriggerRule]) -> list[TriggerRule]:
        seen: dict[str, int] = {}
        for i, rule in enumerate(v):
            if rule.name in seen:
                first = seen[rule.name]
                raise ValueError(
                    f"rules.{i}.name: duplicate rule name {rule.name!r} (also rules.{first})"
                )
            seen[rule.name] = i
        return v

    @model_validator(mode="after")
    def _known_groups(self) -> TriggerConfig:
        for i, rule in enumerate(self.rules):
            group = rule.exclusion_group
            if group is not None and group not in self.exclusion_groups:
                known = ", ".join(self.exclusion_groups) or "none defined"
                raise ValueError(
                    f"rules.{i}.exclusion_group: unknown group {group!r} "
                    f"(exclusion_groups: {known})"
                )
        return self

    @property
    def active(self) -> list[TriggerRule]:
        """The enabled rules."""
        return [r for r in self.rules if r.enabled]

    def rule(self, name: str) -> TriggerRule | None:
        """The rule called ``name`` (enabled or not), else None."""
        return next((r for r in self.rules if r.name == name), None)

    def summary(self) -> list[dict[str, Any]]:
        """The active rules as written to ``{ns}:rt:rules``:
        ``[{"name", "kind", "priority", "actions": [kinds]}]``."""
        return [
            {"name": r.name, "kind": r.kind, "priority": r.priority, "actions": r.action_kinds}
            for r in self.active
        ]


# ------------------------------------------------------------------------------ loading
def load_triggers(
    config_dir: str | Path | None = None, *, tier_names: Sequence[str] | None = None
) -> TriggerConfig:
    """configs/triggers.yaml, validated; tiers checked against configs/tiers.yaml.

    Reload-friendly: returns the new config or raises, so a caller keeps the old one.

    Raises:
        ConfigError: missing file, bad YAML or an invalid rule (names the file and key).
    """
    path = config_path("triggers", config_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    if tier_names is None:
        from strata.tiering.tiers import load_tier_rules

        tier_names = load_tier_rules(config_dir).tier_names
    return load_triggers_text(text, path, tier_names=tier_names)


def load_triggers_text(text: str, path: str | Path, *, tier_names: Sequence[str]) -> TriggerConfig:
    """Trigger rules from YAML text read from ``path`` (named in errors).

    Args:
        text: the YAML.
        path: where it came from.
        tier_names: the tiers a ``tier`` condition may name (configs/tiers.yaml).

    Raises:
        ConfigError: bad YAML or an invalid rule (names the file and key).
    """
    config = parse_yaml(text, path, TriggerConfig)
    tiers = set(tier_names)
    for i, rule in enumerate(config.rules):
        for part, conditions in (("where", rule.where), ("segment", rule.segment)):
            for op, operand in conditions.get("tier", {}).items():
                values = operand if isinstance(operand, list) else [operand]
                unknown = [v for v in values if v not in tiers]
                if unknown:
                    raise ConfigError(
                        f"invalid config {path}: rules.{i}.{part}.tier.{op}: unknown tier "
                        f"{unknown[0]!r}; tiers of tiers.yaml: {', '.join(tier_names)}"
                    )
    return config


# ------------------------------------------------------------------------------ helpers
def campaigns_due(
    config: TriggerConfig, calendar: CalendarConfig, date: dt.date
) -> list[tuple[str, str, dt.date]]:
    """The calendar campaigns to run on local date ``date``.

    Returns:
        ``(rule, festival, festival_date)`` for every enabled calendar rule and festival date
        with ``festival_date + festival_offset_days == date``, sorted.
    """
    due = []
    for rule in config.active:
        if rule.kind != "calendar" or rule.festival_offset_days is None:
            continue
        target = date - dt.timedelta(days=rule.festival_offset_days)
        for festival in calendar.festivals:
            if target in festival.dates:
                due.append((rule.name, festival.name, target))
    return sorted(due)


def target_tiers(rule: TriggerRule, tier_names: Iterable[str]) -> list[str] | None:
    """The tiers a rule's ``tier`` conditions allow (None: no tier condition), e.g. for a
    campaign to select its target users from the snapshot."""
    ops = [*rule.segment.get("tier", {}).items(), *rule.where.get("tier", {}).items()]
    if not ops:
        return None
    out = []
    for tier in tier_names:
        ok = True
        for op, operand in ops:
            if op == "eq":
                ok = ok and tier == operand
            elif op == "ne":
                ok = ok and tier != operand
            elif op == "in":
                ok = ok and tier in operand
            elif op == "not_in":
                ok = ok and tier not in operand
        if ok:
            out.append(tier)
    return out
