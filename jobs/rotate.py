"""``strata rotate-key``: rotate the pseudonymisation key without the raw ids.

The new key becomes one more link of the key chain (:mod:`strata.ids`): the data root is
re-keyed in one warehouse commit (:func:`strata.io.rekey.rekey_data_root`), the extended chain
is saved, then one recompute under the new chain publishes to Redis and everything Redis holds
under old ids is deleted (:func:`strata.io.rekey.drop_old_ids`). Keys are never printed: the
summary names them by fingerprint only. Procedure and limits: docs/privacy.md, "Key rotation".
"""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import typer
from rich.progress import TaskID

from jobs._errors import CommandError, run_command
from jobs._runtime import as_of_option, console, progress, redis_session, summary_table
from jobs.recompute import RecomputeJob
from strata.experiments.config import load_experiments
from strata.io.keys import load_pseudonym_key, read_key_link, write_key_chain
from strata.io.paths import is_remote
from strata.io.rekey import drop_old_ids, rekey_data_root
from strata.settings import Settings
from strata.timeutil import AS_OF_HELP, from_epoch_ms, to_epoch_ms

KEY_ENV = "STRATA_PSEUDONYM_KEY"


def running_experiments(config_dir: str | None, days: list[dt.date]) -> list[str]:
    """Names of the experiments of configs/experiments.yaml that run on any of ``days``."""
    config = load_experiments(config_dir)
    return [e.name for e in config.experiments if any(e.status(d) == "running" for d in days)]


def command(
    data: str = typer.Option("./data", "--data", envvar="STRATA_DATA", help="Data root."),
    new_key_file: Path = typer.Option(
        ...,
        "--new-key-file",
        help="File holding the new key link (one line, at least 16 bytes; e.g. "
        "`openssl rand -hex 32`). Never printed.",
    ),
    as_of: dt.datetime = typer.Option(
        ...,
        "--as-of",
        help="As-of of the recompute that publishes under the new ids. " + AS_OF_HELP,
        parser=as_of_option,
    ),
    chain_out: Path | None = typer.Option(
        None,
        "--chain-out",
        help="Where to write the extended key chain when the key comes from "
        "STRATA_PSEUDONYM_KEY (required then; set the variable to this file's text after).",
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Rotate although an experiment is running (its users' arms change: the "
        "assignment hashes the pseudonym).",
    ),
    no_publish: bool = typer.Option(
        False, "--no-publish", help="Re-key the data root only; no recompute, no Redis."
    ),
    actors: int | None = typer.Option(None, "--actors", min=1, help="Feature actors."),
    config_dir: str | None = typer.Option(None, "--config-dir", help="Folder of YAML configs."),
) -> None:
    """Rotate the pseudonymisation key: re-key warehouse, snapshots, tombstones and Redis in
    one recompute (new id = HMAC(new key, old id)); stop `strata stream` and `strata serve`
    first and restart them after."""
    settings = Settings(data=data)
    if is_remote(settings.data):
        raise CommandError(
            f"--data {data}: key rotation needs a local data root (it moves staged snapshot "
            "folders into place, and an object store has no folder move); copy the data root "
            "to local disk, rotate there, and copy it back"
        )
    old_key = load_pseudonym_key(settings, create=False)
    link = read_key_link(new_key_file)
    if settings.pseudonym_key is not None and chain_out is None:
        raise CommandError(
            "--chain-out: required when the key comes from STRATA_PSEUDONYM_KEY (the "
            "rotated chain must be written somewhere for you to set the variable from)"
        )
    # local dates of the as-of and of now: an experiment running on either changes arms
    days = sorted(
        {from_epoch_ms(to_epoch_ms(as_of)).date(), from_epoch_ms(int(time.time() * 1000)).date()}
    )
    running = running_experiments(config_dir, days)
    if running and not force:
        raise CommandError(
            f"experiments running ({' / '.join(map(str, days))}): {', '.join(running)}; a "
            "rotation changes "
            "their users' arms (assignment hashes the pseudonym): end them or pass --force"
        )
    target = Path(settings.key_file) if chain_out is None else chain_out
    if settings.pseudonym_key is None:
        target = Path(settings.key_file)

    def save_key(chain: bytes) -> None:
        write_key_chain(target, chain)

    with progress() as bar:
        tasks: dict[str, TaskID] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        report = rekey_data_root(settings.data, old_key, link, save_key, on_progress=on_progress)
    rows = [*report.rows_table(), ("rotated key chain written to", str(target))]
    if not no_publish:
        if settings.pseudonym_key is not None:  # the recompute's workers read the environment
            os.environ[KEY_ENV] = target.read_text().strip()
        new_settings = Settings(data=data)
        result = RecomputeJob(new_settings, as_of, actors=actors, config_dir=config_dir).run()
        rows.append(("recompute version", result.version))
        rows.append(("published", "yes" if result.published else "no"))
        if result.published:
            with redis_session(settings) as url:
                dropped = drop_old_ids(url, settings.redis_namespace, result.version)
            rows += list(dropped.items())
    if report.tombstones_stale:
        rows.append(
            (
                "warning",
                "stale tombstones cannot recognise their users any more: erase those raw ids "
                "again if they are ever re-imported",
            )
        )
    console.print(summary_table("key rotation", rows))


if __name__ == "__main__":
    run_command(command)
