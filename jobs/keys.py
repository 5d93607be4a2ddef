"""`strata keys`: create, list and revoke the API keys of the HTTP API.

Only a key's SHA-256 hash is stored (in ``<data>/api_keys.json`` or ``STRATA_API_KEYS_FILE``);
``create`` prints the key once. It writes the key alone to stdout and everything else to
stderr, so ``KEY=$(strata keys create --scope segments:read)`` captures just the key.
"""

from __future__ import annotations

import secrets

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from jobs._errors import CommandError
from jobs._runtime import console, summary_table
from strata.io.keyfile import ENV_SOURCE, KeyFile
from strata.serving.apikeys import KeyFileError, KeyRecord, Scope, new_key, parse_records
from strata.settings import Settings

app = typer.Typer(
    help="Create, list and revoke API keys (only their SHA-256 hashes are stored).",
    no_args_is_help=True,
)

#: notes and tables of ``create`` go here, so stdout carries the key alone
err_console = Console(stderr=True)

DataOpt = typer.Option(
    "./data", "--data", envvar="STRATA_DATA", help="Data root (local path or filesystem URI)."
)


def _fail(message: str) -> CommandError:
    """A user error of a keys command: the strata app prints it on stderr and exits 2."""
    return CommandError(message)


def _key_file(settings: Settings) -> KeyFile:
    path = settings.keys_path()
    if path is None:
        raise _fail(
            f"the data root {settings.data} is not a local folder, so it has no key file: set "
            "STRATA_API_KEYS_FILE to a local path for the key file"
        )
    return KeyFile(path)


@app.command()
def create(
    data: str = DataOpt,
    scope: list[Scope] = typer.Option(
        ..., "--scope", help="A scope of the key (repeat for several); admin implies all."
    ),
    name: str | None = typer.Option(
        None, "--name", help="Key name (letters, digits, . _ -); default key-<8 hex>."
    ),
) -> None:
    """Create an API key: print it once, store only its SHA-256 hash."""
    settings = Settings(data=data)
    key_file = _key_file(settings)
    try:
        key, record = new_key(name or f"key-{secrets.token_hex(4)}", scope)
        # a name in both sources would stop every service from loading its keys
        if settings.api_keys is not None and any(
            r.name == record.name for r in parse_records(settings.api_keys, ENV_SOURCE)
        ):
            raise KeyFileError(f"an API key named {record.name!r} is defined in {ENV_SOURCE}")
        key_file.add(record)
    except (ValueError, OSError) as exc:
        raise _fail(str(exc)) from exc
    err_console.print(
        summary_table(
            "API key created",
            [
                ("name", record.name),
                ("scopes", ", ".join(record.scopes)),
                ("stored (hash only) in", str(key_file.path)),
            ],
        )
    )
    # plain text on a line of its own: no markup, highlighting or wrapping
    console.print(key, markup=False, highlight=False, soft_wrap=True)
    err_console.print(
        "[yellow]Save this key now: it is shown once and not stored (only its hash is).[/]"
    )


@app.command("list")
def list_keys(data: str = DataOpt) -> None:
    """List the API keys: name, scopes, creation time and hash prefix (never the key)."""
    settings = Settings(data=data)
    path = settings.keys_path()
    rows: list[tuple[KeyRecord, str]] = []
    try:
        if path is not None:
            rows += [(r, "file") for r in KeyFile(path).read()]
        if settings.api_keys is not None:
            rows += [(r, "env") for r in parse_records(settings.api_keys, ENV_SOURCE)]
    except KeyFileError as exc:
        raise _fail(str(exc)) from exc
    where = str(path.expanduser()) if path is not None else "none"
    if not rows:
        console.print(f"no API keys (key file: {escape(where)}; {ENV_SOURCE} unset or empty)")
        return
    table = Table(
        title="API keys",
        caption=escape(f"source file: {where}; env: {ENV_SOURCE}"),
        show_header=True,
        header_style="bold",
    )
    table.add_column("name", overflow="fold")
    table.add_column("scopes", overflow="fold")
    table.add_column("created_at", no_wrap=True)
    table.add_column("sha256", no_wrap=True)
    table.add_column("source", no_wrap=True)
    for record, source in rows:
        table.add_row(
            escape(record.name),
            ", ".join(record.scopes),
            record.created_at or "-",
            record.sha256[:8] + "…",
            source,
        )
    console.print(table)


@app.command()
def revoke(
    name: str = typer.Argument(..., help="Name of the key to revoke."),
    data: str = DataOpt,
) -> None:
    """Revoke an API key (remove it from the key file)."""
    settings = Settings(data=data)
    key_file = _key_file(settings)
    try:
        removed = key_file.revoke(name)
        in_env = settings.api_keys is not None and any(
            r.name == name for r in parse_records(settings.api_keys, ENV_SOURCE)
        )
    except (KeyFileError, OSError) as exc:
        raise _fail(str(exc)) from exc
    if not removed:
        hint = f"; it is defined in {ENV_SOURCE}: remove it there" if in_env else ""
        raise _fail(f"no API key named {name!r} in {key_file.path}{hint}")
    console.print(f"revoked API key '{escape(name)}' in {escape(str(key_file.path))}")
    if in_env:
        console.print(f"[yellow]a key named '{escape(name)}' is still defined in {ENV_SOURCE}[/]")
