"""`strata serve`: the segment API on Ray Serve, answering from the Redis snapshot.

Starts (or joins) Ray with the Serve settings of api/deployment.py, deploys the FastAPI app
and stays in the foreground until Ctrl-C (or SIGTERM), then shuts Serve down cleanly. Redis is
``STRATA_REDIS_URL`` or the embedded server that keeps what `strata recompute` published.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from types import FrameType

import typer

from jobs._errors import CommandError, run_command
from jobs._runtime import console, ray_session, redis_session, summary_table
from strata.io.keyfile import load_keyring
from strata.io.segment_store import SegmentStore
from strata.serving.apikeys import DEMO_KEY
from strata.settings import Settings


def curl_line(base_url: str, raw_user_id: str, key: str = "$STRATA_API_KEY") -> str:
    """A copy-paste lookup of one user."""
    return f"curl -s -H 'Authorization: Bearer {key}' {base_url}/v1/users/{raw_user_id}/segment"


def event_curl_line(base_url: str, raw_user_id: str, key: str = "$STRATA_API_KEY") -> str:
    """A copy-paste add-to-cart timestamped 31 minutes ago: cart_abandoned fires at once."""
    ts = "$(date -d '31 minutes ago' +%s)000"
    body = (
        f'{{"events": [{{"user_id": "{raw_user_id}", "event_type": "add_to_cart", '
        f'"category": "fruit", "ts": \'"{ts}"\'}}]}}'
    )
    return (
        f"curl -s -X POST -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' "
        f"{base_url}/v1/events -d '{body}'"
    )


def _log_to_stderr() -> None:
    """strata's warnings (e.g. the embedded Redis died and was restarted) on stderr, with
    time and source, unless logging is configured already."""
    logger = logging.getLogger("strata")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)


def run_server(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    replicas: int = 1,
    demo: bool = False,
    example_user: str = "10000001",
    stream_workers: int = 0,
) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM); with ``stream_workers`` > 0 the real-time
    loop (stream workers and the warehouse sink, :class:`jobs.stream.StreamPool`) runs next
    to the API on the same Ray.

    Raises:
        CommandError: no API key is configured (outside demo mode).
    """
    from api.app import load_playbook
    from api.deployment import SERVE_ENV, isolated_serve_env, start

    load_playbook()  # a bad strategies.yaml / experiments.yaml stops here, before Ray

    if not demo and not len(load_keyring(settings)):
        raise CommandError(
            "no API keys: create one with `strata keys create --data DIR --scope "
            "segments:read` (or set STRATA_API_KEYS); only `strata demo` has a default key"
        )
    # before Ray starts: its processes read them. A local Ray gets private HAProxy files and
    # ports, so a second strata (tests, another data root) on the machine does not collide
    local = not (settings.ray_address or os.environ.get("RAY_ADDRESS"))
    for name, value in (isolated_serve_env() if local else SERVE_ENV).items():
        os.environ.setdefault(name, value)
    _log_to_stderr()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with contextlib.ExitStack() as stack:
            url = stack.enter_context(redis_session(settings, supervise=True))
            # an unreachable Redis fails here, before Ray starts
            mode = settings.redis_mode if settings.redis_url else "standalone"
            store = SegmentStore(url, namespace=settings.redis_namespace, mode=mode)
            current = store.current()
            store.close()
            stack.enter_context(ray_session(settings))
            from ray import serve

            served = settings.model_copy(update={"redis_url": url, "redis_mode": mode})
            base_url = start(served, host=host, port=port, num_replicas=replicas, demo=demo)
            pool = None
            if stream_workers:
                from jobs.stream import StreamPool

                pool = StreamPool(served, url, stream_workers)
                pool.start()
            try:
                key = DEMO_KEY if demo else "$STRATA_API_KEY"
                console.print(
                    summary_table(
                        "strata serve",
                        [
                            ("API", base_url),
                            ("OpenAPI docs", f"{base_url}/docs"),
                            ("replicas", replicas),
                            (
                                "redis",
                                settings.redis_url or f"embedded ({url}), restarted if it dies",
                            ),
                            ("snapshot version", current or "none published yet"),
                            ("key", "demo key (demo mode)" if demo else "from strata keys"),
                            (
                                "stream workers",
                                f"{pool.n_workers} on {pool.partitions} partitions + sink"
                                if pool is not None
                                else "off (run `strata stream`)",
                            ),
                        ],
                    )
                )
                console.print("try:", style="bold")
                console.print(curl_line(base_url, example_user, key), soft_wrap=True, markup=False)
                if pool is not None:
                    console.print(
                        event_curl_line(base_url, example_user, key), soft_wrap=True, markup=False
                    )
                    console.print(
                        f"then: curl -s -H 'Authorization: Bearer {key}' "
                        f"{base_url}/v1/users/{example_user}/actions",
                        soft_wrap=True,
                        markup=False,
                    )
                who = f"the demo key {key}" if demo else "a key of scope reports:read"
                console.print(
                    f"dashboard: {base_url}/dashboard (log in with {who})",
                    soft_wrap=True,
                    markup=False,
                )
                console.print("Ctrl-C stops the server.")
                # short waits: the signal handler runs in this thread between them
                ticks = 0
                while not stop.wait(0.5):
                    ticks += 1
                    if pool is not None and ticks % 2 == 0:
                        pool.poll()
            finally:
                if pool is not None:
                    console.print("stopping the stream workers ...")
                    pool.stop()
                console.print("stopping Serve ...")
                serve.shutdown()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def command(
    data: str = typer.Option(
        "./data", "--data", envvar="STRATA_DATA", help="Data root (key file, embedded Redis)."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="HTTP port."),
    replicas: int = typer.Option(1, "--replicas", min=1, help="Serve replicas of the API."),
) -> None:
    """Serve segment lookups over HTTP (FastAPI on Ray Serve) until Ctrl-C."""
    run_server(Settings(data=data), host=host, port=port, replicas=replicas)


if __name__ == "__main__":
    run_command(command)
