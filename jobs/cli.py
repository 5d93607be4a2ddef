"""The ``strata`` command: one Typer app whose subcommands are the jobs.

Each job module (``jobs/<name>.py``) defines a ``command`` function with its Typer options and
can also run alone as ``python -m jobs.<name>``. User errors (a bad config, input file, data
root, an unreachable Redis, ...) of every command end as one short message and exit status 2
(:class:`jobs._errors.UserErrorsGroup`); ``--debug`` or ``STRATA_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import typer

from jobs import (
    campaigns,
    demo,
    erase,
    export,
    generate,
    ingest,
    keys,
    recompute,
    report,
    rotate,
    rules_cmds,
    serve,
    stream,
    train,
    warehouse_cmds,
    whatif,
)
from jobs._errors import DEBUG_ENV, UserErrorsGroup

app = typer.Typer(
    name="strata",
    help="User tiering for a fresh-grocery platform, on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=UserErrorsGroup,
)


@app.callback()
def _root(
    ctx: typer.Context,
    debug: bool = typer.Option(
        False,
        "--debug",
        envvar=DEBUG_ENV,
        help=f"Show the traceback of errors (also {DEBUG_ENV}=1); without it a user error is "
        "one short message and exit status 2.",
    ),
) -> None:
    """User tiering for a fresh-grocery platform, on Ray."""
    ctx.meta["strata.debug"] = debug


app.command("generate", help=generate.command.__doc__)(generate.command)
app.command("import", help=ingest.command.__doc__)(ingest.command)
app.command("recompute", help=recompute.command.__doc__)(recompute.command)
app.command("rollback", help=recompute.rollback.__doc__)(recompute.rollback)
app.command("train", help=train.command.__doc__)(train.command)
app.command("models", help=train.models.__doc__)(train.models)
app.command("compact", help=warehouse_cmds.compact.__doc__)(warehouse_cmds.compact)
app.command("info", help=warehouse_cmds.info.__doc__)(warehouse_cmds.info)
app.command("vacuum", help=warehouse_cmds.vacuum.__doc__)(warehouse_cmds.vacuum)
app.command("demo", help=demo.command.__doc__)(demo.command)
app.command("serve", help=serve.command.__doc__)(serve.command)
app.add_typer(keys.app, name="keys", help="API keys of the segment API (stored as hashes).")
app.command("stream", help=stream.command.__doc__)(stream.command)
app.add_typer(campaigns.app, name="campaigns", help="Calendar campaigns (festival rules).")
app.add_typer(rules_cmds.app, name="rules", help="Trigger rules: what each did.")
app.add_typer(report.app, name="report", help="Reports: experiments (effects as gbstats).")
app.command("whatif", help=whatif.command.__doc__)(whatif.command)
app.command("export", help=export.command.__doc__)(export.command)
app.command("erase", help=erase.command.__doc__)(erase.command)
app.command("rotate-key", help=rotate.command.__doc__)(rotate.command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
