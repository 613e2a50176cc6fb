"""--serve replica management against a stand-in vLLM executable (tests/fake_vllm_exe.py)."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from narrator.common.errors import ConfigError
from narrator.local.serve import (
    ReplicaStartError,
    ServeSpec,
    detect_gpus,
    place_replicas,
    replica_argv,
    start_replicas,
)
from tests.support.ports import consecutive_free_ports

FAKE = str(Path(__file__).parents[1] / "support" / "fake_vllm_exe.py")
HOSTILE = ["$(touch pwned)", "; rm -rf pwned_dir", "`touch pwned2`", "a b"]


def fake_command(record: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        FAKE,
        "serve",
        "fake/model-7b",
        *HOSTILE,
        "--record",
        str(record),
        *extra,
    ]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still "exists"; read its state to tell
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_parse_splits_like_a_shell_but_keeps_everything_literal() -> None:
    spec = ServeSpec.parse(
        "vllm serve 'Qwen/Qwen2.5-VL 7B' --max-model-len 8192 \"$(touch pwned)\" '; rm -rf /'"
    )
    assert spec.argv == (
        "vllm",
        "serve",
        "Qwen/Qwen2.5-VL 7B",
        "--max-model-len",
        "8192",
        "$(touch pwned)",
        "; rm -rf /",
    )
    assert spec.has_option("--max-model-len")
    assert not spec.has_option("--port")


@pytest.mark.parametrize("command", ["", "   ", "vllm serve 'unclosed"])
def test_parse_rejects_empty_or_unbalanced_commands(command: str) -> None:
    with pytest.raises(ConfigError):
        ServeSpec.parse(command)


def test_replica_argv_appends_port_and_host_unless_given() -> None:
    assert replica_argv(["vllm", "serve", "m"], 8001, "127.0.0.1") == [
        "vllm",
        "serve",
        "m",
        "--port",
        "8001",
        "--host",
        "127.0.0.1",
    ]
    assert replica_argv(["vllm", "serve", "m", "--host=0.0.0.0"], 9000, "127.0.0.1") == [
        "vllm",
        "serve",
        "m",
        "--host=0.0.0.0",
        "--port",
        "9000",
    ]
    with pytest.raises(ConfigError, match="must not set --port"):
        replica_argv(["vllm", "serve", "m", "--port", "1"], 8000, "127.0.0.1")


def test_detect_gpus_prefers_cuda_visible_devices() -> None:
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []


def test_replicas_get_own_gpu_consecutive_ports_and_literal_argv(tmp_path: Path) -> None:
    base = consecutive_free_ports(2)
    with capture_logs() as logs:
        group = start_replicas(
            fake_command(tmp_path), replicas=2, base_port=base, cwd=tmp_path, poll_s=0.05
        )
        with group:
            assert group.urls == [f"http://127.0.0.1:{base}", f"http://127.0.0.1:{base + 1}"]
            for url in group.urls:
                with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as response:
                    assert json.load(response)["data"][0]["id"] == "fake/model-7b"
            records = [
                json.loads((tmp_path / f"replica-{base + i}.json").read_text()) for i in (0, 1)
            ]
            pids = [r["pid"] for r in records]
    for index, record in enumerate(records):
        assert record["cuda_visible_devices"] == str(index)
        assert record["argv"] == [
            "serve",
            "fake/model-7b",
            *HOSTILE,
            "--record",
            str(tmp_path),
            "--port",
            str(base + index),
            "--host",
            "127.0.0.1",
        ]
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
    assert not any(alive(pid) for pid in pids)
    assert not port_open(base) and not port_open(base + 1)
    relayed = [e for e in logs if e["event"] == "replica_output"]
    assert {e["replica"] for e in relayed} == {0, 1}
    assert any("fake vllm serving" in e["line"] for e in relayed)


def test_gpu_list_is_used_per_replica(tmp_path: Path) -> None:
    base = consecutive_free_ports(2)
    group = start_replicas(
        fake_command(tmp_path), replicas=2, base_port=base, gpus=["4,5", "6,7"], poll_s=0.05
    )
    with group:
        devices = [
            json.loads((tmp_path / f"replica-{base + i}.json").read_text())["cuda_visible_devices"]
            for i in (0, 1)
        ]
    assert devices == ["4,5", "6,7"]
    with pytest.raises(ConfigError, match="GPU entries"):
        start_replicas(fake_command(tmp_path), replicas=3, base_port=base, gpus=["0"])


def test_child_dying_at_start_fails_fast_with_its_output(tmp_path: Path) -> None:
    base = consecutive_free_ports(2)
    healthy_record = tmp_path / f"replica-{base}.json"
    command = fake_command(
        tmp_path, "--die-with", "3", "--die-port", str(base + 1), "--die-after", str(healthy_record)
    )
    started = time.monotonic()
    with pytest.raises(ReplicaStartError) as caught:
        start_replicas(command, replicas=2, base_port=base, poll_s=0.05, ready_timeout_s=60)
    assert time.monotonic() - started < 30
    message = str(caught.value)
    assert "replica 1" in message and "exited with code 3" in message
    assert "CUDA out of memory" in message
    healthy_pid = json.loads(healthy_record.read_text())["pid"]
    assert not alive(healthy_pid), "the replica that did start must be stopped too"


def test_ready_timeout_stops_the_slow_child(tmp_path: Path) -> None:
    base = consecutive_free_ports(1)
    command = fake_command(tmp_path, "--sleep-before-serve", "60")
    with pytest.raises(ReplicaStartError, match="did not answer"):
        start_replicas(command, replicas=1, base_port=base, ready_timeout_s=0.5, poll_s=0.05)
    pid = json.loads((tmp_path / f"replica-{base}.json").read_text())["pid"]
    assert not alive(pid)


def test_child_ignoring_sigterm_is_killed_after_grace(tmp_path: Path) -> None:
    base = consecutive_free_ports(1)
    command = fake_command(tmp_path, "--ignore-sigterm")
    group = start_replicas(command, replicas=1, base_port=base, stop_grace_s=0.5, poll_s=0.05)
    pid = json.loads((tmp_path / f"replica-{base}.json").read_text())["pid"]
    started = time.monotonic()
    group.stop()
    assert time.monotonic() - started >= 0.5
    assert not alive(pid)
    group.stop()  # idempotent


def test_missing_executable_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ReplicaStartError, match="cannot run"):
        start_replicas([str(tmp_path / "no-such-vllm"), "serve", "m"], replicas=1, base_port=20000)


# --- placement: which GPUs each replica sees ------------------------------------------------


def test_more_replicas_than_gpus_wrap_around_the_visible_gpus() -> None:
    placement = place_replicas(["0", "1"], 3)
    assert placement.devices == ("0", "1", "0")
    assert any("share GPUs" in note for note in placement.notes)
    assert place_replicas(["4", "7"], None).devices == ("4", "7")  # one per GPU by default


def test_gpus_per_replica_gives_each_replica_a_disjoint_group() -> None:
    assert place_replicas(["0", "1", "2", "3"], None, 2).devices == ("0,1", "2,3")
    three = place_replicas(["0", "1", "2", "3", "4"], 3, 2)
    assert three.devices == ("0,1", "2,3", "0,1")
    assert any("4 left unused" in note for note in three.notes)
    with pytest.raises(ConfigError, match="needs at least 4 GPUs; 2 are visible"):
        place_replicas(["0", "1"], None, 4)


def test_without_visible_gpus_the_environment_is_left_alone() -> None:
    assert place_replicas([], None).devices == (None,)
    placement = place_replicas([], 2, 2)
    assert placement.devices == (None, None)
    assert "cannot be applied" in placement.notes[0]


def test_placed_replicas_see_their_group_and_unplaced_ones_inherit(tmp_path: Path) -> None:
    base = consecutive_free_ports(3)
    placement = place_replicas(["0", "1"], 3)
    with start_replicas(
        fake_command(tmp_path), replicas=3, base_port=base, gpus=placement.devices, poll_s=0.05
    ):
        seen = [
            json.loads((tmp_path / f"replica-{base + i}.json").read_text())["cuda_visible_devices"]
            for i in range(3)
        ]
    assert seen == ["0", "1", "0"]
    base = consecutive_free_ports(1)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "inherited-7"}
    with start_replicas(
        fake_command(tmp_path), replicas=1, base_port=base, gpus=[None], env=env, poll_s=0.05
    ):
        record = json.loads((tmp_path / f"replica-{base}.json").read_text())
    assert record["cuda_visible_devices"] == "inherited-7"
