"""``--serve``: start vLLM replicas as child processes, one per GPU group, and stop them at the end.

:meth:`ServeSpec.parse` splits the user's command (``"vllm serve MODEL [ARGS]"``) with
:mod:`shlex`; :func:`place_replicas` (pure) decides which GPUs each replica sees;
:func:`start_replicas` runs one child per replica with that argv plus ``--port BASE+i`` (and
``--host 127.0.0.1`` unless the command names a host), waits until each answers ``GET
/health`` or ``GET /v1/models`` with 200, and returns a :class:`ReplicaGroup`.

Invariants:

* No shell, ever: the argv goes to :class:`subprocess.Popen` as a list, so ``$(...)``, ``;``
  and quotes in the command stay literal arguments.
* Placement: the visible GPUs are cut, in order, into ``len(gpus) // gpus_per_replica``
  disjoint groups; replica ``i`` sees group ``i % groups`` as ``CUDA_VISIBLE_DEVICES``
  (``"0,1"`` for a tensor-parallel replica), so more replicas than groups share GPUs and no
  replica is ever pointed at a GPU that is not there. With no GPU visible (no
  ``CUDA_VISIBLE_DEVICES``, no ``nvidia-smi``) the children inherit the environment as is.
* Each child leads its own process group; :meth:`ReplicaGroup.stop` sends SIGTERM to every
  group, waits ``stop_grace_s``, then SIGKILLs what is left. It is idempotent and also runs
  when start-up fails, so no replica outlives a failed start. On Linux each replica also
  gets SIGTERM from the kernel when narrator dies without stopping it (a parent-death
  signal, narrator.common.lifecycle), so a killed narrator does not leave GPUs occupied.
* A child's output is read by a thread and re-logged line by line with ``replica=i``; the
  last lines are kept so a start-up failure can show why the child died.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shlex
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

from narrator.common.errors import ConfigError
from narrator.common.lifecycle import parent_death_preexec
from narrator.common.logging import get_logger

log = get_logger("narrator.local.serve")

DEFAULT_READY_TIMEOUT_S = 1800.0
DEFAULT_STOP_GRACE_S = 30.0
TAIL_LINES = 40


class ReplicaStartError(ConfigError):
    """A replica exited or never became ready; the message carries its last log lines."""


@dataclass(frozen=True)
class ServeSpec:
    """The command that starts one replica, as an argv (never a shell string)."""

    argv: tuple[str, ...]

    @classmethod
    def parse(cls, command: str) -> ServeSpec:
        try:
            argv = tuple(shlex.split(command))
        except ValueError as exc:
            raise ConfigError(f"--serve command {command!r} cannot be split: {exc}") from exc
        if not argv:
            raise ConfigError('--serve needs a command, e.g. --serve "vllm serve MODEL"')
        return cls(argv)

    def has_option(self, name: str) -> bool:
        return any(arg == name or arg.startswith(f"{name}=") for arg in self.argv)


def replica_argv(argv: Sequence[str], port: int, host: str) -> list[str]:
    """The argv of one replica: the user's command plus its port (and host unless given)."""
    spec = ServeSpec(tuple(argv))
    if spec.has_option("--port"):
        raise ConfigError(
            "the --serve command must not set --port: narrator gives replica i the port "
            "base_port + i (change the base port instead)"
        )
    extra = ["--port", str(port)]
    if not spec.has_option("--host"):
        extra += ["--host", host]
    return [*argv, *extra]


def detect_gpus(env: Mapping[str, str] | None = None) -> list[str]:
    """GPU ids to place replicas on: CUDA_VISIBLE_DEVICES if set, else ``nvidia-smi -L``."""
    environ = os.environ if env is None else env
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [gpu.strip() for gpu in visible.split(",") if gpu.strip()]
    try:
        listing = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]


@dataclass(frozen=True)
class Placement:
    """Which devices each replica sees: ``devices[i]`` is replica i's ``CUDA_VISIBLE_DEVICES``
    (None: left as the environment has it), and what the user should know about it."""

    devices: tuple[str | None, ...]
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        if all(d is None for d in self.devices):
            return "no GPU detected: CUDA_VISIBLE_DEVICES left as it is"
        return ", ".join(f"replica {i} on GPU {d}" for i, d in enumerate(self.devices))


def place_replicas(
    gpus: Sequence[str], replicas: int | None, gpus_per_replica: int = 1
) -> Placement:
    """Replicas on the visible ``gpus`` (see the module docstring); pure.

    ``replicas`` None means one per GPU group (at least one). Raises ConfigError when a
    replica needs more GPUs than are visible.
    """
    if gpus_per_replica < 1:
        raise ConfigError(f"--gpus-per-replica must be at least 1, got {gpus_per_replica}")
    if replicas is not None and replicas < 1:
        raise ConfigError(f"--replicas must be at least 1, got {replicas}")
    if not gpus:
        unplaced = (
            [f"no GPU detected (no CUDA_VISIBLE_DEVICES, no nvidia-smi): --gpus-per-replica "
             f"{gpus_per_replica} cannot be applied"]
            if gpus_per_replica > 1
            else []
        )  # fmt: skip
        return Placement((None,) * (replicas or 1), tuple(unplaced))
    if gpus_per_replica > len(gpus):
        raise ConfigError(
            f"--gpus-per-replica {gpus_per_replica} needs at least {gpus_per_replica} GPUs; "
            f"{len(gpus)} are visible ({','.join(gpus)}): lower it or make more GPUs visible "
            "(CUDA_VISIBLE_DEVICES)"
        )
    groups = [
        ",".join(gpus[k * gpus_per_replica : (k + 1) * gpus_per_replica])
        for k in range(len(gpus) // gpus_per_replica)
    ]
    count = replicas or len(groups)
    notes: list[str] = []
    unused = gpus[len(groups) * gpus_per_replica :]
    if unused:
        notes.append(
            f"GPU(s) {','.join(unused)} left unused: {len(gpus)} GPUs do not divide into "
            f"groups of {gpus_per_replica}"
        )
    if count > len(groups):
        notes.append(
            f"{count} replicas on {len(groups)} GPU group(s): replicas share GPUs (give each "
            "a share of the memory, e.g. --gpu-memory-utilization in the --serve command)"
        )
    return Placement(tuple(groups[i % len(groups)] for i in range(count)), tuple(notes))


@dataclass
class ChildReplica:
    index: int
    port: int
    argv: list[str]
    process: subprocess.Popen[bytes]
    host: str
    tail: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=TAIL_LINES)
    )
    reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    def last_lines(self) -> str:
        return "\n".join(self.tail) or "(no output)"


def _relay_output(child: ChildReplica, stream: IO[bytes]) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip()
        child.tail.append(line)
        log.info("replica_output", replica=child.index, line=line)
    stream.close()


# Readiness probes go straight to the replica, never through an HTTP(S)_PROXY from the env.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _answers(url: str, timeout_s: float) -> bool:
    for path in ("/health", "/v1/models"):
        try:
            with _DIRECT.open(f"{url}{path}", timeout=timeout_s) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError, ValueError):
            continue
    return False


class ReplicaGroup:
    """Running replicas; a context manager whose exit stops them."""

    def __init__(self, children: Sequence[ChildReplica], stop_grace_s: float) -> None:
        self.children = list(children)
        self.stop_grace_s = stop_grace_s
        self._stopped = False

    @property
    def urls(self) -> list[str]:
        return [child.url for child in self.children]

    def wait_ready(self, timeout_s: float, poll_s: float = 1.0) -> None:
        """Block until every replica answers; ReplicaStartError if one exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        pending = list(self.children)
        while pending:
            for child in list(pending):
                code = child.process.poll()
                if code is not None:
                    if child.reader is not None:
                        child.reader.join(2)
                    raise ReplicaStartError(
                        f"replica {child.index} ({shlex.join(child.argv)}) exited with code "
                        f"{code} before it was ready; its last output:\n{child.last_lines()}"
                    )
                if _answers(child.url, timeout_s=min(5.0, poll_s + 1)):
                    log.info("replica_ready", replica=child.index, url=child.url)
                    pending.remove(child)
            if pending and time.monotonic() >= deadline:
                first = pending[0]
                raise ReplicaStartError(
                    f"replica {first.index} did not answer {first.url}/health within "
                    f"{timeout_s:g}s (raise --serve-ready-timeout for large models); its last "
                    f"output:\n{first.last_lines()}"
                )
            if pending:
                time.sleep(poll_s)

    def stop(self) -> None:
        """SIGTERM every replica's process group, then SIGKILL after the grace period."""
        if self._stopped:
            return
        self._stopped = True
        for child in self.children:
            _signal_group(child.process, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace_s
        for child in self.children:
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("replica_ignored_sigterm_killing", replica=child.index)
        for child in self.children:
            _signal_group(child.process, signal.SIGKILL)
            child.process.wait()
            if child.reader is not None:
                child.reader.join(5)
        log.info("replicas_stopped", replicas=len(self.children))

    def __enter__(self) -> ReplicaGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def start_replicas(
    command_argv: Sequence[str],
    *,
    replicas: int,
    base_port: int,
    gpus: Sequence[str | None] | None = None,
    host: str = "127.0.0.1",
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
    stop_grace_s: float = DEFAULT_STOP_GRACE_S,
    poll_s: float = 1.0,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> ReplicaGroup:
    """Start ``replicas`` children of ``command_argv`` and wait until all are ready.

    ``gpus[i]`` is replica i's ``CUDA_VISIBLE_DEVICES`` (None: inherited; see
    :func:`place_replicas`); without ``gpus``, replica i gets device ``i``.
    """
    if replicas < 1:
        raise ConfigError("--serve needs at least one replica")
    if not command_argv:
        raise ConfigError("--serve needs a command, e.g. vllm serve MODEL")
    devices: list[str | None] = (
        list(gpus) if gpus is not None else [str(i) for i in range(replicas)]
    )
    if len(devices) < replicas:
        raise ConfigError(f"{replicas} replicas need {replicas} GPU entries, got {devices}")
    if base_port < 1 or base_port + replicas - 1 > 65535:
        raise ConfigError(f"base port {base_port} leaves no room for {replicas} replicas")
    base_env = dict(os.environ if env is None else env)
    group = ReplicaGroup([], stop_grace_s)
    try:
        for index in range(replicas):
            argv = replica_argv(command_argv, base_port + index, host)
            device = devices[index]
            child_env = dict(base_env)
            if device is not None:
                child_env["CUDA_VISIBLE_DEVICES"] = device
            try:
                process = subprocess.Popen(
                    argv,
                    env=child_env,
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=parent_death_preexec(signal.SIGTERM),
                )
            except OSError as exc:
                raise ReplicaStartError(
                    f"cannot run {argv[0]!r} for replica {index}: {exc}. Install vLLM "
                    "(pip install 'narrator[vllm]') or fix the --serve command."
                ) from exc
            child = ChildReplica(index, base_port + index, argv, process, host)
            if process.stdout is not None:
                child.reader = threading.Thread(
                    target=_relay_output,
                    args=(child, process.stdout),
                    daemon=True,
                    name=f"replica-{index}-output",
                )
                child.reader.start()
            group.children.append(child)
            log.info("replica_starting", replica=index, port=child.port, gpus=devices[index])
        group.wait_ready(ready_timeout_s, poll_s)
    except BaseException:
        group.stop()
        raise
    return group
