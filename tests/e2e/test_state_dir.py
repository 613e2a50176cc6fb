"""Where narrator keeps its state, and datasets it cannot write: checked at start.

* By default the state (embedded Redis, logs, staged shards) lives in ``ROOT/.narrator/``,
  inside the dataset: readers, the fingerprint and ``narrator validate`` ignore it.
* A dataset root that is a mount point is annotated (the staged shards are on its
  filesystem, so the commit's renames work).
* A read-only dataset, or a staging directory on another filesystem, is a one-line exit 2
  at start, before any VLM request.
* Rewritten shards and ``meta/info.json`` keep their file modes.

Mounts need a private mount namespace (:mod:`tests.support.mounts`).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from narrator.common.config import load_config
from narrator.common.dataset.reader import load_dataset_meta
from narrator.inspection.dataset_check import check_annotated_dataset
from narrator.local.run import annotate
from narrator.samples.dataset import make_sample_dataset
from narrator.simulator.fleet import Fleet
from tests.support.job_support import requests
from tests.support.mounts import mount_prefix
from tests.support.pipeline_support import file_hashes
from tests.support.processes import REPO_ROOT

pytestmark = pytest.mark.timeout(240)


def _env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NARRATOR_LOG_LEVEL": "warning"}


def _annotate_cli(
    root: Path, fleet: Fleet, *extra: str, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    argv = [
        sys.executable,
        "-m",
        "narrator",
        "annotate",
        str(root),
        "--vlm-url",
        fleet.urls[0],
        "--no-progress",
        *extra,
    ]
    return subprocess.run(
        [*prefix, *argv],
        capture_output=True,
        text=True,
        timeout=200,
        cwd=REPO_ROOT,
        env=_env(),
        check=False,
    )


@pytest.mark.slow
def test_state_lives_inside_the_dataset_and_readers_ignore_it(tmp_path: Path, fleet: Fleet) -> None:
    root = make_sample_dataset(tmp_path / "dataset", episodes=3, cameras=1, episodes_per_file=2)
    fingerprint = load_dataset_meta(root).fingerprint()
    shards = sorted((root / "data").rglob("*.parquet"))
    for shard in shards:
        shard.chmod(0o640)
    (root / "meta" / "info.json").chmod(0o600)
    config = load_config({"vlm": {"urls": fleet.urls}, "workers": 1}, env={})
    result = annotate(config, root, progress=False)
    assert result.exit_code == 0
    state = root / ".narrator"
    assert (state / "redis").is_dir() and (state / "logs" / "writer.log").is_file()
    assert not (tmp_path / ".dataset.narrator").exists()  # nothing beside the dataset
    staged = [p for p in (state / "staging").rglob("*") if p.is_file()]
    assert staged == []  # the commit emptied its stage
    meta = load_dataset_meta(root)  # no orphan data files, same layout
    assert meta.fingerprint() == fingerprint
    assert check_annotated_dataset(root).ok
    assert sorted((root / "data").rglob("*.parquet")) == shards
    for shard in shards:
        assert stat.S_IMODE(shard.stat().st_mode) == 0o640, shard
    assert stat.S_IMODE((root / "meta" / "info.json").stat().st_mode) == 0o600


_MOUNTED_RUN = """
import json, subprocess, sys
from pathlib import Path
root, url, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(root)], check=True)
from narrator.samples.dataset import make_sample_dataset
make_sample_dataset(root, episodes=3, cameras=1, episodes_per_file=2)
from narrator.cli.main import main
code = main(["annotate", str(root), "--vlm-url", url, "--no-progress", "--workers", "1"])
from narrator.inspection.dataset_check import check_annotated_dataset
report = check_annotated_dataset(root)
out.write_text(json.dumps({"code": code, "ok": report.ok, "errors": report.errors,
                           "mount_point": root.stat().st_dev != root.parent.stat().st_dev}))
"""


@pytest.mark.slow
def test_a_dataset_root_that_is_a_mount_point_is_annotated(tmp_path: Path, fleet: Fleet) -> None:
    prefix = mount_prefix()
    if prefix is None:
        pytest.skip("this machine lets no test process mount a filesystem (unshare -m / -r -m)")
    root = tmp_path / "mnt"
    root.mkdir()
    out = tmp_path / "result.json"
    done = subprocess.run(
        [*prefix, sys.executable, "-c", _MOUNTED_RUN, str(root), fleet.urls[0], str(out)],
        capture_output=True,
        text=True,
        timeout=200,
        cwd=REPO_ROOT,
        env=_env(),
        check=False,
    )
    assert done.returncode == 0 and out.exists(), done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["mount_point"]
    assert result == {"code": 0, "ok": True, "errors": 0, "mount_point": True}, done.stderr[-3000:]


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[tuple[Path, tuple[str, ...]]]:
    """A dataset, and the argv prefix under which it is read-only."""
    root = make_sample_dataset(tmp_path / "dataset", episodes=2, cameras=1)
    if os.geteuid() != 0:
        paths = sorted(root.rglob("*"), reverse=True)
        for path in [*paths, root]:
            path.chmod(stat.S_IMODE(path.stat().st_mode) & ~0o222)
        yield root, ()
        for path in [root, *sorted(root.rglob("*"))]:
            path.chmod(stat.S_IMODE(path.stat().st_mode) | 0o200)
        return
    prefix = mount_prefix()
    if prefix is None:
        pytest.skip("running as root without a mount namespace: cannot make a read-only dataset")
    remount = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'
    yield root, (*prefix, "sh", "-c", remount, str(root))


def test_a_read_only_dataset_is_refused_at_start(
    read_only: tuple[Path, tuple[str, ...]], fleet: Fleet
) -> None:
    root, prefix = read_only
    before = file_hashes(root)
    fleet.reset()
    done = _annotate_cli(root, fleet, prefix=prefix)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("narrator: ") and "is not writable" in lines[0]
    assert "read-write" in lines[0]
    assert requests(fleet) == 0  # refused before any VLM request
    assert file_hashes(root) == before
    assert not (root / ".narrator").exists()


def test_staging_on_another_filesystem_is_refused_at_start(tmp_path: Path, fleet: Fleet) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem (/dev/shm) beside the test's temporary directory")
    root = make_sample_dataset(tmp_path / "dataset", episodes=2, cameras=1)
    state = Path(os.path.realpath(shm)) / f"narrator-test-{os.getpid()}"
    try:
        fleet.reset()
        done = _annotate_cli(root, fleet, "--state-dir", str(state))
        assert done.returncode == 2, done.stderr[-3000:]
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "another filesystem" in lines[0], done.stderr
        assert requests(fleet) == 0
    finally:
        subprocess.run(["rm", "-rf", str(state)], check=False)
