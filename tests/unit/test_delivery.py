"""The playbook on the delivery path (strata.strategies.delivery): strategies' standing
holdouts suppress the rules they enable, a running experiment's arm overrides the coupon and
logs the exposure, its holdout gets nothing."""

from __future__ import annotations

import datetime as dt

from strata.experiments.config import load_experiments
from strata.realtime.model import ActionSpec, Firing
from strata.strategies.config import load_strategies
from strata.strategies.delivery import HOLDOUT_REASON, Playbook

STRATEGIES = load_strategies()
EXPERIMENTS = load_experiments()
PLAYBOOK = Playbook(STRATEGIES, EXPERIMENTS)
EXP = EXPERIMENTS.experiments[0]
DAY = dt.date(2026, 6, 1)  # the shipped example runs all of 2026
TS = 1_780_000_000_000


def firing(user: int, rule: str = "visit_streak_3d") -> Firing:
    return Firing(
        rule=rule, user_id=user, instance="2026-06-01", key=f"{rule}:{user}:x", tier="potential",
        issued_ms=TS, day="2026-06-01", trigger={},
        actions=[ActionSpec("coupon", {"value_cny": 3.0, "min_spend_cny": 29.0}),
                 ActionSpec("push", {"template": "t"})],
        cost_cny=3.0,
    )  # fmt: skip


def test_the_strategy_holdout_never_gets_the_rules_it_enables() -> None:
    strategy = STRATEGIES.get("potential_targeted_coupon")
    assert strategy is not None and "visit_streak_3d" in strategy.trigger_rules
    held = [u for u in range(20_000) if STRATEGIES.in_holdout(strategy, u)]
    # a held user may still get it through another applicable strategy enabling the rule
    others = [
        s for s in STRATEGIES.strategies
        if "visit_streak_3d" in s.trigger_rules and "potential" in s.applies_to.tiers
        and s.name != strategy.name
    ]  # fmt: skip
    only = [u for u in held if not any(not STRATEGIES.in_holdout(s, u) for s in others)]
    assert 0.03 < len(held) / 20_000 < 0.07 and only
    d = PLAYBOOK.decide(firing(only[0]), "potential", "growing", [], dt.date(2027, 6, 1))
    assert d.firing is None and d.reason == HOLDOUT_REASON
    # a tier no strategy enabling the rule applies to: the rule stands on its own
    free = PLAYBOOK.decide(firing(only[0]), "ordinary", "growing", [], dt.date(2027, 6, 1))
    assert free.firing is not None and free.reason is None


def test_a_running_experiment_overrides_the_coupon_by_arm_and_logs_the_exposure() -> None:
    seen: dict[str, int] = {}
    for u in range(5_000):
        if any(STRATEGIES.in_holdout(s, u) for s in STRATEGIES.strategies):
            continue
        d = PLAYBOOK.decide(firing(u), "potential", "growing", [], DAY)
        arm = EXP.assign(u)
        seen[arm] = seen.get(arm, 0) + 1
        assert [(x.experiment, x.arm, x.ts) for x in d.exposures] == [(EXP.name, arm, TS)]
        if arm == "holdout":
            assert d.firing is None and d.reason == HOLDOUT_REASON
            continue
        assert d.firing is not None
        coupon = next(a for a in d.firing.actions if a.action == "coupon")
        want = EXP.arm(arm).overrides["coupon_value_cny"]  # type: ignore[union-attr]
        assert coupon.params["value_cny"] == want and d.firing.cost_cny == want
    assert set(seen) == {"control", "coupon_20", "holdout"}
    # outside the experiment's dates, or a tier it does not target: no exposure, no override
    u = next(
        u for u in range(100) if not any(STRATEGIES.in_holdout(s, u) for s in STRATEGIES.strategies)
    )
    after = PLAYBOOK.decide(firing(u), "potential", "growing", [], dt.date(2027, 6, 1))
    assert after.exposures == [] and after.firing is not None
    assert after.firing.actions[0].params["value_cny"] == 3.0
    other = PLAYBOOK.decide(firing(u), "high_value", "mature", [], DAY)
    assert other.exposures == []
