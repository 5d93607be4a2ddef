"""Chinese and English labels of what the reports and the dashboard show: tiers, lifecycle
stages, RFM base bands, tier rules, metric names and the pages' own words. Pure.

A name without a label (a tier added in tiers.yaml, a new rule) is shown as itself, so a
config change never breaks a page.
"""

from __future__ import annotations

from typing import Literal

Lang = Literal["en", "zh"]
LANGS: tuple[Lang, ...] = ("en", "zh")
DEFAULT_LANG: Lang = "en"

#: kind -> name -> (English, Chinese)
_LABELS: dict[str, dict[str, tuple[str, str]]] = {
    "tier": {
        "high_value": ("High value", "高价值"),
        "potential": ("Potential", "潜力"),
        "ordinary": ("Ordinary", "普通"),
        "churn_warning": ("Churn warning", "流失预警"),
    },
    "stage": {
        "new": ("New", "新客"),
        "growing": ("Growing", "成长期"),
        "mature": ("Mature", "成熟期"),
        "declining": ("Declining", "衰退期"),
        "churned": ("Churned", "已流失"),
    },
    "band_group": {
        "recency_band": ("Recency band", "最近购买"),
        "frequency_band": ("Frequency band", "购买频次"),
        "spend_level": ("Spend level", "消费水平"),
    },
    "band": {
        "within_30d": ("Bought within 30 d", "30天内购买"),
        "lapsed_30d": ("Lapsed 30 d", "沉默30天"),
        "lapsed_90d": ("Lapsed 90 d", "沉默90天"),
        "lapsed_180d": ("Lapsed 180 d", "沉默180天"),
        "no_order": ("No order", "未下单"),
        "weekly": ("Weekly", "每周"),
        "monthly": ("Monthly", "每月"),
        "quarterly": ("Quarterly", "每季度"),
        "rarer": ("Rarer", "更少"),
        "high": ("High", "高"),
        "mid": ("Mid", "中"),
        "low": ("Low", "低"),
    },
    "rule": {
        "score_band": ("Score band", "分数区间"),
        "hysteresis_hold": ("Hysteresis hold", "滞回保持"),
        "churn_warning": ("Churn warning", "流失预警"),
    },
    "metric": {
        "users": ("Users", "用户数"),
        "share_pct": ("Share (%)", "占比（%）"),
        "arpu_cny": ("ARPU (CNY)", "ARPU（元）"),
        "orders_per_user": ("Orders per user", "人均订单数"),
        "ltv_cny": ("LTV (CNY)", "LTV（元）"),
        "coupon_cost_cny": ("Coupon cost (CNY)", "优惠券成本（元）"),
        "new_users": ("New users", "新增用户"),
        "lost_users": ("Lost users", "流失用户"),
        "returning_users": ("Returning users", "回流用户"),
        "reach": ("Reach", "触达人数"),
        "converted": ("Converted", "转化人数"),
        "conversion_pct": ("Conversion (%)", "转化率（%）"),
        "fired": ("Fired", "触发次数"),
        "suppressed": ("Suppressed", "被抑制"),
        "revenue_cny": ("Revenue (CNY)", "收入（元）"),
        "rate_pct": ("Rate (%)", "比例（%）"),
        "cost_change_cny": ("Cost change (CNY)", "成本变化（元）"),
    },
    "ui": {
        "title": ("strata tier dashboard", "strata 用户分层看板"),
        "nav_tiers": ("Tier shares", "分层占比"),
        "nav_transitions": ("Movement", "分层流转"),
        "nav_metrics": ("Value per tier", "分层价值"),
        "nav_realtime": ("Rules & experiments", "实时规则与实验"),
        "nav_whatif": ("What-if", "模拟调参"),
        "tier_shares": ("Tier shares over time", "各层用户占比趋势"),
        "stage_shares": ("Lifecycle shares over time", "生命周期占比趋势"),
        "snapshot": ("Snapshot", "快照"),
        "tier": ("Tier", "分层"),
        "hidden_cells": ("Groups under {k} (pooled)", "少于 {k} 人的分组（合并）"),
        "strategy": ("Strategy", "策略"),
        "as_of": ("As of", "截至"),
        "all_users": ("All users", "全部用户"),
        "transitions": ("Movement between snapshots", "快照间分层流转"),
        "from": ("From", "从"),
        "to": ("To", "到"),
        "show": ("Show", "查看"),
        "from_tier": ("From tier", "原分层"),
        "to_tier": ("To tier", "新分层"),
        "moved_by": ("Rules that moved these users", "导致流转的规则"),
        "click_cell": (
            "Click a cell to see the rules that moved those users.",
            "点击单元格查看导致流转的规则。",
        ),
        "no_transition": (
            "No transition between these snapshots in the report.",
            "报告中没有这两个快照之间的流转。",
        ),
        "per_tier": ("Value per tier over time", "各层价值趋势"),
        "bands": ("Users per RFM base band (latest snapshot)", "RFM 基础分段用户数（最新快照）"),
        "no_bands": (
            "The report has no band counts (snapshots written before the bands).",
            "报告中没有分段数据（快照早于分段功能）。",
        ),
        "strategies": ("Strategies per tier (latest snapshot)", "各层策略（最新快照）"),
        "no_strategies": ("No strategy exposures in this period.", "本期没有策略曝光。"),
        "rules": ("Real-time rules", "实时触发规则"),
        "experiments": ("Experiments", "实验"),
        "no_rules": (
            "No trigger rule is active and none has fired yet.",
            "暂无启用或已触发的规则。",
        ),
        "no_experiments": ("No experiment is configured.", "未配置实验。"),
        "not_available": ("Not available yet on this server.", "此服务器暂不可用。"),
        "rule": ("Rule", "规则"),
        "kind": ("Kind", "类型"),
        "active": ("Active", "启用"),
        "arm": ("Arm", "实验组"),
        "exposed": ("Exposed users", "曝光用户"),
        "baseline": ("Baseline", "对照组"),
        "metric": ("Metric", "指标"),
        "effect": ("Effect", "效果"),
        "ci": ("95% CI", "95% 置信区间"),
        "p_value": ("p-value", "p 值"),
        "srm": ("SRM", "样本比例检验"),
        "srm_ok": ("ok", "正常"),
        "srm_mismatch": ("mismatch", "比例失衡"),
        "srm_unknown": ("unknown", "未知"),
        "whatif": ("What-if: try thresholds and weights", "模拟：调整阈值与权重"),
        "simulate": ("Simulate", "模拟"),
        "before": ("Before", "调整前"),
        "after": ("After", "调整后"),
        "moves": ("Moves", "用户迁移"),
        "login": ("Sign in", "登录"),
        "logout": ("Sign out", "退出"),
        "api_key": ("API key (scope reports:read)", "API 密钥（需 reports:read 权限）"),
        "forbidden": ("Access denied", "无权访问"),
        "no_report": ("No report yet", "暂无报告"),
        "suppressed_note": (
            "Counts under {k} users are shown as <{k}, and so are figures derived from them.",
            "少于 {k} 人的数据显示为 <{k}，由其计算的指标同样隐藏。",
        ),
        "rounding_note": (
            "Shares in % to 1 decimal, CNY and per-user figures to 2 decimals, half up.",
            "占比保留 1 位小数（%），金额与人均值保留 2 位小数（四舍五入）。",
        ),
        "report": ("Report", "报告"),
        "generated_at": ("generated", "生成于"),
        "language": ("中文", "English"),
    },
}


def label(kind: str, name: str, lang: Lang) -> str:
    """The label of ``name`` (a tier, stage, band, rule, metric or page word) in ``lang``;
    ``name`` itself when it has none."""
    pair = _LABELS.get(kind, {}).get(name)
    if pair is None:
        return name
    return pair[0] if lang == "en" else pair[1]


def labels(lang: Lang) -> dict[str, dict[str, str]]:
    """Every label in ``lang``: ``{kind: {name: label}}`` (what a page hands its charts)."""
    i = 0 if lang == "en" else 1
    return {
        kind: {name: pair[i] for name, pair in names.items()} for kind, names in _LABELS.items()
    }


def pick_lang(query: str | None, accept_language: str | None) -> Lang:
    """The page language: ``?lang=`` when it is ``en`` or ``zh``, else the best of the
    ``Accept-Language`` header (``zh-CN,zh;q=0.9,en;q=0.8`` -> ``zh``), else English."""
    if query in LANGS:
        return query
    best: tuple[float, int, Lang] | None = None
    for i, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        primary = tag.strip().lower().split("-")[0]
        if primary not in LANGS:
            continue
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                continue
        if q <= 0:
            continue
        if best is None or (q, -i) > (best[0], best[1]):
            best = (q, -i, primary)
    return best[2] if best is not None else DEFAULT_LANG
