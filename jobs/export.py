"""`strata export`: everything strata holds about one user (an access request), as JSON.

The raw id is pseudonymised as the API does; the document holds the warehouse rows of every
table in the user's bucket, the user's row in every retained snapshot and the user's Redis
records (published segment, live state and overlay, dynamic tags, action log, first exposures
to the experiments of ``configs/experiments.yaml``). When Redis cannot be reached the warehouse
part is still exported and the document (and stderr) say so.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from jobs._errors import CommandError, run_command
from jobs._runtime import console, redis_session, summary_table
from strata.experiments.config import load_experiments
from strata.ids import pseudonymise
from strata.io.keys import load_pseudonym_key
from strata.io.paths import is_remote, local_path
from strata.io.tombstones import TombstoneStore
from strata.io.user_export import redis_part, warehouse_part
from strata.io.warehouse import Warehouse
from strata.privacy.audit import audit_id, audit_key
from strata.settings import Settings

err_console = Console(stderr=True)


@contextlib.contextmanager
def _redis_url(settings: Settings) -> Iterator[str | None]:
    """The Redis to read: ``STRATA_REDIS_URL``, else the data root's embedded one (started on
    its saved dataset); None when the data root has no Redis dataset at all."""
    local = not settings.redis_url and not is_remote(settings.data)
    if local and not os.path.isdir(os.path.join(local_path(settings.data), "redis")):
        yield None
        return
    with redis_session(settings) as url:
        yield url


def build_document(settings: Settings, raw_id: str, config_dir: str | None) -> dict[str, Any]:
    """The export document of one raw user id (see the module docstring)."""
    wh = Warehouse(settings.data)
    wh.manifest  # noqa: B018 - an unknown data root fails here, before anything else
    key = load_pseudonym_key(settings, create=False)
    uid = pseudonymise(raw_id, key)
    experiments = [e.name for e in load_experiments(config_dir).experiments]
    doc: dict[str, Any] = {
        "user_id": raw_id.strip(),
        "pseudonym": uid,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data_root": settings.data,
    }
    aid = str(audit_id(uid, audit_key(key)))
    doc["erased"] = aid in set(
        TombstoneStore(settings.data).entries().column("audit_id").to_pylist()
    )
    doc.update(warehouse_part(settings.data, uid))
    try:
        with _redis_url(settings) as url:
            if url is None:
                doc["redis"] = {"note": "no Redis: STRATA_REDIS_URL unset and no dataset here"}
            else:
                doc["redis"] = redis_part(url, settings.redis_namespace, uid, experiments)
    except (OSError, RuntimeError) as exc:
        doc["redis"] = {"error": f"Redis could not be started: {exc}"}
    redis_doc = doc["redis"]
    held = (
        any(doc["warehouse"].values())
        or any(doc["snapshots"].values())
        or any(v for k, v in redis_doc.items() if k not in ("error", "note"))
    )
    doc["empty"] = not held
    doc["note"] = (
        "strata holds nothing about this user" if not held else "everything strata holds"
    ) + ("; Redis part missing: " + redis_doc["error"] if "error" in redis_doc else "")
    return doc


def command(
    data: str = typer.Option(
        "./data", "--data", envvar="STRATA_DATA", help="Data root (local path or filesystem URI)."
    ),
    user: str = typer.Option(..., "--user", help="The user's raw platform id."),
    json_out: Path | None = typer.Option(
        None, "--json-out", help="Write the document here instead of stdout."
    ),
    config_dir: str | None = typer.Option(None, "--config-dir", help="Folder of YAML configs."),
) -> None:
    """Export everything strata holds about one user (access request) as JSON."""
    settings = Settings(data=data)
    if not user.strip():
        raise CommandError("--user: empty user id")
    doc = build_document(settings, user, config_dir)
    text = json.dumps(doc, indent=1, sort_keys=True, default=str)
    if "error" in doc["redis"]:
        err_console.print(f"warning: {doc['redis']['error']}; exported the warehouse part only")
    if json_out is None:
        sys.stdout.write(text + "\n")
    else:
        try:
            json_out.write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"--json-out {json_out}: cannot write: {exc.strerror}") from exc
    if doc["empty"]:
        err_console.print(f"user {user.strip()}: strata holds nothing about this user")
    rows: list[tuple[str, Any]] = [(f"{t} rows", len(r)) for t, r in doc["warehouse"].items()] + [
        ("snapshots with a row", sum(1 for r in doc["snapshots"].values() if r)),
        ("redis segment", "yes" if doc["redis"].get("segment") else "no"),
    ]
    out = console if json_out is not None else err_console
    out.print(summary_table(f"export of user {user.strip()}", rows))


if __name__ == "__main__":
    run_command(command)
