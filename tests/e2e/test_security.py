"""Security of the pipeline's edges, with the real roles as child processes.

* Only rq's JSON serializer is accepted: a job pickled with rq's default serializer is
  refused by the worker and the writer, and neither the job function nor the pickle's own
  payload runs.
* A job payload cannot point the roles elsewhere: an unknown run id fails the job cleanly;
  a finalize job naming a file the run does not own (``../../etc/passwd``, an absolute path)
  is refused with a SecurityError; nothing outside the run is touched.
* Redis credentials work end to end: a password-protected Redis, an ACL user limited to
  narrator's and rq's keys, and TLS (``rediss://`` with ``ssl_ca_certs``; the bundled
  redis-server has no TLS, so a TLS proxy in front of it terminates the connections). Wrong
  credentials give a one-line error and exit code 2.
* Secrets never leak: with a VLM API key and a Redis password, nothing in the state
  directory, the child processes' argv, ``narrator status``, the HTML report, the dataset
  or Redis itself holds either secret.

``narrator annotate --serve`` never goes through a shell: tests/test_serve.py runs it with
hostile arguments and checks they stay literal.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from narrator.common import keys
from narrator.common.job_specs import ModuleJob
from narrator.common.prompts import load_prompts
from narrator.common.queueing import (
    MODULE_JOB,
    JobOptions,
    enqueue_finalize_job,
    enqueue_module_jobs,
    module_job_data,
    module_queue,
)
from narrator.inspection.dataset_check import check_annotated_dataset
from narrator.local.redis_server import LocalRedis, free_port
from narrator.local.run import annotate
from narrator.producer.enqueue import enqueue_run
from narrator.samples.dataset import make_sample_dataset
from narrator.simulator.config import DEFAULT_MODEL, SimConfig
from narrator.simulator.fleet import Fleet
from tests.support.pipeline_support import file_hashes, pipeline_config
from tests.support.processes import wait_until

API_KEY = "sk-secret-narrator-test-0123456789abcdef"
# The replicas, like ``vllm serve --api-key``, answer only requests bearing API_KEY.
pytestmark = [pytest.mark.timeout(180), pytest.mark.fleet(2, SimConfig(api_key=API_KEY))]
REDIS_PASSWORD = "redis-pw-7f3c9e2a51d84b06"
ACL_PASSWORD = "acl-pw-c41d7be9035f"

# A self-signed certificate for 127.0.0.1 (valid 2000-2100) and its key, test use only.
TEST_CERT = """-----BEGIN CERTIFICATE-----
MIIBejCCASGgAwIBAgIBATAKBggqhkjOPQQDAjAeMRwwGgYDVQQDDBNuYXJyYXRv
ci10ZXN0LXJlZGlzMCAXDTAwMDEwMTAwMDAwMFoYDzIxMDAwMTAxMDAwMDAwWjAe
MRwwGgYDVQQDDBNuYXJyYXRvci10ZXN0LXJlZGlzMFkwEwYHKoZIzj0CAQYIKoZI
zj0DAQcDQgAEsav7kmwe0J2jBc9aXOLkjf1XgqDBhc//BWd3az8Ph/8vPF1IjqUz
DB4blWgAAel6EPBMtNZEr8SGsTqTk2/0WaNOMEwwDwYDVR0TAQH/BAUwAwEB/zAa
BgNVHREEEzARhwR/AAABgglsb2NhbGhvc3QwHQYDVR0OBBYEFPyhf9LbLqgUzCcJ
SmaHnTE9iC2pMAoGCCqGSM49BAMCA0cAMEQCIHDGpPhwG8e1QYstpy8PUOsJJivG
sgKI2ZhjWBzlqw2gAiB5Wxgk9LTgmrqa7rM3hCaESS+QpCvXCKF1Cle6sTQx3g==
-----END CERTIFICATE-----
"""
TEST_KEY = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgNucYv4s1vVCTrMEn
Gj1HSAEW6WLjQMnq2xRISN2SEFmhRANCAASxq/uSbB7QnaMFz1pc4uSN/VeCoMGF
z/8FZ3drPw+H/y88XUiOpTMMHhuVaAAB6XoQ8Ey01kSvxIaxOpOTb/RZ
-----END PRIVATE KEY-----
"""


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sample_dataset(
        tmp_path_factory.mktemp("sec") / "original",
        episodes=3,
        cameras=1,
        episodes_per_file=2,
        min_length=20,
        max_length=30,
    )


@pytest.fixture
def secured_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    server = LocalRedis(tmp_path / "redis", password=REDIS_PASSWORD).start()
    yield server
    server.stop()


def _copy(small: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(small, tmp_path / "dataset"))


def _config(fleet: Fleet, redis_url: str, state: Path) -> Any:
    vlm = {"urls": fleet.urls, "api_key": API_KEY, "backoff_base_s": 0.05, "backoff_max_s": 0.5}
    return pipeline_config(fleet.urls, redis_url=redis_url, state_dir=state, vlm=vlm)


_ONE_PROCESS = {"worker": ["--workers", "1", "--jobs-per-worker", "1"], "writer": []}


def _role_env(redis_url: str, vlm_url: str = "http://127.0.0.1:9") -> dict[str, str]:
    return {
        **os.environ,
        "NARRATOR_REDIS_URL": redis_url,
        "NARRATOR_VLM_URLS": vlm_url,
        "NARRATOR_LOG_FORMAT": "json",
    }


def _narrator(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "narrator", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )


def _failure_reason(conn: redis.Redis, job_id: str) -> str:
    job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
    result = job.latest_result()
    assert result is not None and result.exc_string, job_id
    return str(result.exc_string).strip().splitlines()[-1]


# --- only JSON job payloads ------------------------------------------------------------


class _TouchOnUnpickle:
    """Unpickling this object creates ``path``: what a hostile pickle would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return (Path.touch, (self.path,))


@pytest.mark.parametrize("role", ["worker", "writer"])
def test_pickled_job_is_refused_not_executed(role: str, redis_url: str, tmp_path: Path) -> None:
    conn = redis.Redis.from_url(redis_url)
    queue_name = keys.MODULE_QUEUE if role == "worker" else keys.WRITER_QUEUE
    ran, unpickled = tmp_path / "job-function-ran", tmp_path / "payload-unpickled"
    # rq's default serializer is pickle: this is what an attacker with Redis access can push.
    hostile = Queue(queue_name, connection=conn)
    hostile.enqueue("pathlib.Path.touch", ran, _TouchOnUnpickle(unpickled), job_id="hostile")
    assert pickle.loads(pickle.dumps(_TouchOnUnpickle(tmp_path / "probe"))) is None
    assert (tmp_path / "probe").exists()  # the payload does act when unpickled
    # A well-formed job behind it: the role refuses one job and goes on with the next.
    Queue(queue_name, connection=conn, serializer=JSONSerializer).enqueue_call(
        MODULE_JOB if role == "worker" else "narrator.writer.finalize.finalize_file",
        args=("nope", "plan", 0, "x") if role == "worker" else ("nope", "data/x.parquet", "g"),
        job_id="well-formed",
    )
    proc = _narrator([role, "--burst", *_ONE_PROCESS[role]], _role_env(redis_url))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not ran.exists() and not unpickled.exists()
    failed = FailedJobRegistry(queue_name, connection=conn, serializer=JSONSerializer)
    assert set(failed.get_job_ids()) == {"hostile", "well-formed"}
    assert "DeserializationError" in proc.stderr
    assert "no run 'nope'" in _failure_reason(conn, "well-formed")


# --- payloads cannot name other runs or paths ---------------------------------------------


def test_module_job_of_an_unknown_run_fails_cleanly_without_retries(
    redis_url: str, tmp_path: Path
) -> None:
    conn = redis.Redis.from_url(redis_url)
    enqueue_module_jobs(
        conn,
        [
            module_job_data(
                ModuleJob("0123456789ab", "plan", 0, "f" * 16), JobOptions(job_retries=3)
            )
        ],
    )
    job_id = keys.job_id("0123456789ab", "plan", 0, "f" * 16)
    proc = _narrator(["worker", "--burst", *_ONE_PROCESS["worker"]], _role_env(redis_url))
    assert proc.returncode == 0, proc.stderr[-3000:]
    failed = FailedJobRegistry(keys.MODULE_QUEUE, connection=conn, serializer=JSONSerializer)
    assert failed.get_job_ids() == [job_id]
    reason = _failure_reason(conn, job_id)
    assert "UnknownRunError" in reason and "no run '0123456789ab'" in reason
    job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
    assert job.retries_left == 0  # permanent: not retried
    assert len(module_queue(conn)) == 0


@pytest.mark.parametrize(
    "data_file",
    ["../../etc/passwd", "/etc/passwd", "data/../meta/info.json", "data/chunk-000/../../x"],
)
def test_finalize_job_naming_a_file_outside_the_run_is_refused(
    data_file: str, small: Path, redis_url: str, tmp_path: Path
) -> None:
    conn = redis.Redis.from_url(redis_url)
    root = _copy(small, tmp_path)
    before = file_hashes(root)
    settings = pipeline_config([], redis_url=redis_url, state_dir=tmp_path / "state").annotation
    summary = enqueue_run(
        conn,
        root,
        settings=settings,
        prompts=load_prompts(),
        model=DEFAULT_MODEL,
        staging_dir=tmp_path / "state" / "staging",
    )
    job = enqueue_finalize_job(conn, summary.run_id, data_file, summary.generation)
    proc = _narrator(["writer", "--burst"], _role_env(redis_url))
    assert proc.returncode == 0, proc.stderr[-3000:]
    reason = _failure_reason(conn, job.id)
    assert "SecurityError" in reason and repr(data_file) in reason, reason
    assert Job.fetch(job.id, connection=conn, serializer=JSONSerializer).retries_left == 0
    assert file_hashes(root) == before
    assert not (tmp_path / "state" / "staging").exists()  # nothing was staged at all


# --- Redis credentials end to end, and no secret anywhere ---------------------------------


def _secrets_in(text: str) -> list[str]:
    return [s for s in (API_KEY, REDIS_PASSWORD, ACL_PASSWORD) if s in text]


def _files_holding_secrets(directory: Path) -> list[str]:
    found = []
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if any(s.encode() in data for s in (API_KEY, REDIS_PASSWORD, ACL_PASSWORD)):
                found.append(str(path))
    return found


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _redis_values(conn: redis.Redis) -> str:
    """Every key and value stored in Redis (strings, hashes, lists, sets, sorted sets)."""
    client: Any = conn
    parts: list[str] = []
    for key in client.scan_iter(count=1000):
        kind = _text(client.type(key))
        values: list[Any] = []
        if kind == "string":
            values = [client.get(key)]
        elif kind == "hash":
            values = [*client.hkeys(key), *client.hvals(key)]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "set":
            values = list(client.smembers(key))
        elif kind == "zset":
            values = client.zrange(key, 0, -1)
        parts += [_text(key), *(_text(v) for v in values)]
    return "\n".join(parts)


@pytest.mark.slow
def test_password_redis_and_api_key_work_and_never_leak(
    small: Path, fleet: Fleet, secured_redis: LocalRedis, tmp_path: Path
) -> None:
    root = _copy(small, tmp_path)
    state = tmp_path / "state"
    env = {
        **os.environ,
        "NARRATOR_REDIS_URL": secured_redis.url,
        "NARRATOR_VLM_API_KEY": API_KEY,
        "NARRATOR_LOG_LEVEL": "debug",  # the most talkative the roles can be
        "NARRATOR_LOG_FORMAT": "json",
    }
    cmd = [sys.executable, "-m", "narrator", "annotate", str(root), "--state-dir", str(state)]
    for url in fleet.urls:
        cmd += ["--vlm-url", url]
    proc = subprocess.Popen(
        [*cmd, "--workers", "1", "--no-progress"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    argvs: list[str] = []

    def children_argv() -> bool:
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                argvs.append(" ".join(child.cmdline()))
            except psutil.Error:
                continue
        return len(argvs) >= 2 or proc.poll() is not None

    wait_until(children_argv, 60, "annotate started no child processes")
    out, err = proc.communicate(timeout=150)
    assert proc.returncode == 0, err[-3000:]
    assert check_annotated_dataset(root).errors == 0
    # The replicas answer only requests bearing the key: the run's success shows it was sent.
    status = _narrator(["status"], env)
    assert status.returncode == 0 and "state: done" in status.stdout, status.stderr
    report = _narrator(["report", str(root), "--out", str(state / "report.html")], env)
    assert report.returncode == 0, report.stderr[-2000:]

    assert any("worker" in a for a in argvs) and any("writer" in a for a in argvs), argvs
    assert _secrets_in("\n".join(argvs)) == []
    assert _secrets_in(out + err) == []
    assert _secrets_in(status.stdout + status.stderr) == []
    assert _secrets_in(report.stdout + report.stderr) == []
    assert (state / "report.html").stat().st_size > 0
    assert _files_holding_secrets(state) == []
    assert _files_holding_secrets(root) == []
    conn = redis.Redis.from_url(secured_redis.url)
    assert _secrets_in(_redis_values(conn)) == []


def test_wrong_redis_password_is_a_clear_error(
    small: Path, fleet: Fleet, secured_redis: LocalRedis, tmp_path: Path
) -> None:
    wrong = f"redis://:not-the-password@127.0.0.1:{secured_redis.port}/0"
    env = {**_role_env(wrong, fleet.urls[0]), "NARRATOR_VLM_API_KEY": API_KEY}
    status = _narrator(["status"], env)
    assert status.returncode == 2
    assert status.stderr.startswith("narrator: Redis refused the credentials"), status.stderr
    assert "Traceback" not in status.stderr
    root = _copy(small, tmp_path)
    state = tmp_path / "state"
    run = _narrator(["annotate", str(root), "--state-dir", str(state), "--no-progress"], env)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Redis refused the credentials" in run.stderr and "Traceback" not in run.stderr
    assert not (state / "logs").exists(), "annotate started roles with a Redis it cannot use"
    assert "not-the-password" not in status.stderr + run.stderr


@pytest.mark.slow
def test_acl_user_limited_to_narrator_keys_runs_the_pipeline(
    small: Path, fleet: Fleet, secured_redis: LocalRedis, tmp_path: Path
) -> None:
    admin = redis.Redis.from_url(secured_redis.url)
    # Only narrator's and rq's keys and channels; every command (rq needs Lua, pub/sub...).
    admin.acl_setuser(
        "narrator",
        enabled=True,
        passwords=[f"+{ACL_PASSWORD}"],
        keys=["narrator:*", "rq:*"],
        channels=["*"],
        commands=["+@all"],
    )
    admin.set("other-app:secret", "x")
    url = f"redis://narrator:{ACL_PASSWORD}@127.0.0.1:{secured_redis.port}/0"
    user = redis.Redis.from_url(url)
    with pytest.raises(redis.exceptions.NoPermissionError):
        user.get("other-app:secret")  # the limits are real
    root = _copy(small, tmp_path)
    result = annotate(_config(fleet, url, tmp_path / "state"), root, progress=False)
    assert result.exit_code == 0
    assert check_annotated_dataset(root).errors == 0
    wrong = _narrator(
        ["status"], _role_env(f"redis://narrator:nope@127.0.0.1:{secured_redis.port}/0")
    )
    assert wrong.returncode == 2 and "Redis refused the credentials" in wrong.stderr


# --- TLS ------------------------------------------------------------------------------------


class TLSProxy:
    """Terminates TLS on a local port and relays each connection to a plain Redis."""

    def __init__(self, target_port: int, cert: Path, key: Path) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.loop = asyncio.new_event_loop()
        self.connections = 0
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._relay(reader, up_writer), self._relay(up_reader, writer))

    def __enter__(self) -> TLSProxy:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self.context),
            self.loop,
        )
        self.server = started.result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@pytest.mark.slow
def test_tls_redis_through_a_rediss_url(
    small: Path, fleet: Fleet, secured_redis: LocalRedis, tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text(TEST_CERT)
    key.write_text(TEST_KEY)
    with TLSProxy(secured_redis.port, cert, key) as proxy:
        base = f"rediss://:{REDIS_PASSWORD}@127.0.0.1:{proxy.port}/0"
        url = f"{base}?ssl_ca_certs={cert}"
        root = _copy(small, tmp_path)
        result = annotate(_config(fleet, url, tmp_path / "state"), root, progress=False)
        assert result.exit_code == 0
        assert check_annotated_dataset(root).errors == 0
        assert proxy.connections >= 4  # producer, status, worker and writer all went through it
        # Without the CA the certificate is refused: a clear error, no traceback.
        untrusted = _narrator(["status"], _role_env(base))
        assert untrusted.returncode == 2
        assert "cannot reach Redis" in untrusted.stderr and "certificate verify failed" in (
            untrusted.stderr
        )
        assert REDIS_PASSWORD not in untrusted.stderr
