"""The layering rules of docs/architecture.md, read from every module's imports (ast).

strata/ imports no ray, fastapi, starlette or uvicorn and no actors/jobs/api/bench; redis only
inside strata/io/; strata/io imports no ray; actors/ no api or jobs; api/ no jobs, actors or
redis (it reads Redis through strata.io); nothing outside bench/ imports bench.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOMS = ("strata", "actors", "jobs", "api", "bench", "tests")

#: room (or sub-room) -> top-level packages it must not import
FORBIDDEN: dict[str, set[str]] = {
    "strata": {"ray", "fastapi", "starlette", "uvicorn", "redis", "actors", "jobs", "api", "bench"},
    "strata/io": {"ray", "fastapi", "starlette", "uvicorn", "actors", "jobs", "api", "bench"},
    "actors": {"api", "jobs", "bench"},
    "api": {"jobs", "actors", "bench", "redis"},
    "jobs": {"bench"},
    "tests": {"bench"},
}


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def _rule_for(rel: Path) -> str:
    parts = rel.parts
    if parts[0] == "strata" and len(parts) > 2 and parts[1] == "io":
        return "strata/io"
    return parts[0]


def _modules() -> list[Path]:
    return sorted(p for room in ROOMS for p in (REPO / room).rglob("*.py"))


def test_there_are_modules_to_check() -> None:
    rels = {p.relative_to(REPO).parts[0] for p in _modules()}
    assert {"strata", "actors", "jobs", "api"} <= rels


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_imports_follow_the_layering(path: Path) -> None:
    rel = path.relative_to(REPO)
    forbidden = FORBIDDEN.get(_rule_for(rel), set())
    bad = [
        f"{rel}:{line} imports {name}"
        for line, name in _imports(path)
        if name.split(".")[0] in forbidden
    ]
    assert not bad, "; ".join(bad)


def test_the_rule_catches_a_forbidden_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import os\nfrom ray import remote\nimport redis.asyncio as r\n")
    names = [name for _, name in _imports(probe)]
    assert names == ["os", "ray", "redis.asyncio"]
    assert _rule_for(Path("strata/io/warehouse.py")) == "strata/io"
    assert _rule_for(Path("strata/tiering/tiers.py")) == "strata"


#: Modin is in maintenance mode upstream (DESIGN.md): one module holds it, so a move to Ray
#: Data is a one-module change
MODIN_HOME = Path("strata/reports/frames.py")


def test_modin_is_imported_only_by_the_frames_module() -> None:
    bad = [
        f"{path.relative_to(REPO)}:{line} imports {name}"
        for path in _modules()
        if path.relative_to(REPO) != MODIN_HOME
        for line, name in _imports(path)
        if name.split(".")[0] == "modin"
    ]
    assert not bad, "; ".join(bad)
    assert any(name.startswith("modin") for _, name in _imports(REPO / MODIN_HOME))
