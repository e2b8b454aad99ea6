"""A production-shaped cluster on loopback: MongoDB and Chroma as their own server processes,
and any number of `mnemo run` workers (subprocesses configured by environment only) behind them.

MongoDB is SecantusDB run as a daemon (`python -m secantus`), which speaks the real wire protocol:
standalone by default, or (standalone=False) advertised as a single-node replica set, which has
change streams; set MNEMO_TEST_MONGODB_URI to use a real mongod instead. Chroma is the chromadb
package's own server (`chroma run`). Used by tests/test_deploy.py and bench/load.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll `check()` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def http_post_json(url: str, body: Any, headers: dict[str, str] | None = None, timeout: float = 10) -> int:
    data = json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


class Daemon:
    """A server subprocess with its output in a log file."""

    def __init__(self, name: str, argv: list[str], port: int, log_dir: Path, env: dict[str, str] | None = None):
        self.name = name
        self.port = port
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - open while the daemon runs
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, env=env or os.environ.copy(), cwd=str(log_dir)
        )

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_path.read_text(errors='replace')[-2000:]}")
            return port_open(self.port)

        wait_for(ready, timeout, f"{self.name} on port {self.port}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


class StoreServers:
    """MongoDB (SecantusDB daemon, or MNEMO_TEST_MONGODB_URI) and a Chroma server."""

    def __init__(self, root: Path, standalone: bool = True) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.daemons: list[Daemon] = []
        self.mongo_uri = os.environ.get("MNEMO_TEST_MONGODB_URI", "")
        if not self.mongo_uri:
            port = free_port()
            self.daemons.append(
                Daemon(
                    "secantus",
                    [sys.executable, "-m", "secantus", *(["--standalone"] if standalone else []),
                     "--host", "127.0.0.1", "--port", str(port),
                     "--storage-path", str(root / "mongo"), "--log-level", "WARNING"],
                    port, root,
                )
            )
            self.mongo_uri = f"mongodb://127.0.0.1:{port}/?directConnection=true"
        chroma_port = free_port()
        chroma = shutil.which("chroma", path=str(BIN)) or "chroma"
        env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
        self.daemons.append(
            Daemon("chroma", [chroma, "run", "--path", str(root / "chroma"), "--host", "127.0.0.1",
                              "--port", str(chroma_port)], chroma_port, root, env)
        )
        self.chroma_url = f"http://127.0.0.1:{chroma_port}"
        for daemon in self.daemons:
            daemon.wait_ready()
        wait_for(lambda: http_get(f"{self.chroma_url}/api/v2/heartbeat")[0] == 200, 30, "chroma heartbeat")

    def daemon(self, name: str) -> Daemon:
        return next(d for d in self.daemons if d.name == name)

    def stop(self) -> None:
        for daemon in reversed(self.daemons):
            daemon.stop()


def worker_env(stores: StoreServers, data_dir: Path, db_name: str, **extra: str) -> dict[str, str]:
    """Environment of one `mnemo run` worker: the shared stores plus `extra` (platform, model)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MNEMO_", "TELEGRAM_", "DISCORD_", "SLACK_"))}
    env.update(
        {
            "MNEMO_DATA_DIR": str(data_dir),
            "MONGODB_URI": stores.mongo_uri,
            "MNEMO_MONGODB_DB": db_name,
            "CHROMA_URL": stores.chroma_url,
            "MNEMO_HTTP_HOST": "127.0.0.1",
            "MNEMO_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "ANONYMIZED_TELEMETRY": "False",
        }
    )
    env.update(extra)
    return env


class Worker:
    """One `mnemo run` process on its own HTTP port; stderr (JSON logs) goes to a file."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path, port: int | None = None) -> None:
        self.name = name
        self.port = port or free_port()
        self.env = {**env, "MNEMO_HTTP_PORT": str(self.port)}
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Worker:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - open while the worker runs
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "run"], stdout=self._log, stderr=subprocess.STDOUT,
            env=self.env, cwd=str(REPO),
        )
        return self

    def wait_healthy(self, timeout: float = 120) -> None:
        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited {self.proc.returncode}: {self.logs()[-3000:]}")
            try:
                return http_get(f"{self.url}/healthz", timeout=2)[0] == 200
            except OSError:
                return False

        wait_for(healthy, timeout, f"worker {self.name} /healthz")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when a host dies."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        if self._log and not self._log.closed:
            self._log.close()
        return code

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.terminate()
            try:
                self.wait(40)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._log and not self._log.closed:
            self._log.close()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics(self) -> str:
        status, body = http_get(f"{self.url}/metrics")
        assert status == 200, status
        return body
