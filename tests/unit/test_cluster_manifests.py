"""The Kubernetes manifests of cluster/: schema-valid, runnable command lines, the cadence.

Every object in cluster/ is validated against its own schema, vendored in tests/schemas/
(tests/schemas/README.md: batch/v1 CronJob and RBAC from the Kubernetes OpenAPI, RayJob and
RayService from KubeRay's CRDs, all strict: an unknown field is an error). Every RayJob's
entrypoint is split into argument lists by a real ``sh`` and each list is parsed against the
click command of ``strata`` without running it. The cadence templates are rendered by
cluster/cadence/submit.sh itself at pinned clock times.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer
import yaml

# typer 0.29 vendors its own click: its commands, contexts and errors are typer's
from typer._click.exceptions import MissingParameter, NoSuchOption, UsageError
from typer.core import TyperGroup

from jobs.cli import app

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
CADENCE = CLUSTER / "cadence"
SCHEMAS = ROOT / "tests" / "schemas"
SUBMIT = CADENCE / "submit.sh"
SCHEMA_FILES = {
    ("batch/v1", "CronJob"): "cronjob-batch-v1.json",
    ("v1", "ServiceAccount"): "serviceaccount-v1.json",
    ("rbac.authorization.k8s.io/v1", "Role"): "role-rbac-v1.json",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "rolebinding-rbac-v1.json",
    ("ray.io/v1", "RayJob"): "rayjob-ray-v1.json",
    ("ray.io/v1", "RayService"): "rayservice-ray-v1.json",
}
# Not Kubernetes objects: the Ray cluster launcher config and a Ray runtime_env.
NOT_OBJECTS = {"ray-cluster.yaml", "runtime_env.yaml"}
# ``python -m jobs.<module>`` runs that module's command (its ``__main__``), as strata <name>.
MODULE_COMMANDS = {"jobs.recompute": ["recompute"], "jobs.train": ["train"]}
SECRET_ENV = {"STRATA_PSEUDONYM_KEY", "STRATA_REDIS_URL", "STRATA_API_KEYS"}
CADENCES = {  # name: (schedule, commands in order)
    "daily": ("0 2 * * *", [["recompute"], ["report", "tiers"]]),
    "weekly": (
        "0 6 * * 1",
        [["report", "strategies"], ["report", "experiment"], ["rules", "stats"]],
    ),
    "monthly": (
        "30 6 1 * *",
        [["report", "strategies"], ["report", "experiment"], ["rules", "stats"]],
    ),
    "quarterly": ("0 4 1 1,4,7,10 *", [["train"], ["recompute"]]),
}
# 2026-11-30 18:30 UTC is 2026-12-01 02:30 in Asia/Shanghai: the UTC date is the day before.
NOW_DEC = int(dt.datetime(2026, 11, 30, 18, 30, tzinfo=dt.UTC).timestamp())
LOCAL = dt.timezone(dt.timedelta(hours=8))  # platform time, as strata's as-of
NOW_JAN = int(dt.datetime(2026, 12, 31, 20, 0, tzinfo=dt.UTC).timestamp())  # 1 Jan 04:00 local


@cache
def validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / SCHEMA_FILES[(api_version, kind)]).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(doc: dict[str, Any]) -> list[str]:
    """Schema errors of one object, each with its path."""
    v = validator(doc["apiVersion"], doc["kind"])
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(doc)]


def render(template: Path, now: int) -> str:
    """The template as cluster/cadence/submit.sh renders it at ``now`` (nothing created)."""
    env = {**os.environ, "STRATA_CADENCE_DRY_RUN": "1", "STRATA_CADENCE_NOW": str(now)}
    out = subprocess.run(
        ["sh", str(SUBMIT), str(template)], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout


def objects() -> list[tuple[str, dict[str, Any]]]:
    """Every Kubernetes object in cluster/ (templates rendered), named ``file#index``."""
    found = []
    for path in sorted([*CLUSTER.glob("*.yaml"), *CADENCE.glob("*.yaml")]):
        if path.name in NOT_OBJECTS:
            continue
        text = render(path, NOW_DEC) if path.parent == CADENCE else path.read_text()
        for i, doc in enumerate(yaml.safe_load_all(text)):
            found.append((f"{path.relative_to(CLUSTER)}#{i}", doc))
    return found


OBJECTS = objects()


def test_templates_render_every_placeholder() -> None:
    for path in CADENCE.glob("*.yaml"):
        assert re.search(r"@[A-Z_]+@", path.read_text()), path.name
        assert not re.search(r"@[A-Z_]+@", render(path, NOW_DEC)), path.name


def by_kind(kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [(n, d) for n, d in OBJECTS if d["kind"] == kind]


def commands(entrypoint: str) -> list[list[str]]:
    """The argument lists of an entrypoint's ``&&``-joined commands, as ``sh`` splits them."""
    out = []
    for part in re.split(r"\s&&\s", entrypoint):
        argv = subprocess.run(
            ["sh", "-c", f'set -- {part}; printf "%s\\0" "$@"'],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        out.append(argv.split("\0")[:-1])
    return out


def parse(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """(subcommand path, parsed params) of ``python -m jobs.X ...``; click errors propagate."""
    assert argv[:2] == ["python", "-m"], argv
    module, words = argv[2], argv[3:]
    if module != "jobs.cli":
        words = [*MODULE_COMMANDS[module], *words]
    cmd: Any = typer.main.get_command(app)
    ctx = typer.Context(cmd, info_name="strata")
    path: list[str] = []
    while isinstance(cmd, TyperGroup):
        name, sub, words = cmd.resolve_command(ctx, words)
        assert name is not None and sub is not None
        path.append(name)
        cmd = sub
        if isinstance(cmd, TyperGroup):
            ctx = typer.Context(cmd, info_name=name, parent=ctx)
    parsed = cmd.make_context(path[-1], list(words), parent=ctx)
    return path, parsed.params


def test_every_file_in_cluster_is_covered() -> None:
    names = {p.name for p in CLUSTER.glob("*.yaml")} | {p.name for p in CADENCE.glob("*.yaml")}
    seen = {n.split("#")[0].split("/")[-1] for n, _ in OBJECTS}
    assert names - seen == NOT_OBJECTS
    assert {(d["apiVersion"], d["kind"]) for _, d in OBJECTS} <= set(SCHEMA_FILES)
    assert len(by_kind("CronJob")) == 4 and len(by_kind("RayJob")) == 5


@pytest.mark.parametrize("name,doc", OBJECTS, ids=[n for n, _ in OBJECTS])
def test_manifest_matches_its_schema(name: str, doc: dict[str, Any]) -> None:
    assert errors(doc) == []


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    node: Any = out
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    return out


def _rename(doc: dict[str, Any], path: str, new: str) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    node: Any = out
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    for k in keys[:-1]:
        node = node[k]
    node[new] = node.pop(keys[-1])
    return out


def test_schemas_reject_broken_manifests() -> None:
    cron = by_kind("CronJob")[0][1]
    job = by_kind("RayJob")[0][1]
    service = by_kind("RayService")[0][1]
    pod = "spec.jobTemplate.spec.template.spec.containers.0"
    head = "spec.rayClusterSpec.headGroupSpec.template.spec.containers.0"
    broken = {
        "misspelled CronJob field": _rename(cron, "spec.concurrencyPolicy", "concurrencypolicy"),
        "misspelled container field": _rename(cron, f"{pod}.command", "commands"),
        "wrong type": _set(cron, "spec.startingDeadlineSeconds", "an hour"),
        "missing schedule": _rename(cron, "spec.schedule", "x-schedule"),
        "misspelled RayJob field": _rename(job, "spec.shutdownAfterJobFinishes", "shutdownAfter"),
        "misspelled RayJob pod field": _rename(job, f"{head}.resources", "resource"),
        "RayJob replicas as text": _set(
            job, "spec.rayClusterSpec.workerGroupSpecs.0.replicas", "four"
        ),
        "misspelled RayService field": _rename(service, "spec.serveConfigV2", "serveConfig"),
    }
    for what, doc in broken.items():
        assert errors(doc), what


@pytest.mark.parametrize("cadence", sorted(CADENCES))
def test_cronjob_policy(cadence: str) -> None:
    (cron,) = [d for _, d in by_kind("CronJob") if d["metadata"]["name"] == f"strata-{cadence}"]
    spec = cron["spec"]
    assert spec["schedule"] == CADENCES[cadence][0]
    assert spec["timeZone"] == "Asia/Shanghai"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert 0 < spec["startingDeadlineSeconds"] <= 3 * 86400
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] in (0, 1) and job["activeDeadlineSeconds"] > 0
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    template = f"/cadence/{cadence}-rayjob.yaml"
    assert container["command"] == ["/bin/sh", "/cadence/submit.sh", template]
    assert (CADENCE / Path(template).name).exists()
    (volume,) = pod["volumes"]
    assert volume["configMap"]["name"] == "strata-cadence"
    accounts = {d["metadata"]["name"] for _, d in by_kind("ServiceAccount")}
    assert pod["serviceAccountName"] in accounts
    # the Job outlives the RayJob's own deadline (the pod reports the Ray job's end)
    (rayjob,) = [d for n, d in by_kind("RayJob") if n.startswith(f"cadence/{cadence}-")]
    assert job["activeDeadlineSeconds"] > rayjob["spec"]["activeDeadlineSeconds"]


def test_rbac_allows_only_rayjobs() -> None:
    ((_, role),) = by_kind("Role")
    assert role["rules"] == [
        {"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create", "get"]}
    ]
    ((_, binding),) = by_kind("RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def _env_lists(node: Any) -> list[list[dict[str, Any]]]:
    if isinstance(node, dict):
        found = [node["env"]] if isinstance(node.get("env"), list) else []
        return found + [e for v in node.values() for e in _env_lists(v)]
    if isinstance(node, list):
        return [e for v in node for e in _env_lists(v)]
    return []


@pytest.mark.parametrize("name,doc", OBJECTS, ids=[n for n, _ in OBJECTS])
def test_secrets_only_by_reference(name: str, doc: dict[str, Any]) -> None:
    for env in _env_lists(doc):
        for var in env:
            if var["name"] in SECRET_ENV:
                assert "value" not in var, (name, var["name"])
                assert var["valueFrom"]["secretKeyRef"]["name"] == "strata-secrets"
    spec = doc.get("spec", {})
    runtimes = [yaml.safe_load(spec.get("runtimeEnvYAML") or "{}")]
    serve = yaml.safe_load(spec.get("serveConfigV2") or "{}")
    runtimes += [a.get("runtime_env", {}) for a in serve.get("applications", [])]
    for runtime in runtimes:
        assert not SECRET_ENV & set(runtime.get("env_vars", {})), name


def _rayjob_commands() -> list[tuple[str, list[str]]]:
    return [
        (name, argv)
        for name, doc in by_kind("RayJob")
        for argv in commands(doc["spec"]["entrypoint"])
    ]


@pytest.mark.parametrize(
    "name,argv", _rayjob_commands(), ids=lambda x: x if isinstance(x, str) else " ".join(x[2:5])
)
def test_entrypoint_is_a_strata_command_line(name: str, argv: list[str]) -> None:
    path, params = parse(argv)
    assert "--data" in argv and params["data"].startswith("s3://"), "the jobs ignore STRATA_DATA"
    if path in (["recompute"], ["train"]):
        # today's local midnight: of the pinned clock (templates) or of the real one
        now = dt.datetime.fromtimestamp(NOW_DEC, LOCAL) if name.startswith("cadence/") else None
        today = (now or dt.datetime.now(LOCAL)).date()
        assert params["as_of"] == dt.datetime.combine(today, dt.time(), LOCAL)


def test_command_parsing_can_fail() -> None:
    good = ["python", "-m", "jobs.cli", "recompute", "--data", "s3://b/d", "--as-of", "2026-12-01"]
    assert parse(good)[0] == ["recompute"]
    with pytest.raises(NoSuchOption):
        parse([*good[:6], "--as_of", "2026-12-01"])
    with pytest.raises(typer.BadParameter):
        parse([*good, "--actors", "0"])
    with pytest.raises(MissingParameter):
        parse(good[:6])
    with pytest.raises(UsageError):
        parse(["python", "-m", "jobs.cli", "report", "tier", "--data", "s3://b/d"])


def _running_experiments(day: dt.date) -> set[str]:
    cfg = yaml.safe_load((ROOT / "configs" / "experiments.yaml").read_text())
    return {e["name"] for e in cfg["experiments"] if e["start"] <= day <= e["end"]}


@pytest.mark.parametrize("cadence", sorted(CADENCES))
def test_cadence_runs_the_right_commands(cadence: str) -> None:
    ((_, doc),) = [(n, d) for n, d in by_kind("RayJob") if n.startswith(f"cadence/{cadence}-")]
    parsed = [parse(argv) for argv in commands(doc["spec"]["entrypoint"])]
    assert [p for p, _ in parsed] == CADENCES[cadence][1]
    today = dt.date(2026, 12, 1)
    for path, params in parsed:
        if path == ["report", "strategies"]:
            since = dt.date(2026, 11, 24) if cadence == "weekly" else dt.date(2026, 11, 1)
            assert (params["since"], params["until"]) == (since.isoformat(), today.isoformat())
        if path == ["report", "experiment"]:
            assert params["until"] == today.isoformat()
    names = {params["name"] for path, params in parsed if path == ["report", "experiment"]}
    if cadence in ("weekly", "monthly"):
        assert names == _running_experiments(today)


def test_as_of_is_local_midnight_across_the_year_end() -> None:
    text = render(CADENCE / "monthly-rayjob.yaml", NOW_JAN)
    (argv, *_) = commands(yaml.safe_load(text)["spec"]["entrypoint"])
    params = parse(argv)[1]
    assert (params["since"], params["until"]) == ("2026-12-01", "2027-01-01")
    quarterly = yaml.safe_load(render(CADENCE / "quarterly-rayjob.yaml", NOW_JAN))
    for argv in commands(quarterly["spec"]["entrypoint"]):
        assert parse(argv)[1]["as_of"].isoformat() == "2026-12-31T16:00:00+00:00"
