"""Shared orchestration helpers of the jobs: Ray and Redis sessions, fan-out over buckets,
console output (user errors: :mod:`jobs._errors`)."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import typer
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

from jobs._errors import BucketTaskError
from strata.io.paths import is_remote, local_path
from strata.io.redis_server import EmbeddedRedis, save_dataset
from strata.settings import Settings
from strata.timeutil import parse_as_of

console = Console(stderr=False)

T = TypeVar("T")


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


#: how often a fan-out over actors checks that the nodes of its pending calls are alive
NODE_CHECK_S = 2.0

#: how often one shard may be replaced (its node died, or it stayed unreachable)
MAX_REPLACEMENTS = 2


class ActorShards:
    """The actors of a sharded job, each over a fixed set of buckets, that outlive a node.

    Ray restarts an actor whose *process* died on the same node and retries its call. When a
    whole node dies, its actors can restart only where a CPU is free, and a cluster sized to
    its actors has none: the job would wait forever. So when a call's actor sits on a dead
    node (checked every :data:`NODE_CHECK_S` while waiting), or the call failed because its
    actor became unreachable (or died with its node), the actor is killed and replaced by a new
    one over the same buckets on any live node (``num_cpus=0``: it shares a CPU there), and
    the call is run again on it. The shards' work is a deterministic function of their buckets,
    so the result is the one the lost actor would have returned.

    Args:
        ray: the ray module.
        make: ``make(i, num_cpus)`` creates shard ``i``'s actor (it must have a ``node_id``
            method).
        n: number of shards.
        num_cpus: CPUs each first actor holds.
    """

    def __init__(self, ray: Any, make: Callable[[int, float], Any], n: int, num_cpus: float):
        self.ray = ray
        self.make = make
        self.actors: list[Any] = [make(i, num_cpus) for i in range(n)]
        #: the node each actor last reported (None: not yet known)
        self.nodes: list[str | None] = [None] * n
        self._node_refs: list[Any] = [a.node_id.remote() for a in self.actors]
        self._replaced = [0] * n
        #: shards replaced because their node died or they became unreachable
        self.replacements = 0

    def gather(self, call: Callable[[Any], Any], what: str) -> list[Any]:
        """Run ``call(actor)`` on every shard and wait for all, with a progress bar.

        Returns:
            The results, in shard order.

        Raises:
            Exception: what a call raised (after Ray's retries and the replacements above);
                every shard is killed and every other call has ended (or
                :data:`CANCEL_WAIT_S` passed) first, so the caller's cleanup cannot race a
                shard that is still writing.
        """
        ray = self.ray
        results: list[Any] = [None] * len(self.actors)
        pending = {call(a): i for i, a in enumerate(self.actors)}
        with progress() as bar:
            task = bar.add_task(what, total=len(self.actors))
            try:
                while pending:
                    done, _ = ray.wait(list(pending), num_returns=1, timeout=NODE_CHECK_S)
                    if not done:
                        self._replace_on_dead_nodes(pending, call)
                        continue
                    for ref in done:
                        i = pending.pop(ref)
                        try:
                            results[i] = ray.get(ref)
                        except ray.exceptions.RayActorError as exc:
                            unreachable = isinstance(exc, ray.exceptions.ActorUnavailableError)
                            if not self._lost(i, unreachable):
                                raise
                            pending[self._replace(i, call)] = i
                            continue
                        bar.advance(task)
            except BaseException:
                cancel_and_wait(ray, pending, actors=self.actors)
                raise
        return results

    def kill(self) -> None:
        """Kill every shard (the job is done with them)."""
        for actor in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor)

    def _node_of(self, i: int) -> str | None:
        ref = self._node_refs[i]
        if ref is not None:
            done, _ = self.ray.wait([ref], timeout=0)
            if done:
                with contextlib.suppress(Exception):
                    self.nodes[i] = self.ray.get(ref)
                self._node_refs[i] = None
        return self.nodes[i]

    def _lost(self, i: int, unreachable: bool = False) -> bool:
        """Whether shard ``i`` should be replaced: its node is dead, or (``unreachable``) its
        call failed for want of the actor; and it was not replaced too often already."""
        if self._replaced[i] >= MAX_REPLACEMENTS:
            return False
        node = self._node_of(i)
        alive = {n["NodeID"] for n in self.ray.nodes() if n.get("Alive")}
        return unreachable or (node is not None and node not in alive)

    def _replace_on_dead_nodes(self, pending: dict[Any, int], call: Callable[[Any], Any]) -> None:
        for ref, i in list(pending.items()):
            if self._lost(i):
                del pending[ref]
                pending[self._replace(i, call)] = i

    def _replace(self, i: int, call: Callable[[Any], Any]) -> Any:
        log.warning("shard %d lost its actor (node %s); re-running its buckets", i, self.nodes[i])
        with contextlib.suppress(Exception):
            self.ray.kill(self.actors[i], no_restart=True)
        self._replaced[i] += 1
        self.replacements += 1
        self.actors[i] = actor = self.make(i, 0.0)
        self.nodes[i] = None
        self._node_refs[i] = actor.node_id.remote()
        return call(actor)


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


#: Ray's own switch between a node of a cluster and a node of this machine only: unset (Linux's
#: default: 1), a new local Ray takes the machine's network address as its node address, and
#: every Ray process binds it (GCS, raylet, object manager, workers, the dashboard and
#: runtime-env agents), reachable from the network; 0 makes the node address 127.0.0.1 (what
#: Ray does on macOS and Windows). ``ray.init(_node_ip_address="127.0.0.1")`` is no way
#: round it: Ray replaces a loopback address by the network one.
LOCAL_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def loopback_only_node(ray: Any) -> None:
    """Make the next local Ray of this process a loopback-only node (see
    :data:`LOCAL_NODE_ENV`; docs/serving.md, "What listens where"), unless the environment
    asks for a networked one (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1``).

    Ray reads the variable once, when it is imported, so the value it read is set too.
    """
    from ray._private import ray_constants

    os.environ.setdefault(LOCAL_NODE_ENV, "0")
    ray_constants.ENABLE_RAY_CLUSTER = ray_constants.env_bool(LOCAL_NODE_ENV, False)


@contextlib.contextmanager
def ray_session(settings: Settings, num_cpus: int | None = None) -> Iterator[Any]:
    """Connect to the Ray cluster in settings (or the one ``ray job submit`` started us in),
    else start a local Ray whose processes listen on 127.0.0.1 only (no dashboard); shut down
    only what this call started.
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
        kwargs["dashboard_host"] = "127.0.0.1"
        loopback_only_node(ray)
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
