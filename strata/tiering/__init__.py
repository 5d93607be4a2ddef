"""Tiering: RFM scores, tiers with hysteresis, lifecycle stages, and explanations.

What it offers:

* :mod:`strata.tiering.tiers` — :class:`TierRules` (``configs/tiers.yaml``), the RFM score
  and the tier of every user (:func:`assign_tiers`), and the mergeable score histogram with
  its near-empty band warnings (:class:`ScoreHistogram`, :func:`band_warnings`);
* :mod:`strata.tiering.lifecycle` — :class:`LifecycleRules` (``configs/lifecycle.yaml``) and
  :func:`assign_lifecycle`;
* :mod:`strata.tiering.scoring` — :class:`RecomputeConfig` and :func:`score_features`, the
  second recompute pass over one bucket's features (ranks, lifecycle, tiers, predictions);
* :mod:`strata.tiering.explain` — :func:`explain`, why a user holds a tier, from the online
  record alone.

Import from the submodules (the package imports nothing itself, so that the submodules can
import each other freely).
"""
