"""The playbook on the delivery path: what a strategy's standing holdout and a running
experiment do to a trigger rule's firing, before it is issued.

For a firing of rule R for a user (their tier, lifecycle stage, dynamic tags):

1. **Strategies' standing holdouts.** The strategies that enable R (``trigger_rules``) and apply
   to the user: if there are some and the user is in the holdout of every one of them (the
   assignment hash with the strategy's name and the holdout salt), the firing is suppressed
   (reason ``holdout``): the holdout never gets the strategy, so its effect can be measured.
2. **Experiments.** A running experiment (by local date) that targets the user and one of
   whose arms uses a strategy enabling R: the user's arm (the experiment's own assignment)
   decides. The first such firing is the user's exposure (source ``action``, logged for every
   arm, holdout included, so arms are compared on the same trigger). A holdout user's firing
   is suppressed (``holdout``); otherwise the arm's ``overrides`` apply to the actions (e.g.
   ``coupon_value_cny: 20`` sets every coupon's value and the firing's CNY cost).

Pure: the caller (the stream worker) logs the exposures and counts the suppressions.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from strata.experiments.assignment import HOLDOUT
from strata.experiments.config import Experiment, ExperimentsConfig
from strata.realtime.model import ActionSpec, Firing
from strata.strategies.config import StrategiesConfig, Strategy

__all__ = ["HOLDOUT_REASON", "DeliveryDecision", "Playbook"]

HOLDOUT_REASON = "holdout"
#: arm override keys and the action parameter each sets
_OVERRIDE_PARAMS: dict[str, tuple[str, str]] = {
    "coupon_value_cny": ("coupon", "value_cny"),
    "coupon_min_spend_cny": ("coupon", "min_spend_cny"),
}


@dataclass(frozen=True)
class ExposureNote:
    """A first exposure the caller logs (deduped per user and experiment by the log)."""

    experiment: str
    arm: str
    user_id: int
    ts: int


@dataclass
class DeliveryDecision:
    """The firing to issue (None when suppressed), the reason, and exposures to log."""

    firing: Firing | None
    reason: str | None = None
    exposures: list[ExposureNote] = field(default_factory=list)


def _applies(strategy: Strategy, tier: str | None, stage: str | None, tags: Sequence[str]) -> bool:
    t = strategy.applies_to
    return tier in t.tiers or stage in t.stages or any(tag in t.tags for tag in tags)


class Playbook:
    """Strategies and experiments as the stream workers apply them.

    Args:
        strategies: configs/strategies.yaml.
        experiments: configs/experiments.yaml.
    """

    def __init__(self, strategies: StrategiesConfig, experiments: ExperimentsConfig) -> None:
        self.strategies = strategies
        self.experiments = experiments
        self._by_rule: dict[str, list[Strategy]] = {}
        for s in strategies.strategies:
            for rule in s.trigger_rules:
                self._by_rule.setdefault(rule, []).append(s)
        by_name = {s.name: s for s in strategies.strategies}
        self._exp_by_rule: dict[str, list[Experiment]] = {}
        for e in experiments.experiments:
            rules = {
                r for a in e.arms for name in a.strategies for r in by_name[name].trigger_rules
            }
            for rule in rules:
                self._exp_by_rule.setdefault(rule, []).append(e)

    def decide(
        self,
        firing: Firing,
        tier: str | None,
        stage: str | None,
        tags: Sequence[str],
        today: dt.date,
    ) -> DeliveryDecision:
        """What happens to ``firing`` (see the module docstring)."""
        rule = firing.rule
        user = firing.user_id
        enabling = [s for s in self._by_rule.get(rule, ()) if _applies(s, tier, stage, tags)]
        if enabling and all(self.strategies.in_holdout(s, user) for s in enabling):
            return DeliveryDecision(None, HOLDOUT_REASON)
        decision = DeliveryDecision(firing)
        for exp in self._exp_by_rule.get(rule, ()):
            if exp.status(today) != "running" or not exp.target.matches(tier, stage):
                continue
            arm = exp.assign(user)
            decision.exposures.append(ExposureNote(exp.name, arm, user, firing.issued_ms))
            if arm == HOLDOUT:
                return DeliveryDecision(None, HOLDOUT_REASON, decision.exposures)
            spec = exp.arm(arm)
            if spec is not None and spec.overrides and decision.firing is not None:
                decision.firing = _override(decision.firing, spec.overrides)
        return decision


def _override(firing: Firing, overrides: dict[str, float | int | str | bool]) -> Firing:
    actions: list[ActionSpec] = []
    for a in firing.actions:
        params = dict(a.params)
        for key, value in overrides.items():
            target = _OVERRIDE_PARAMS.get(key)
            if target is not None and target[0] == a.action:
                params[target[1]] = value
        actions.append(ActionSpec(a.action, params))
    cost = sum(float(a.params.get("value_cny", 0) or 0) for a in actions if a.action == "coupon")
    return dataclasses.replace(firing, actions=actions, cost_cny=cost)
