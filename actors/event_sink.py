"""EventSinkActor: the warehouse sink of the live streams as a long-running Ray actor.

A thin shell around :class:`strata.io.stream_sink.StreamSink` (the partition streams into the
``events`` table, the outbox into ``actions``, the exposures stream into ``exposures``):
:meth:`EventSink.run` loops until :meth:`EventSink.stop` (the actor runs two calls at once
for that). If the actor's process dies, Ray restarts it and retries the ``run`` call in
flight; the new sink re-reads its pending entries and the warehouse watermarks, so the restart
neither loses nor duplicates rows.
"""

from __future__ import annotations

import threading
from typing import Any

import ray

from strata.io.stream_sink import StreamSink
from strata.realtime.stream_config import StreamConfig


class EventSink:
    """The sink's work; made a Ray actor by :data:`EventSinkActor`.

    Args:
        redis_url: the Redis of the streams.
        data_root: the warehouse's data root.
        config: stream settings (``StreamConfig.model_dump()``, or the model).
        namespace: Redis key namespace.
        n_buckets: buckets of a warehouse created by the sink.
    """

    def __init__(
        self,
        redis_url: str,
        data_root: str,
        config: StreamConfig | dict[str, Any],
        namespace: str = "strata",
        n_buckets: int = 256,
    ) -> None:
        cfg = config if isinstance(config, StreamConfig) else StreamConfig.model_validate(config)
        self._sink = StreamSink(redis_url, data_root, cfg, namespace, n_buckets)
        self._stop = threading.Event()

    def run(self) -> dict[str, int]:
        """Sink until :meth:`stop`; returns this process's totals (:class:`SinkStats`)."""
        self._stop.clear()
        return self._sink.run(self._stop).to_json()

    def stop(self) -> None:
        """Ask :meth:`run` to commit what it holds and return."""
        self._stop.set()

    def stats(self) -> dict[str, int]:
        """Totals so far (since this process started)."""
        return self._sink.totals.to_json()


#: The sink as a Ray actor: restarted forever if its process dies, ``run`` retried on the new
#: one; two concurrent calls so that ``stop``/``stats`` reach it while ``run`` loops.
# (ray's type stubs lack max_concurrency, which ray.remote accepts for actors)
EventSinkActor = ray.remote(  # type: ignore[call-overload]
    max_restarts=-1, max_task_retries=-1, max_concurrency=2, num_cpus=0
)(EventSink)
