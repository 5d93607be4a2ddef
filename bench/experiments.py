"""Benchmark of the A/B platform on generated data: CI coverage, A/A false positives, CUPED,
and the analysis time of `strata report experiment` for 1M exposed users.

1. Coverage, false positives, CUPED (``--seeds`` runs, default 50): each seed simulates one
   population (``--users``, default 20k, x ``--days`` 30) with the generator's own experiment
   mechanism — :func:`strata.synth.generate_bucket` with the shipped example experiment's plan,
   in this process, without Ray or a warehouse (the same code a `strata generate --experiment`
   task runs per bucket) — and analyses it with the report's engine
   (:func:`strata.experiments.outcomes.unit_outcomes` with the experiment's windows ->
   ``arm_statistics`` -> :func:`strata.experiments.analyse`, CUPED on as the report has it).
   Every seed also gets another pseudonym key, so the users' hash positions (their arms) differ
   too. Figures: the share of seeds whose 95% CI of the relative conversion effect covers the
   planted one (goal 0.93-0.97); the share of A/A runs (the same with ``relative_effect`` 0)
   with p < 0.05 (goal <= 0.07), and as a second A/A the untreated holdout against the control
   of the A/B runs; CUPED's CI width with / without the pre-exposure spend covariate.
2. Analysis time: ``strata report experiment NAME --data DIR --json`` as a child process on a
   warehouse with ~1M exposed users (``--exposed``), generated under ``--data`` (default
   /tmp/strata-bench-exp) when missing: `strata generate --experiment` with every persona
   targeted (a copy of configs/ whose generator.yaml lists no target persona; ~1.05M users, of
   whom ~95% have signed up by the send); the wall time includes the child's Python start-up.
   With every persona targeted the 15% lift is out of reach (most users convert anyway): the
   truth file then holds the smaller effect really planted.

The last line printed is one JSON object with the figures.

    python bench/experiments.py                      # 50 seeds, then the 1M timing
    python bench/experiments.py --seeds 10 --skip-report
    python bench/experiments.py --seeds 0            # only the 1M timing
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from strata import synth
from strata.config import config_path, load_calendar
from strata.experiments import analyse
from strata.experiments.config import Experiment, load_experiments
from strata.experiments.outcomes import OutcomeWindow, arm_statistics, unit_outcomes
from strata.ids import pseudonymise_many
from strata.synth.experiment import ExperimentPlan, plan_experiment
from strata.timeutil import DAY_MS

ROOT = Path(__file__).resolve().parents[1]
NAME = "potential_coupon_value"
DEFAULT_DATA = os.environ.get("STRATA_BENCH_EXP_DATA", "/tmp/strata-bench-exp")
BENCH_KEY = "strata-bench-pseudonym-key-000000"
START = dt.date(2026, 9, 1)
ALPHA = 0.05
#: share of users a 30-day window with every persona targeted exposes
EXPOSED_SHARE = 0.95


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=50)
    p.add_argument("--users", type=int, default=20_000, help="users per seed")
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--data", default=DEFAULT_DATA, help="the 1M-exposed warehouse root")
    p.add_argument("--exposed", type=int, default=1_000_000, help="exposed users of that warehouse")
    p.add_argument("--skip-report", action="store_true", help="skip the 1M analysis timing")
    return p.parse_args(argv)


def _plan(exp: Experiment, days: int, relative_effect: float | None = None) -> ExperimentPlan:
    cfg = synth.load_generator_config()
    if relative_effect is not None:
        cfg.experiments[NAME] = cfg.experiments[NAME].model_copy(
            update={"relative_effect": relative_effect}
        )
    return plan_experiment(
        NAME, exp.salt, exp.weights, exp.holdout, cfg, days, exp.analysis_window_days
    )


def _one(exp: Experiment, plan: ExperimentPlan, seed: int, users: int, days: int) -> dict[str, Any]:
    """One simulated population analysed as the report does; the relative conversion
    effects (coupon arm and holdout vs control) with and without CUPED."""
    raw = synth.raw_user_ids(users)
    ids = pseudonymise_many(raw.tolist(), f"{BENCH_KEY}-{seed}".encode())
    data = synth.generate_bucket(
        0, ids, raw, synth.load_generator_config(), load_calendar(), seed, START, days,
        experiment=plan,
    )  # fmt: skip
    assert data.exposures is not None and data.experiment_truth is not None
    window = OutcomeWindow(
        window_ms=exp.analysis_window_days * DAY_MS,
        pre_window_ms=exp.pre_window_days * DAY_MS,
        margin_rate=exp.margin_rate,
    )
    out = unit_outcomes(data.exposures, data.events, NAME, window)
    arms = [a.name for a in exp.arms] + ["holdout"]
    result: dict[str, Any] = {"truth": data.experiment_truth.relative_effect, "n": len(out)}
    for cuped in (True, False):
        stats = arm_statistics(out, arms, ["conversion", "revenue_per_user"], cuped=cuped)
        analysis = analyse(stats, exp.control, experiment=NAME, alpha=ALPHA)
        for c in analysis.comparisons:
            result[(c.arm, c.metric, cuped)] = c.relative
    return result


def _simulations(a: argparse.Namespace, exp: Experiment) -> dict[str, Any]:
    ab_plan, aa_plan = _plan(exp, a.days), _plan(exp, a.days, relative_effect=0.0)
    arm = ab_plan.arm
    covered = aa_fp = holdout_fp = 0
    width_ratio: dict[str, list[float]] = {"conversion": [], "revenue_per_user": []}
    truths, exposed = [], []
    t0 = time.perf_counter()
    for seed in range(a.seeds):
        ab = _one(exp, ab_plan, seed, a.users, a.days)
        aa = _one(exp, aa_plan, 10_000 + seed, a.users, a.days)
        truths.append(ab["truth"])
        exposed.append(ab["n"])
        rel = ab[(arm, "conversion", True)]
        covered += rel.ci_low <= ab["truth"] <= rel.ci_high
        aa_fp += aa[(arm, "conversion", True)].p_value < ALPHA
        holdout_fp += ab[("holdout", "conversion", True)].p_value < ALPHA
        for metric, ratios in width_ratio.items():
            for run in (ab, aa):
                with_, without = run[(arm, metric, True)], run[(arm, metric, False)]
                ratios.append((with_.ci_high - with_.ci_low) / (without.ci_high - without.ci_low))
        if seed % 10 == 9:
            print(f"  {seed + 1} seeds, {time.perf_counter() - t0:.0f} s", flush=True)
    n = a.seeds
    return {
        "seeds": n,
        "users_per_seed": a.users,
        "days": a.days,
        "exposed_per_seed_mean": float(np.mean(exposed)),
        "planted_relative_effect_mean": float(np.mean(truths)),
        "ci_coverage": covered / n,
        "aa_false_positive_rate": aa_fp / n,
        "holdout_vs_control_false_positive_rate": holdout_fp / n,
        "cuped_ci_width_ratio_conversion": float(np.mean(width_ratio["conversion"])),
        "cuped_ci_width_ratio_revenue": float(np.mean(width_ratio["revenue_per_user"])),
        "simulation_s": time.perf_counter() - t0,
    }


def _ensure_warehouse(data: str, users: int) -> bool:
    """Generate the timing warehouse (every persona targeted) unless it holds exposures."""
    from strata.io.warehouse import Warehouse

    wh = Warehouse(data)
    if wh.exists() and wh.summary()["exposures"]["rows"] > 0:
        return False
    configs = Path(tempfile.mkdtemp(prefix="strata-bench-exp-configs-"))
    try:
        for f in config_path("generator").parent.glob("*.yaml"):
            shutil.copy(f, configs / f.name)
        raw = yaml.safe_load((configs / "generator.yaml").read_text(encoding="utf-8"))
        raw["experiments"][NAME]["target_personas"] = []
        (configs / "generator.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
        code = (
            "import datetime as dt, sys; from jobs import generate; from strata.settings import "
            "Settings; r = generate.run(Settings(data=sys.argv[1]), users=int(sys.argv[2]), "
            "days=30, seed=1, end=dt.date(2026, 11, 1), overwrite=True, config_dir=sys.argv[3], "
            "experiment=sys.argv[4]); print(f'generated {r.events:,} events, exposed '"
            "f'{sum(r.exposed.values()):,} in {r.seconds:.0f} s')"
        )
        print(f"generating {users:,} users x 30 days with {NAME} into {data}", flush=True)
        subprocess.run(
            [sys.executable, "-c", code, data, str(users), str(configs), NAME],
            check=True, cwd=ROOT, env=os.environ.copy(),
        )  # fmt: skip
    finally:
        shutil.rmtree(configs, ignore_errors=True)
    return True


def _report_timing(a: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("STRATA_PSEUDONYM_KEY", BENCH_KEY)
    # ~95% of all users are exposed (those signed up by the send)
    generated = _ensure_warehouse(a.data, int(np.ceil(a.exposed / EXPOSED_SHARE)))
    cmd = [sys.executable, "-m", "jobs.cli", "report", "experiment", NAME, "--data", a.data,
           "--json"]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    doc = json.loads(proc.stdout)
    exposed = sum(arm["users"] for arm in doc["arms"])
    truth_file = Path(a.data) / "truth" / "experiments.json"
    truth = json.loads(truth_file.read_text())[NAME]
    (c,) = [
        c for c in doc["comparisons"]
        if (c["arm"], c["baseline"], c["metric"]) == (truth["arm"], truth["baseline"], "conversion")
    ]  # fmt: skip
    return {
        "report_exposed_users": exposed,
        "report_wall_s": wall,
        "report_child_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "report_generated_now": generated,
        "report_cpus": os.cpu_count(),
        "report_truth": truth["relative_effect"],
        "report_relative_ci": [c["relative"]["ci_low"], c["relative"]["ci_high"]],
        "report_ci_covers_truth": c["relative"]["ci_low"]
        <= truth["relative_effect"]
        <= c["relative"]["ci_high"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the figures, the JSON object last."""
    a = _args(argv)
    exp = load_experiments().get(NAME)
    assert exp is not None, f"configs/experiments.yaml lacks {NAME}"
    figures: dict[str, Any] = {}
    if a.seeds > 0:
        print(f"{a.seeds} seeds x {a.users:,} users x {a.days} days, A/B and A/A", flush=True)
        figures.update(_simulations(a, exp))
    if not a.skip_report:
        figures.update(_report_timing(a))
    for key, value in figures.items():
        print(f"{key:42s} {value:.4g}" if isinstance(value, float) else f"{key:42s} {value}")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
