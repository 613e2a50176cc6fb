"""Commands in a private mount namespace, for tests of datasets on their own filesystem.

A dataset root that is a mount point, or a read-only one, cannot be made with files alone
when the tests run as root (root writes through any mode bits). :func:`mount_prefix` returns
an ``unshare`` argv prefix under which a command may mount (a tmpfs, a read-only bind) in a
namespace of its own, so nothing it mounts is visible outside or outlives it; None where the
machine allows neither ``unshare -m`` (root) nor ``unshare -r -m`` (an unprivileged user
namespace).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile

_PREFIXES = (
    ["unshare", "--mount", "--propagation", "private"],
    ["unshare", "--map-root-user", "--mount", "--propagation", "private"],
)


@functools.cache
def mount_prefix() -> tuple[str, ...] | None:
    if shutil.which("unshare") is None:
        return None
    with tempfile.TemporaryDirectory() as probe:
        for prefix in _PREFIXES:
            done = subprocess.run(
                [*prefix, "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", probe],
                capture_output=True,
                timeout=30,
                check=False,
            )
            if done.returncode == 0:
                return tuple(prefix)
    return None
