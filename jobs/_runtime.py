"""Shared orchestration helpers of the jobs: Ray and Redis sessions, console output, and the
one place where user errors become short messages (:func:`user_error_message`)."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from strata.config import ConfigError
from strata.ingest import MappingError
from strata.io.import_files import InputError
from strata.io.keys import PseudonymKeyError
from strata.io.models import ModelError
from strata.io.paths import is_remote, local_path
from strata.io.redis_server import EmbeddedRedis, save_dataset
from strata.io.segment_store import SegmentStoreError
from strata.io.warehouse import WarehouseError
from strata.serving.apikeys import KeyFileError
from strata.settings import Settings
from strata.timeutil import parse_as_of

console = Console(stderr=False)

T = TypeVar("T")


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
    settings), an unreachable Redis (connection refused or timed out), and the jobs' own errors
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
        return None
    if isinstance(err, unreachable):
        return (
            f"Redis is unreachable ({err}); check STRATA_REDIS_URL "
            "(unset, strata starts an embedded redis-server)"
        )
    if isinstance(err, ValidationError):
        return _validation_message(err)
    return str(err).strip() or type(err).__name__


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


#: how long a failed fan-out waits for its cancelled tasks to end before the caller cleans up
CANCEL_WAIT_S = 60.0

log = logging.getLogger("strata.jobs")


def cancel_and_wait(
    ray: Any, refs: Iterable[Any], actors: Iterable[Any] = (), timeout_s: float = CANCEL_WAIT_S
) -> list[Any]:
    """Stop a fan-out's other work and wait until it has really ended.

    Cancelling is asynchronous: a task still running when ``ray.cancel`` returns may write for a
    moment longer, e.g. into a staging folder its caller is deleting. So every ref is waited for
    (its error, a cancellation included, ignored) before the caller may clean up.

    Args:
        ray: the ray module.
        refs: the object refs still pending.
        actors: actors to kill first (actor tasks cannot be force-cancelled; a killed actor's
            pending calls resolve with an error once it is dead).
        timeout_s: the most to wait in all.

    Returns:
        The refs that had still not resolved after ``timeout_s`` (normally none).
    """
    refs = list(refs)
    for actor in actors:
        with contextlib.suppress(Exception):
            ray.kill(actor, no_restart=True)
    for ref in refs:
        try:
            ray.cancel(ref, force=True)
        except (TypeError, ValueError):  # an actor task: force is refused
            with contextlib.suppress(Exception):
                ray.cancel(ref)
        except Exception:  # already finished, or its owner is gone
            pass
    if not refs:
        return []
    _, left = ray.wait(refs, num_returns=len(refs), timeout=timeout_s, fetch_local=False)
    if left:
        log.warning(
            "%d cancelled task(s) still running after %.0f s; their uncommitted output is "
            "swept by `strata vacuum`",
            len(left),
            timeout_s,
        )
    return list(left)


def map_buckets(
    ray: Any,
    items: Iterable[T],
    bucket_of_item: Callable[[T], int],
    submit: Callable[[T], Any],
    max_in_flight: int,
    description: str,
    show_progress: bool = True,
) -> list[Any]:
    """Run one Ray task per item (a bucket's work), at most ``max_in_flight`` at once.

    Keeps memory bounded by the tasks in flight and shows a progress bar. Results come in
    completion order (callers sort them when order matters).

    Raises:
        BucketTaskError: a task failed; every other task was cancelled and has ended (or
            :data:`CANCEL_WAIT_S` passed) before this is raised, so the caller's cleanup
            cannot race a task that is still writing.
    """
    queue = deque(items)
    pending: dict[Any, int] = {}
    results: list[Any] = []
    bar = progress() if show_progress else None
    bar_task = bar.add_task(description, total=len(queue)) if bar else None
    if bar:
        bar.start()
    try:
        while queue or pending:
            while queue and len(pending) < max_in_flight:
                item = queue.popleft()
                pending[submit(item)] = bucket_of_item(item)
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                bucket = pending.pop(ref)
                try:
                    results.append(ray.get(ref))
                except Exception as exc:
                    cancel_and_wait(ray, pending)
                    pending.clear()
                    raise BucketTaskError(bucket, getattr(exc, "cause", None) or exc) from exc
                if bar and bar_task is not None:
                    bar.advance(bar_task)
    except BaseException:  # Ctrl-C, or submit failed: nothing may keep running either
        if pending:
            cancel_and_wait(ray, pending)
        raise
    finally:
        if bar:
            bar.stop()
    return results


@contextlib.contextmanager
def ray_session(settings: Settings, num_cpus: int | None = None) -> Iterator[Any]:
    """Connect to the Ray cluster in settings (or the one ``ray job submit`` started us in),
    else start a local Ray; shut down only what this call started.
    """
    import ray

    if ray.is_initialized():
        yield ray
        return
    address = settings.ray_address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        kwargs["address"] = address
    else:
        # "local": always a new local Ray, never silently joining another cluster that
        # happens to run on this machine (`ray start`), which refuses num_cpus
        kwargs["address"] = "local"
        kwargs["num_cpus"] = num_cpus or settings.num_cpus
        kwargs["include_dashboard"] = False
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    ray.init(**kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()


@contextlib.contextmanager
def redis_session(settings: Settings, supervise: bool = False) -> Iterator[str]:
    """Yield a Redis URL: ``STRATA_REDIS_URL``, else an embedded redis-server for this run.

    With a local data root the embedded server keeps its dataset in ``<data>/redis/`` between
    runs, so what `strata recompute` published is there for `strata serve` and `rollback`;
    while one process runs it, the others on the same data root use it too (and save its
    dataset to disk when they are done, so a restart of that server keeps what they wrote).

    Args:
        settings: the Redis URL and data root.
        supervise: restart an embedded server that dies (`strata serve`, which must outlive it).
    """
    if settings.redis_url:
        yield settings.redis_url
        return
    persist = None if is_remote(settings.data) else os.path.join(local_path(settings.data), "redis")
    running = EmbeddedRedis.running_in(persist) if persist else None
    if running:  # e.g. a `strata serve` on the same data root: publish where it reads
        yield running
        try:
            save_dataset(running)
        except RuntimeError as exc:
            # what was written is live; only a restart of that server before its own next
            # save would lose it
            log.warning("could not save the embedded Redis dataset to disk: %s", exc)
        return
    with EmbeddedRedis(persist_dir=persist, supervise=supervise) as server:
        yield server.url


def progress() -> Progress:
    """The progress bar every long job uses."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def summary_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    """A two-column summary table (what, value) printed at the end of a job."""
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("value", justify="right")
    for name, value in rows:
        if isinstance(value, float):
            value = f"{value:,.2f}"
        elif isinstance(value, int):
            value = f"{value:,}"
        table.add_row(name, str(value))
    return table


def as_of_option(text: str) -> dt.datetime:
    """Typer parser of every ``--as-of``: :func:`strata.timeutil.parse_as_of`, a bad value
    answered as a usage error (exit 2) that names it."""
    try:
        return parse_as_of(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
