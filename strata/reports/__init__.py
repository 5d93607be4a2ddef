"""Whole-snapshot reports: tier and lifecycle shares, transitions with their rules, ARPU, LTV,
coupon cost and strategy reach per tier, what-if simulation of tier thresholds.

Pure: the metric logic works on data frames (pandas API: the same code runs on Modin or
pandas) and arrays; :mod:`strata.reports.model` is the report document every reader shares
(the CLI's ``--json``, the report files, the dashboard).
"""
