"""`strata keys create` then `strata serve` as the operator runs them: real subprocesses, a
keyed curl-style lookup, and Ctrl-C (SIGINT) stops the server cleanly with exit status 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from strata.io.redis_server import free_port
from tests.conftest import TEST_KEY
from tests.support import publish_raw_users

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

STRATA = str(Path(sys.executable).with_name("strata"))
RAW_IDS = [str(10_000_001 + i) for i in range(50)]


def _get(url: str, key: str | None) -> tuple[int, dict[str, object]]:
    """``(status, JSON body)``; a non-JSON body (Serve's own proxy while the app deploys)
    comes back as ``{"text": ...}``."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw or b"{}")
    except ValueError:
        return status, {"text": raw.decode(errors="replace")}


#: run argv[1:] with SIGINT and SIGQUIT at their defaults. A child inherits ignored signals,
#: and the test process has them ignored while any thread is inside system(3) (seen here: a
#: `serve run` started then had SigIgn 0x1001006 and never saw the Ctrl-C); an operator's
#: shell never starts it that way
_DEFAULT_SIGINT_THEN_EXEC = (
    "import os, signal, sys; "
    "signal.signal(signal.SIGINT, signal.SIG_DFL); signal.signal(signal.SIGQUIT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


class _Foreground:
    """A foreground command (``strata serve``, ``serve run``, ``strata demo``) in its own
    session: its output is collected by a thread, ``interrupt`` is Ctrl-C, and leaving the
    ``with`` block kills whatever still runs."""

    def __init__(
        self, args: list[str], env: dict[str, str], ready_marker: str = "Ctrl-C stops"
    ) -> None:
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._marker = ready_marker
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _DEFAULT_SIGINT_THEN_EXEC, *args],
            env=env,
            cwd=Path(__file__).parents[2],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if self._marker in line:
                self.ready.set()

    def tail(self, n: int = 40) -> str:
        return "".join(self.lines[-n:])

    def _signal_state(self) -> str:
        """The process's blocked/ignored/caught signal masks (why a SIGINT went unanswered)."""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
        except OSError:
            return "no /proc entry"
        return ", ".join(line for line in status if line.startswith(("State", "Sig")))

    def interrupt(self, timeout_s: float = 90) -> int:
        """Send SIGINT (what Ctrl-C sends); the exit status once the command has ended."""
        self.proc.send_signal(signal.SIGINT)
        try:
            rc = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"still running {timeout_s:.0f} s after SIGINT ({self._signal_state()}):\n"
                + self.tail()
            ) from None
        self._reader.join(10)
        return rc

    def __enter__(self) -> _Foreground:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def test_keys_create_then_serve_until_ctrl_c(tmp_path: Path, redis_url: str) -> None:
    data = tmp_path / "data"
    env = {
        **os.environ,
        "STRATA_REDIS_URL": redis_url,
        "STRATA_PSEUDONYM_KEY": TEST_KEY,
        "STRATA_NUM_CPUS": "2",
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "200",
    }
    env.pop("RAY_ADDRESS", None)  # its own local Ray, whatever the test session runs
    publish_raw_users(redis_url, "v1", RAW_IDS, TEST_KEY)

    # no key yet: a clear refusal, not an open API (only `strata demo` has a default key)
    refused = subprocess.run(
        [STRATA, "serve", "--data", str(data)], env=env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2 and "no API keys" in refused.stdout + refused.stderr

    created = subprocess.run(
        [STRATA, "keys", "create", "--data", str(data), "--scope", "segments:read"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    key = created.stdout.strip()
    assert key.startswith("stk_") and key not in (data / "api_keys.json").read_text()

    port = free_port()
    with _Foreground([STRATA, "serve", "--data", str(data), "--port", str(port)], env) as serve:
        assert serve.ready.wait(150), "strata serve did not come up:\n" + serve.tail()
        out = "".join(serve.lines)
        assert f"http://127.0.0.1:{port}/v1/users/10000001/segment" in out  # the curl line
        base = f"http://127.0.0.1:{port}"
        status, body = _get(f"{base}/v1/users/{RAW_IDS[3]}/segment", key)
        assert status == 200, body
        assert body["user_id"] == RAW_IDS[3] and body["version"] == "v1"
        assert _get(f"{base}/v1/users/{RAW_IDS[3]}/segment", None)[0] == 401
        assert _get(f"{base}/v1/users/{RAW_IDS[3]}/segment", "stk_" + "0" * 43)[0] == 401
        assert _get(f"{base}/v1/users/99999999999/segment", key)[0] == 404

        t0 = time.monotonic()
        rc = serve.interrupt()
        stop_s = time.monotonic() - t0
        assert rc == 0, serve.tail()
        assert "Traceback" not in "".join(serve.lines)
        with pytest.raises(OSError):
            urllib.request.urlopen(f"{base}/healthz", timeout=2)
        print(f"strata serve stopped {stop_s:.1f} s after SIGINT")


def test_serve_recovers_by_itself_when_its_embedded_redis_is_killed(tmp_path: Path) -> None:
    """SIGKILL the redis-server `strata serve` runs: it is reaped, logged and restarted on the
    same port with its dataset, and lookups answer 200 again within 10 s, same version."""
    from jobs._runtime import redis_session
    from strata.serving.apikeys import dump_records, new_key
    from strata.settings import Settings

    data = tmp_path / "data"
    key, record = new_key("redis-kill", ["segments:read"])
    env = {
        **os.environ,
        "STRATA_PSEUDONYM_KEY": TEST_KEY,
        "STRATA_API_KEYS": dump_records([record]),
        "STRATA_NUM_CPUS": "2",
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "200",
    }
    env.pop("RAY_ADDRESS", None)
    env.pop("STRATA_REDIS_URL", None)  # its own embedded, supervised Redis
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/users/{RAW_IDS[3]}/segment"
    with _Foreground([STRATA, "serve", "--data", str(data), "--port", str(port)], env) as serve:
        assert serve.ready.wait(150), "strata serve did not come up:\n" + serve.tail()
        # publish into the Redis serve runs, as `strata recompute` does: the session finds
        # it through its state file and saves the dataset to disk when it is done
        with redis_session(Settings(data=str(data))) as redis_url:
            publish_raw_users(redis_url, "v1", RAW_IDS, TEST_KEY)
        status, body = _get(url, key)
        assert status == 200 and body["version"] == "v1", body
        state_file = data / "redis" / "server.json"
        state = json.loads(state_file.read_text())
        assert f":{state['port']}/" in redis_url

        os.kill(state["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        seen: list[int] = []
        while time.monotonic() - killed_at < 10:
            try:
                status, body = _get(url, key)
            except OSError:
                status = 0
            seen.append(status)
            if status == 200:
                break
            time.sleep(0.1)
        back_s = time.monotonic() - killed_at
        assert status == 200, f"no 200 within 10 s of the kill: {seen}\n" + serve.tail()
        assert body["version"] == "v1" and body["user_id"] == RAW_IDS[3]
        assert not os.path.exists(f"/proc/{state['pid']}")  # reaped: no zombie left
        restarted = json.loads(state_file.read_text())
        assert restarted["port"] == state["port"] and restarted["pid"] != state["pid"]
        out = "".join(serve.lines)
        assert "killed by SIGKILL" in out and "restart 1" in out, serve.tail()
        assert serve.interrupt() == 0, serve.tail()
    print(f"200 again {back_s:.1f} s after SIGKILL of redis-server; statuses meanwhile {seen}")


def test_serve_run_with_the_config_in_configs(tmp_path: Path, redis_url: str) -> None:
    """`serve run configs/serve.yaml` (Ray's own CLI) deploys the app with the replicas'
    settings from STRATA_* and the fast configuration from api.deployment's variables."""
    import yaml

    from api.deployment import isolated_serve_env
    from strata.serving.apikeys import dump_records, new_key

    publish_raw_users(redis_url, "v1", RAW_IDS, TEST_KEY)
    key, record = new_key("serve-run", ["segments:read"])
    config = yaml.safe_load((Path(__file__).parents[2] / "configs" / "serve.yaml").read_text())
    port = free_port()
    config["http_options"].update(host="127.0.0.1", port=port)
    config["applications"][0]["args"]["num_replicas"] = "1"  # 2 cores: the test session's Ray
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        **isolated_serve_env(),
        "STRATA_REDIS_URL": redis_url,
        "STRATA_PSEUDONYM_KEY": TEST_KEY,
        "STRATA_API_KEYS": dump_records([record]),
        "STRATA_DATA": str(tmp_path / "data"),
        "PYTHONUNBUFFERED": "1",
    }
    # a new local Ray, never a cluster another process left registered on this machine
    env["RAY_ADDRESS"] = "local"
    serve_cli = str(Path(sys.executable).with_name("serve"))
    with _Foreground([serve_cli, "run", str(path)], env) as run:
        url = f"http://127.0.0.1:{port}/v1/users/{RAW_IDS[7]}/segment"
        deadline = time.monotonic() + 150
        status, body = 0, dict[str, object]()
        while time.monotonic() < deadline and run.proc.poll() is None:
            try:
                status, body = _get(url, key)
            except OSError:
                status = 0
            if status == 200:
                break
            time.sleep(0.5)
        assert status == 200, f"no answer from `serve run` ({status}):\n" + run.tail()
        assert body["user_id"] == RAW_IDS[7] and body["version"] == "v1"
        assert _get(url, None)[0] == 401
        assert run.interrupt() == 0, run.tail()


def test_demo_ends_serving_with_a_working_curl_line(tmp_path: Path) -> None:
    """`strata demo` (what `make demo` runs), small: it ends with the API up and the real-time
    loop running; the curl line it prints answers that user's segment, and the add-to-cart
    curl (timestamped 31 minutes ago), run as printed, puts the cart_abandoned coupon in the
    user's actions at once."""
    import shlex

    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "300", "STRATA_NUM_CPUS": "2"}
    env.pop("RAY_ADDRESS", None)
    env.pop("STRATA_REDIS_URL", None)  # the demo's own embedded Redis
    cmd = [STRATA, "demo", "--data", str(tmp_path / "data"), "--users", "300", "--days", "14"]
    with _Foreground([*cmd, "--port", str(port)], env) as demo:
        assert demo.ready.wait(200), "the demo did not reach serving:\n" + demo.tail()
        curls = [line.strip() for line in demo.lines if line.startswith("curl ")]
        (curl,) = [c for c in curls if c.endswith("/segment")]
        words = shlex.split(curl)
        header = words[words.index("-H") + 1]
        key = header.removeprefix("Authorization: Bearer ")
        url = words[-1]
        assert header.startswith("Authorization: Bearer ") and url.startswith(
            f"http://127.0.0.1:{port}/v1/users/"
        )
        status, body = _get(url, key)
        assert status == 200, body
        assert body["found"] is True and body["tier"] and body["version"]
        (post,) = [c for c in curls if "/v1/events" in c]
        out = subprocess.run(["bash", "-c", post], capture_output=True, text=True, timeout=30)
        assert json.loads(out.stdout) == {"accepted": 1, "duplicates": 0}, out
        actions_url = url.removesuffix("/segment") + "/actions"
        deadline = time.monotonic() + 60
        actions: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not actions:
            status, got = _get(actions_url, key)
            assert status == 200, got
            actions = got["actions"]
            time.sleep(0.5)
        coupon = next(a for a in actions if a["action"] == "coupon")
        assert coupon["rule"] == "cart_abandoned" and coupon["params"]["category"] == "fruit"
        assert demo.interrupt() == 0, demo.tail()
