"""Every subcommand, run as a real process with bad flags: exit 2, exactly one line on stderr
that says what is wrong, no traceback, and nothing started (no state directory, no files).

The table is the contract: add a row when a command gets a flag.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from narrator.local.redis_server import free_port
from narrator.samples.dataset import make_sample_dataset
from tests.support.processes import REPO_ROOT

pytestmark = pytest.mark.timeout(300)

DEAD = "http://127.0.0.1:9"  # a VLM URL: nothing listens on the discard port
A = "{root} --vlm-url " + DEAD + " "  # annotate's arguments before the bad one
R = "redis://127.0.0.1:"
# {root} a sample dataset, {http} a port that answers HTTP, {free} a port nobody listens on,
# {tmp} a scratch directory, {precious} a directory holding a user's file.
BAD: list[tuple[str, str, str]] = [
    # annotate: values the config model refuses, before any work
    ("annotate", A + "--vqa-hz inf", "--vqa-hz / NARRATOR_ANNOTATION__VQA__VQA_HZ"),
    ("annotate", A + "--vqa-hz 1e9", "less than or equal to 60"),
    ("annotate", A + "--vqa-hz nan", "finite number"),
    ("annotate", A + "--vqa-hz fast", "valid number"),
    ("annotate", A + "--modules ,", "give at least one module"),
    ("annotate", A + "--modules plan,motion", "unknown modules"),
    ("annotate", A + "--modules interjections", "needs the plan module"),
    ("annotate", A + "--redis-url notaurl", "must start with redis://"),
    ("annotate", A + "--redis-url " + R + "{http}/0", "Redis"),
    ("annotate", A + "--redis-url " + R + "99999/0", "Port out of range"),
    ("annotate", A + "--redis-url " + R + "{free}/0", "cannot reach Redis"),
    ("annotate", A + "--workers 0", "--workers / NARRATOR_WORKERS"),
    ("annotate", A + "--workers two", "valid integer"),
    ("annotate", A + "--jobs-per-worker 65", "less than or equal to 64"),
    ("annotate", A + "--max-pixels 10", "--max-pixels"),
    ("annotate", A + "--temperature -1", "--temperature"),
    ("annotate", A + "--question-types bbox,colour", "question types"),
    ("annotate", A + "--chat-template-kwargs {{bad", "not valid JSON"),
    ("annotate", A + "--chat-template-kwargs [1]", "JSON object"),
    ("annotate", A + "--log-level loud", "debug, info, warning, error"),
    ("annotate", A + "--log-format xml", "invalid choice"),
    ("annotate", A + "--progress-interval-s 0", "greater than 0"),
    ("annotate", A + "--prompt-dir {tmp}/none", "does not exist"),
    ("annotate", A + "--no-such-flag", "unrecognized arguments"),
    ("annotate", "{root} --serve 'vllm serve m' --replicas 0", "--replicas / NARRATOR_SERVE__"),
    ("annotate", "{root} --serve 'vllm serve m' --serve-port 0", "--serve-port"),
    ("annotate", "{root} --serve 'vllm serve m' --gpus-per-replica 0", "--gpus-per-replica"),
    ("annotate", "{root} --serve 'vllm serve m' --serve-ready-timeout 0", "greater than 0"),
    ("annotate", "{root}", "give --vlm-url"),
    ("annotate", "--vlm-url " + DEAD, "give the dataset ROOT, or --repo-id USER/NAME"),
    ("annotate", A + "--only-episodes 3,x", "'x' is not an episode index or range"),
    ("annotate", A + "--only-episodes 0,7-9", "episode(s) 7-9 that the dataset does not have"),
    ("annotate", A + "--reasoning-effort extreme", "invalid choice"),
    ("annotate", A + "--repo-id nameonly", "write it as USER/NAME"),
    ("annotate", A + "--push-to-hub", "--push-to-hub needs a target"),
    ("annotate", A + "--push-to-hub=a/b/c", "write it as USER/NAME"),
    ("annotate", "{tmp}/no-dataset --vlm-url " + DEAD, "is not a directory"),
    # the roles
    ("enqueue", "{root} --vlm-url " + DEAD, "needs --redis-url"),
    ("enqueue", "{root} --redis-url notaurl --model m", "must start with redis://"),
    ("enqueue", "{root} --redis-url " + R + "{http}/0 --model m", "Redis"),
    ("worker", "--vlm-url " + DEAD, "needs --redis-url"),
    ("worker", "--redis-url " + R + "{free}/0", "needs --vlm-url"),
    ("worker", "--redis-url " + R + "{http}/0 --vlm-url " + DEAD, "Redis"),
    ("worker", "--redis-url " + R + "{free}/0 --vlm-url " + DEAD + " --workers 0", "--workers"),
    ("writer", "--redis-url notaurl", "must start with redis://"),
    ("writer", "--redis-url " + R + "{free}/0 --metrics-port 70000", "--metrics-port"),
    ("writer", "--redis-url " + R + "{http}/0", "Redis"),
    # status and retry-failed
    ("status", "", "give the dataset ROOT"),
    ("status", "{root}", "no narrator state"),
    ("status", "--redis-url " + R + "{free}/0", "cannot reach Redis"),
    ("status", "--redis-url " + R + "{http}/0", "Redis"),
    ("status", "not/a/run", "neither a dataset directory nor a run id"),
    ("retry-failed", "", "the following arguments are required"),
    ("retry-failed", "abc123 --redis-url " + R + "{free}/0", "cannot reach Redis"),
    # tools
    ("demo", "--episodes 0 --out {tmp}/demo", "--episodes must be at least 1"),
    ("demo", "--cameras 5 --out {tmp}/demo", "--cameras must be 0, 1 or 2"),
    ("demo", "--workers 0 --out {tmp}/demo", "--workers must be at least 1"),
    ("demo", "--out {precious}", "refusing to delete it"),
    ("sample-dataset", "{tmp}/s --episodes 0", "--episodes must be at least 1"),
    ("sample-dataset", "{tmp}/s --cameras 9", "--cameras must be 0-4"),
    ("sample-dataset", "{tmp}/s --width 7", "frame size"),
    ("sample-dataset", "{tmp}/s --min-length 50 --max-length 10", "shorter than --min-length"),
    ("sample-dataset", "{precious}", "not an empty directory"),
    ("validate", "{root} --show x", "invalid int value"),
    ("validate", "{tmp}/missing", "no such directory"),
    ("validate", "{precious}/thesis.txt", "not a directory"),
    ("report", "{root} --out {tmp}", "is a directory"),
    ("report", "{root} --out {tmp}/r.html --max-episodes 0", "--max-episodes must be >= 1"),
    ("report", "{root}", "the following arguments are required: --out"),
    ("render", "{root}", "the following arguments are required: --recipe"),
    ("nonsense", "", "invalid choice"),
]  # fmt: skip


@pytest.fixture(scope="module")
def http_port() -> Iterator[int]:
    """A port that answers HTTP, not Redis (a VLM or dashboard port given by mistake)."""

    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sample_dataset(
        tmp_path_factory.mktemp("bad-flags") / "ds", episodes=2, cameras=0, metadata_only=True
    )


@pytest.mark.parametrize(("command", "args", "says"), BAD, ids=[f"{c} {a}" for c, a, _ in BAD])
def test_a_bad_flag_is_one_line_and_exit_2_before_any_work(
    command: str, args: str, says: str, root: Path, http_port: int, tmp_path: Path
) -> None:
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "thesis.txt").write_text("precious")
    before = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
    import shlex

    argv = shlex.split(
        args.format(root=root, http=http_port, free=free_port(), tmp=tmp_path, precious=precious)
    )
    state = tmp_path / "state"
    if command in ("annotate", "status"):
        argv += ["--state-dir", str(state)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NARRATOR_")}
    proc = subprocess.run(
        [sys.executable, "-m", "narrator", command, *argv],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, env=env,
    )  # fmt: skip
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    assert proc.stderr.endswith("\n") and proc.stderr.count("\n") == 1, proc.stderr
    assert says in proc.stderr, proc.stderr
    assert not state.exists(), "state was created before the bad flag was refused"
    assert (precious / "thesis.txt").read_text() == "precious"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == before
