"""`strata erase`: erase users (the data subject's right to erasure) from everything strata holds.

Raw platform ids (as the API takes them) are pseudonymised with the key, then
:func:`strata.io.erasure.erase_users` removes them from Redis (every segment version, live
state, overlay, tags, action log, exposure markers, decisions, timers and stream entries),
tombstones them (the audit log: audit id, when, by ``cli``, what was removed) and saves the
embedded Redis dataset so its ``dump.rdb`` no longer holds them. The warehouse rows go at the
next `strata compact`; the next recompute and training run already skip them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import typer

from jobs._errors import CommandError, run_command
from jobs._runtime import console, redis_session, summary_table
from strata.ids import pseudonymise_many
from strata.io.erasure import ErasureError, ErasureReport, erase_users
from strata.io.keys import load_pseudonym_key
from strata.io.paths import is_remote, local_path
from strata.io.warehouse import Warehouse
from strata.serving.config import RAW_ID_PATTERN
from strata.settings import Settings

_RAW_ID = re.compile(RAW_ID_PATTERN)


def read_ids(users: list[str] | None, from_file: Path | None) -> list[str]:
    """The raw ids of ``--user`` and ``--from`` (one id per line; blank lines skipped).

    Raises:
        CommandError: neither or both given, an empty ``--user``, an unreadable file, or a
            line that is not one id (names the line).
    """
    if bool(users) == (from_file is not None):
        raise CommandError("give the users to erase with --user ID... or --from FILE (one of)")
    if users:
        for u in users:
            if not _RAW_ID.fullmatch(u.strip()):
                raise CommandError(
                    f"--user {u[:40]!r}: not a user id (1-64 letters, digits, _ or -)"
                )
        return [u.strip() for u in users]
    assert from_file is not None
    try:
        text = from_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"--from {from_file}: cannot read: {exc}") from exc
    out: list[str] = []
    for n, line in enumerate(text.splitlines(), start=1):
        raw = line.strip()
        if not raw:
            continue
        if not _RAW_ID.fullmatch(raw):
            raise CommandError(
                f"--from {from_file} line {n}: {raw[:40]!r} is not a user id (1-64 letters, "
                "digits, _ or -, as the API takes them)"
            )
        out.append(raw)
    if not out:
        raise CommandError(f"--from {from_file}: no user id in the file")
    return out


def run(settings: Settings, raw_ids: list[str], by: str = "cli") -> ErasureReport:
    """Erase raw ids under ``settings`` (Redis: ``STRATA_REDIS_URL`` or the data root's
    embedded server, whose dataset is saved afterwards)."""
    wh = Warehouse(settings.data)
    wh.manifest  # noqa: B018 - an unknown data root fails here, before anything is erased
    key = load_pseudonym_key(settings, create=False)
    ids = pseudonymise_many(raw_ids, key)
    embedded = not settings.redis_url
    has_dataset = is_remote(settings.data) or os.path.isdir(
        os.path.join(local_path(settings.data), "redis")
    )
    if embedded and not has_dataset:  # nothing was ever published here: warehouse only
        return erase_users(
            settings.data,
            None,
            settings.redis_namespace,
            ids,
            key=key,
            n_buckets=wh.n_buckets,
            by=by,
        )
    with redis_session(settings) as url:
        return erase_users(
            settings.data,
            url,
            settings.redis_namespace,
            ids,
            key=key,
            n_buckets=wh.n_buckets,
            by=by,
            save=embedded,
        )


def command(
    data: str = typer.Option(
        "./data", "--data", envvar="STRATA_DATA", help="Data root (local path or filesystem URI)."
    ),
    user: list[str] | None = typer.Option(
        None, "--user", help="A raw platform id to erase (repeat for more)."
    ),
    from_file: Path | None = typer.Option(
        None, "--from", help="File of raw platform ids to erase, one per line."
    ),
) -> None:
    """Erase users from Redis and tombstone them (right to erasure); compact drops the rest."""
    settings = Settings(data=data)
    raw_ids = read_ids(user, from_file)
    try:
        report = run(settings, raw_ids)
    except ErasureError as exc:
        raise CommandError(str(exc)) from exc
    removed = report.removed
    rows: list[tuple[str, Any]] = [
        ("users", len(set(raw_ids))),
        ("segment entries (all versions)", removed.get("segment_entries", 0)),
    ]
    rows += [(k.replace("_", " "), v) for k, v in removed.items() if k not in _SHOWN]
    rows += [
        ("redis dataset saved", "yes" if report.saved else "no (external Redis: operator's)"),
        ("audit ids", ", ".join(a[:12] + "…" for a in report.audit_ids[:3])),
        ("next step", "strata compact --data " + data),
    ]
    if not settings.redis_url and not report.saved:
        rows[-3] = ("redis dataset saved", "no Redis dataset here")
    console.print(summary_table("erasure", rows))


_SHOWN = {"users", "segment_entries"}

if __name__ == "__main__":
    run_command(command)
