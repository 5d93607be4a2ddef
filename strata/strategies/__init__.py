"""Per-tier playbooks as data (configs/strategies.yaml) and what applies to a user now."""

from strata.strategies.config import (
    StrategiesConfig,
    Strategy,
    load_strategies,
    load_strategies_text,
)
from strata.strategies.resolve import StrategyMatch, resolve_strategies

__all__ = [
    "StrategiesConfig",
    "Strategy",
    "StrategyMatch",
    "load_strategies",
    "load_strategies_text",
    "resolve_strategies",
]
