"""Assignment of users to experiment arms: a pure, deterministic hash (the shared contract).

``u = first 8 bytes of sha256(f"{salt}:{experiment}:{user_id}")`` as a big-endian uint64 /
2**64, in [0, 1). The holdout share is taken first (``u < holdout`` -> ``"holdout"``); the rest
of [0, 1) is split by the arms' weights in listed order. The same user always gets the same arm
of one experiment (sticky for its life, on every machine); two experiments (other names or
salts) hash independently.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["HOLDOUT", "assign", "assign_many", "unit_of"]

#: the arm name of users in an experiment's (or a strategy's) holdout
HOLDOUT = "holdout"
_SCALE = float(2**64)

Weights = Mapping[str, float] | Sequence[tuple[str, float]]


def unit_of(salt: str, experiment: str, user_id: int) -> float:
    """The user's hash position in [0, 1) for one experiment."""
    digest = hashlib.sha256(f"{salt}:{experiment}:{int(user_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def _cut_points(weights: Weights, holdout: float) -> list[tuple[float, str]]:
    pairs = list(weights.items()) if isinstance(weights, Mapping) else list(weights)
    if not pairs:
        raise ValueError("an experiment needs at least one arm")
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    total = float(sum(w for _, w in pairs))
    if total <= 0 or any(w < 0 for _, w in pairs):
        raise ValueError("arm weights must be >= 0 with a positive sum")
    cuts = []
    acc = 0.0
    for arm, weight in pairs:
        acc += weight / total
        cuts.append((holdout + (1.0 - holdout) * acc, arm))
    return cuts


def _pick(u: float, holdout: float, cuts: list[tuple[float, str]]) -> str:
    if u < holdout:
        return HOLDOUT
    for cut, arm in cuts:
        if u < cut:
            return arm
    return cuts[-1][1]  # float rounding of the last cut point


def assign(
    salt: str, experiment: str, user_id: int, weights: Weights, *, holdout: float = 0.0
) -> str:
    """The arm of one user.

    Args:
        salt: the experiment's salt.
        experiment: the experiment name (a strategy's name for its standing holdout).
        user_id: the pseudonymised user id.
        weights: arm -> weight (or ``(arm, weight)`` pairs), split in listed order.
        holdout: share of users kept out of every arm (taken first).

    Returns:
        An arm name, or :data:`HOLDOUT`.
    """
    cuts = _cut_points(weights, holdout)
    return _pick(unit_of(salt, experiment, user_id), holdout, cuts)


def assign_many(
    salt: str, experiment: str, user_ids: Iterable[int], weights: Weights, *, holdout: float = 0.0
) -> list[str]:
    """:func:`assign` of many users (cut points computed once)."""
    cuts = _cut_points(weights, holdout)
    return [_pick(unit_of(salt, experiment, u), holdout, cuts) for u in user_ids]
