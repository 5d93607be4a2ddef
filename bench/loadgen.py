"""A small, cheap HTTP/1.1 load generator: keep-alive connections on one uvloop thread.

wrk is not installed here, and a load generator on the same 2 cores as the server must cost as
little CPU as possible: this one writes pre-built request bytes on raw asyncio protocols and
parses only the status line and ``Content-Length`` (or the end of a chunked body) of each
response, so one request costs it ~15-25 µs of CPU.

Two modes, both recording every request's latency:

* closed loop (``concurrency``): ``concurrency`` connections, each sending its next request as
  soon as the previous answer arrives: the peak throughput at that concurrency.
* open loop (``rate``): requests are scheduled at a fixed rate, spread over the connections.
  A request whose connection is still busy at its scheduled time is sent as soon as the
  connection frees and its latency counts from the scheduled time (no coordinated omission,
  as in wrk2); a request sent on time counts from when it was actually sent, so event-loop
  timer slack (~1 ms) is not charged to the server.

    python bench/loadgen.py http://127.0.0.1:8000/v1/users/10000001/segment \\
        --concurrency 32 --seconds 10 [--rate 1500] [-H "Authorization: Bearer ..."]

Importable: :func:`run` (async), :func:`measure` (sync, in this process) and
:func:`measure_in_subprocess` (a fresh process, so its CPU is its own).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

__all__ = [
    "LoadResult",
    "build_request",
    "measure",
    "measure_in_subprocess",
    "run",
]


@dataclass
class LoadResult:
    """What one load run measured (latencies in milliseconds).

    Attributes:
        mode: ``closed`` (fixed concurrency) or ``open`` (fixed rate).
        concurrency: connections used.
        target_rate: requests/s asked for (open loop), else None.
        seconds: measured wall time (after the warm-up).
        ok: requests answered with a 2xx status.
        errors: non-2xx answers plus connection errors.
        rps: ``ok / seconds``.
        p50_ms, p90_ms, p99_ms, p999_ms, max_ms: latency percentiles of the 2xx answers.
        statuses: count per HTTP status (``0``: connection error).
        loadgen_cpu: CPU seconds the generator itself used per wall second (1.0 = one core).
    """

    mode: str
    concurrency: int
    target_rate: float | None
    seconds: float
    ok: int
    errors: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    statuses: dict[str, int] = field(default_factory=dict)
    loadgen_cpu: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The result as a JSON-serialisable dict."""
        return asdict(self)


def build_request(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """The raw bytes of one keep-alive HTTP/1.1 request for ``url``."""
    parts = urlsplit(url)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


class _Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False
        self._need: int | None = None  # bytes of the whole response, once the head is parsed
        self._status = 0
        self._chunked = False
        self._close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is not None:
            self._parse()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))

    def _parse(self) -> None:
        buf = self.buf
        if self._need is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            self._status = int(head[9:12])
            self._close_after = b"\r\nconnection: close" in head
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else len(head)])
                self._need = end + 4 + length
                self._chunked = False
            else:
                self._chunked = b"\r\ntransfer-encoding: chunked" in head
                self._need = end + 4
        if self._chunked:
            stop = buf.find(b"0\r\n\r\n", self._need)
            if stop < 0:
                return
            total = stop + 5
        else:
            total = self._need
            if len(buf) < total:
                return
        del buf[:total]
        self._need = None
        waiter, self.waiter = self.waiter, None
        assert waiter is not None
        if not waiter.done():
            waiter.set_result(self._status)
        if self._close_after and self.transport is not None:
            self.transport.close()

    def send(self, data: bytes) -> asyncio.Future[int]:
        """Write one request; the future gives the response's status code."""
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter


async def _connect(host: str, port: int) -> _Connection:
    _, conn = await asyncio.get_running_loop().create_connection(_Connection, host, port)
    return conn


async def run(
    url: str,
    requests: Sequence[bytes],
    *,
    concurrency: int = 32,
    seconds: float = 10.0,
    warmup_s: float = 2.0,
    rate: float | None = None,
    timeout_s: float = 30.0,
    offset_step: int = 7919,
) -> LoadResult:
    """Send ``requests`` (cycled, each connection from its own offset) to ``url``'s host.

    Args:
        url: any URL of the server (only the host and port are used; the path is in the
            requests).
        requests: raw requests from :func:`build_request`.
        concurrency: connections (closed loop: requests in flight).
        seconds: measured duration, after ``warmup_s`` of unrecorded load.
        rate: requests/s for an open-loop run; None for closed loop.
        timeout_s: a request not answered in this time counts as an error.
        offset_step: connection ``i`` starts at request ``i * offset_step``; with
            ``len(requests) // concurrency`` and enough requests, no request is sent twice
            (for servers that answer a repeat differently, e.g. as a duplicate).
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    clock = time.perf_counter
    n_req = len(requests)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    statuses: dict[int, int] = {}
    t_start = clock()
    t_record = t_start + warmup_s
    t_end = t_record + seconds
    interval = concurrency / rate if rate else 0.0

    async def worker(i: int) -> None:
        conn: _Connection | None = None
        k = i * offset_step  # each connection starts elsewhere in the request list
        lat = latencies[i]
        scheduled = t_start + (i / rate if rate else 0.0)
        while True:
            if rate:
                now = clock()
                if scheduled >= t_end:
                    break
                if scheduled > now:
                    await asyncio.sleep(scheduled - now)
            sent = clock()
            if sent >= t_end:
                break
            # open loop: late (connection was busy) → count from the scheduled time
            start = scheduled if rate and sent - scheduled > 0.002 else sent
            try:
                if conn is None or conn.closed:
                    conn = await _connect(host, port)
                status = await asyncio.wait_for(conn.send(requests[k % n_req]), timeout_s)
            except (TimeoutError, OSError):
                status = 0
                if conn is not None and conn.transport is not None:
                    conn.transport.close()
                conn = None
                await asyncio.sleep(0.01)  # do not spin on a refused port
            done = clock()
            k += 1
            scheduled += interval
            if start >= t_record and done <= t_end:
                statuses[status] = statuses.get(status, 0) + 1
                if 200 <= status < 300:
                    lat.append(done - start)
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    cpu0 = time.process_time()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    cpu = time.process_time() - cpu0
    wall = max(clock() - t_start, 1e-9)
    lat_ms = np.concatenate([np.asarray(x) for x in latencies]) * 1000.0
    ok = int(lat_ms.size)
    errors = sum(n for s, n in statuses.items() if not 200 <= s < 300)
    pct = np.percentile(lat_ms, [50, 90, 99, 99.9]) if ok else np.zeros(4)
    return LoadResult(
        mode="open" if rate else "closed",
        concurrency=concurrency,
        target_rate=rate,
        seconds=seconds,
        ok=ok,
        errors=errors,
        rps=ok / seconds,
        p50_ms=round(float(pct[0]), 3),
        p90_ms=round(float(pct[1]), 3),
        p99_ms=round(float(pct[2]), 3),
        p999_ms=round(float(pct[3]), 3),
        max_ms=round(float(lat_ms.max()) if ok else 0.0, 3),
        statuses={str(s): n for s, n in sorted(statuses.items())},
        loadgen_cpu=round(cpu / wall, 3),
    )


def measure(url: str, requests: Sequence[bytes], **kwargs: Any) -> LoadResult:
    """:func:`run` on a fresh uvloop event loop in this process (blocks)."""
    try:
        import uvloop

        return uvloop.run(run(url, requests, **kwargs))
    except ImportError:
        return asyncio.run(run(url, requests, **kwargs))


def measure_in_subprocess(
    url: str,
    requests: Sequence[bytes],
    *,
    cpu: int | None = None,
    **kwargs: Any,
) -> LoadResult:
    """:func:`measure` in a fresh Python process (the same generator for every server, and
    its CPU use is its own).

    Args:
        url: see :func:`run`.
        requests: raw requests (written to a temporary file for the child).
        cpu: pin the generator to this CPU (``os.sched_setaffinity``), or None.
        **kwargs: :func:`run`'s keyword arguments.
    """
    with tempfile.TemporaryDirectory(prefix="strata-loadgen-") as tmp:
        req_file = os.path.join(tmp, "requests.bin")
        with open(req_file, "wb") as f:
            for r in requests:
                f.write(len(r).to_bytes(4, "little") + r)
        cmd = [sys.executable, os.path.abspath(__file__), url, "--requests-file", req_file,
               "--json", "--concurrency", str(kwargs.pop("concurrency", 32)),
               "--seconds", str(kwargs.pop("seconds", 10.0)),
               "--warmup", str(kwargs.pop("warmup_s", 2.0))]  # fmt: skip
        if kwargs.get("rate"):
            cmd += ["--rate", str(kwargs.pop("rate"))]
        if "offset_step" in kwargs:
            cmd += ["--offset-step", str(kwargs.pop("offset_step"))]
        kwargs.pop("rate", None)
        if kwargs:
            raise TypeError(f"unexpected arguments: {sorted(kwargs)}")
        if cpu is not None:
            cmd += ["--cpu", str(cpu)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"load generator failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return LoadResult(**json.loads(proc.stdout.strip().splitlines()[-1]))


def _read_requests(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        data = f.read()
    out: list[bytes] = []
    at = 0
    while at < len(data):
        n = int.from_bytes(data[at : at + 4], "little")
        out.append(data[at + 4 : at + 4 + n])
        at += 4 + n
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("url", help="URL to GET (or the server, with --requests-file)")
    ap.add_argument("--concurrency", "-c", type=int, default=32)
    ap.add_argument("--seconds", "-d", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--rate", type=float, default=None, help="requests/s (open loop)")
    ap.add_argument("-H", "--header", action="append", default=[], help="'Name: value'")
    ap.add_argument("--requests-file", help="length-prefixed raw requests (internal)")
    ap.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    ap.add_argument("--json", action="store_true", help="print only the JSON result")
    ap.add_argument("--offset-step", type=int, default=7919, help="first request of connection i")
    args = ap.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    if args.requests_file:
        requests = _read_requests(args.requests_file)
    else:
        headers = [tuple(h.split(":", 1)) for h in args.header]
        requests = [build_request(args.url, headers=[(k.strip(), v.strip()) for k, v in headers])]
    result = measure(
        args.url,
        requests,
        concurrency=args.concurrency,
        seconds=args.seconds,
        warmup_s=args.warmup,
        rate=args.rate,
        offset_step=args.offset_step,
    )
    if not args.json:
        for k, v in result.to_dict().items():
            print(f"{k:>12}: {v}")
    print(json.dumps(result.to_dict()))


if __name__ == "__main__":
    main()
