"""User errors become one short message and exit 2, in one place.

Jobs raise :class:`CommandError` or a domain error (config, warehouse, mapping, model registry,
keys, Redis unreachable); the ``strata`` app's group (:class:`UserErrorsGroup`) and every
``python -m jobs.<name>`` (:func:`run_command`) turn them into one line on stderr and exit
status :data:`USER_ERROR_EXIT`; ``--debug`` or ``STRATA_DEBUG=1`` keeps the traceback. A bug
keeps its traceback always.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import typer
from pydantic import ValidationError
from typer.core import TyperCommand, TyperGroup

from strata.config import ConfigError
from strata.ingest import MappingError
from strata.io.import_files import InputError
from strata.io.keys import PseudonymKeyError
from strata.io.models import ModelError
from strata.io.segment_store import SegmentStoreError
from strata.io.warehouse import WarehouseError
from strata.serving.apikeys import KeyFileError


class BucketTaskError(RuntimeError):
    """One bucket's Ray task failed; the other tasks were cancelled.

    Attributes:
        bucket: the bucket whose task failed.
        cause: the task's own exception (unwrapped from Ray's error).
    """

    def __init__(self, bucket: int, cause: BaseException) -> None:
        super().__init__(f"bucket {bucket}: {type(cause).__name__}: {cause}")
        self.bucket = bucket
        self.cause = cause


class CommandError(Exception):
    """A command cannot do what was asked; the message says what is wrong and what to do.

    Jobs raise it (or a domain error) instead of printing and exiting themselves: the CLI turns
    it into one short message and exit status :data:`USER_ERROR_EXIT`.
    """


#: Exit status of a command stopped by a user error (config, input, data root, service).
USER_ERROR_EXIT = 2
#: Environment variable that makes user errors raise with their traceback (as ``--debug``).
DEBUG_ENV = "STRATA_DEBUG"

#: Errors of the user's making whose messages name what is wrong, where and what to do; they
#: may translate a low-level cause (file, YAML, JSON, Arrow, pydantic), which is then no bug.
_USER_ERRORS: tuple[type[BaseException], ...] = (
    CommandError,
    ConfigError,
    WarehouseError,
    MappingError,
    InputError,
    ModelError,
    KeyFileError,
    PseudonymKeyError,
    SegmentStoreError,
    ValidationError,
)
#: (module, class) of the jobs' own errors. They wrap whatever stopped the job, so they are
#: user errors only when they have no cause or their cause is one (else: a bug).
_JOB_ERRORS = (
    ("jobs.generate", "GenerateError"),
    ("jobs.recompute", "RecomputeError"),
    ("jobs.train", "TrainError"),
)


def _job_errors() -> tuple[type[BaseException], ...]:
    # looked up where loaded: an exception of a job's type exists only once its module does
    found = (getattr(sys.modules.get(m), name, None) for m, name in _JOB_ERRORS)
    return tuple(t for t in found if isinstance(t, type) and issubclass(t, BaseException))


def _redis_unreachable() -> tuple[type[BaseException], ...]:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return (RedisConnectionError, RedisTimeoutError)


def _unwrapped(exc: BaseException) -> BaseException:
    """The cause inside Ray's task wrapper (``RayTaskError``) or a :class:`BucketTaskError`.

    ``ray.get`` raises a RayTaskError that is also an instance of its cause's class, with the
    remote traceback in its text: the cause itself carries the message.
    """
    for _ in range(10):
        ray_exceptions = sys.modules.get("ray.exceptions")
        wrapper = isinstance(exc, BucketTaskError) or (
            ray_exceptions is not None and isinstance(exc, ray_exceptions.RayTaskError)
        )
        cause = getattr(exc, "cause", None)
        if not (wrapper and isinstance(cause, BaseException)):
            break
        exc = cause
    return exc


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` unwrapped, then its explicit causes (``raise ... from``), each unwrapped."""
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(out) < 20:
        current = _unwrapped(current)
        if any(current is e for e in out):
            break
        out.append(current)
        current = current.__cause__
    return out


def user_error_message(exc: BaseException) -> str | None:
    """The short message of a user error, or None when ``exc`` is a bug (keep its traceback).

    User errors: the domain errors (config, warehouse, mapping, import input file, model
    registry, key file, pseudonymisation key, segment store, pydantic validation of configs and
    settings), an unreachable Redis (connection refused or timed out), a full disk or quota
    (ENOSPC, EDQUOT: an OS error naming the file), and the jobs' own errors
    when what they wrap is one of those, an OS error, or nothing. Ray's task wrapper is looked
    through.
    """
    unreachable = _redis_unreachable()
    domain = (*_USER_ERRORS, *unreachable)
    for i, err in enumerate(chain := _chain(exc)):
        if isinstance(err, domain):
            break
        if _actor_init_failed(err):
            return _domain_text(str(err), domain)
        if isinstance(err, _job_errors()):
            inner = chain[i + 1 :]
            if not inner or any(isinstance(e, (*domain, OSError)) for e in inner):
                break
            return None
    else:
        return _disk_full_message(chain)
    if isinstance(err, unreachable):
        return (
            f"Redis is unreachable ({err}); check STRATA_REDIS_URL "
            "(unset, strata starts an embedded redis-server)"
        )
    if isinstance(err, ValidationError):
        return _validation_message(err)
    return str(err).strip() or type(err).__name__


#: errnos of a full disk or an exhausted quota: the user's to fix, no bug.
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def _disk_full_message(chain: list[BaseException]) -> str | None:
    """The message of a write that ran out of space (its text names the file), else None."""
    for err in chain:
        if isinstance(err, OSError) and err.errno in _DISK_FULL:
            where = f" {err.filename}" if err.filename else ""
            return (
                f"disk full{where}: {err}; free space and run again "
                "(nothing was committed; `strata vacuum` removes leftover parts)"
            )
    return None


def _actor_init_failed(exc: BaseException) -> bool:
    ray_exceptions = sys.modules.get("ray.exceptions")
    return (
        ray_exceptions is not None
        and isinstance(exc, ray_exceptions.RayActorError)
        and bool(exc.actor_init_failed)
    )


def _domain_text(text: str, domain: tuple[type[BaseException], ...]) -> str | None:
    """The message of a domain error at the end of a remote traceback's text, if it ends so.

    Ray's ``ActorDiedError`` for an actor whose ``__init__`` raised keeps only the text of the
    creation task's error (``...\nstrata.config.ConfigError: invalid config ...``).
    """
    best: str | None = None
    at = -1
    for t in domain:
        marker = f"\n{t.__module__}.{t.__qualname__}: "
        i = text.rfind(marker)
        if i > at:
            at, best = i, text[i + len(marker) :].strip()
    return best


def _validation_message(exc: ValidationError) -> str:
    """``invalid Settings: n_buckets: Input should be ...`` (one line per error, at most 5)."""
    errors = exc.errors()
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '(value)'}: {e['msg']}" for e in errors[:5]]
    env = " (environment STRATA_*)" if exc.title == "Settings" else ""
    return f"invalid {exc.title}{env}: " + "; ".join(parts)


def debug_enabled(ctx: typer.Context | None = None) -> bool:
    """True with ``--debug`` on the ``strata`` app or ``STRATA_DEBUG`` set (not 0/false)."""
    if ctx is not None and ctx.find_root().meta.get("strata.debug"):
        return True
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def fail_with_message(exc: BaseException, ctx: typer.Context | None = None) -> NoReturn:
    """Turn a user error into one short message on stderr and exit 2; re-raise anything else
    (a bug, or any error under ``--debug`` / ``STRATA_DEBUG=1``) with its traceback."""
    message = user_error_message(exc)
    if message is None or debug_enabled(ctx):
        raise exc
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(USER_ERROR_EXIT) from None


def _is_typer_control(exc: BaseException) -> bool:
    """Typer's own exceptions (exit, abort, usage errors) pass through untouched."""
    return type(exc).__module__.startswith("typer.")


class _UserErrorsMixin:
    """Runs the command's callback and turns its user errors into messages."""

    def invoke(self, ctx: Any) -> Any:  # typer's vendored click Context
        try:
            return super().invoke(ctx)  # type: ignore[misc]
        except Exception as exc:
            if _is_typer_control(exc):
                raise
            fail_with_message(exc, ctx)


class UserErrorsGroup(_UserErrorsMixin, TyperGroup):
    """The ``strata`` app's command group: user errors of any subcommand become messages."""


class UserErrorsCommand(_UserErrorsMixin, TyperCommand):
    """One job as its own program (``python -m jobs.<name>``), with the same error handling."""


def run_command(command: Callable[..., Any]) -> NoReturn:
    """Run one job's ``command`` as a program: ``python -m jobs.<name> [options]``."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(cls=UserErrorsCommand, help=command.__doc__)(command)
    app()
    raise SystemExit(0)


def ray_error_text(exc: BaseException) -> str:
    """The message of what a Ray task raised (its ``cause``), else of ``exc`` itself."""
    cause = getattr(exc, "cause", None)
    return str(cause) if cause is not None else str(exc)
