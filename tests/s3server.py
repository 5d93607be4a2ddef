"""A local S3-compatible server for the object-storage tests: moto's standalone server as a real
child process on a free loopback port (no real S3 is reachable from the tests).

pyarrow reaches it the way an operator points strata at any S3-compatible store: either the
standard AWS variables (:meth:`MotoS3Server.env`: ``AWS_ENDPOINT_URL`` and credentials, which
pyarrow's S3FileSystem reads) or a data-root URI that carries the endpoint
(:meth:`MotoS3Server.uri`: ``s3://bucket/path?endpoint_override=127.0.0.1:PORT&scheme=http``),
which Ray workers receive with the data root itself.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import urllib.request
from types import TracebackType

import pyarrow.fs as pafs

from strata.io.redis_server import free_port

#: dummy credentials: moto accepts any, the AWS SDK needs some to sign requests with
ACCESS_KEY = "strata-test"
SECRET_KEY = "strata-test-secret"
REGION = "us-east-1"


class MotoS3Server:
    """moto's S3 server on ``127.0.0.1:<free port>``; a context manager that always stops it."""

    def __init__(self, start_timeout_s: float = 30.0) -> None:
        self.port = free_port()
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        # werkzeug logs every request: to a file, never a pipe nobody drains (it would block)
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @staticmethod
    def credentials_env() -> dict[str, str]:
        """The dummy credentials and region (no instance-metadata lookups), without the
        endpoint."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point pyarrow (and boto3) at this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, **self.credentials_env()}

    def uri(self, bucket: str, path: str = "") -> str:
        """A data-root URI on this server that carries its endpoint in the query string."""
        key = f"/{path.strip('/')}" if path.strip("/") else ""
        return f"s3://{bucket}{key}?endpoint_override=127.0.0.1:{self.port}&scheme=http"

    def filesystem(self) -> pafs.S3FileSystem:
        """An S3FileSystem on this server that may create and delete buckets."""
        return pafs.S3FileSystem(
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            region=REGION,
            scheme="http",
            endpoint_override=f"127.0.0.1:{self.port}",
            allow_bucket_creation=True,
            allow_bucket_deletion=True,
        )

    def create_bucket(self, name: str) -> None:
        self.filesystem().create_dir(name)

    def start(self) -> None:
        """Start the server and wait until it answers HTTP.

        Raises:
            RuntimeError: it exited or did not answer within ``start_timeout_s``.
        """
        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self._proc = proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._log.seek(0)
                err = self._log.read().decode(errors="replace")
                raise RuntimeError(f"moto_server exited with {proc.returncode}: {err[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1):
                    return
            except (TimeoutError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto_server did not answer on port {self.port} within "
                           f"{self.start_timeout_s:.0f} s")  # fmt: skip

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        self._log.close()

    def __enter__(self) -> MotoS3Server:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
