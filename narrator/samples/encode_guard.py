"""Run a video encoder in a forked child that is restarted when it stalls.

Why: the SVT-AV1 encoder shipped in PyAV's wheels (libSvtAv1Enc 4.1) was seen to deadlock
inside ``svt_av1_enc_send_picture`` when the machine is starved of CPU (a busy 2-core test
machine, and on every 400-episode generation with its default thread pool): the calling
thread blocks on a semaphore forever and takes no CPU. The first defence is one encoder
thread (``svtav1-params=lp=1`` in :mod:`narrator.samples.video`, with which the 400-episode
generations finished); this watch is the second. A deadlock in
native code cannot be interrupted in-process, so the sample generator encodes AV1 in a child
process (``fork``: the child inherits the frame generator, nothing is pickled), watches a
frame counter the child advances, and kills and restarts the child when the counter has not
moved for :data:`STALL_S` seconds. The file appears at its path only when an encode finished
(temp file + rename), so a killed attempt leaves nothing behind.

Invariants: at most :data:`ATTEMPTS` encodes per file; an exception raised by the encoder in
the child is raised again in the parent with its type; platforms without ``fork`` encode
in-process.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

STALL_S = 60.0  # no frame encoded for this long: the encoder is stuck
ATTEMPTS = 3
POLL_S = 0.2

Encode = Callable[[Path, Iterable[np.ndarray]], None]


class EncoderStalledError(RuntimeError):
    """The encoder made no progress for :data:`STALL_S` seconds, :data:`ATTEMPTS` times."""


def encode_guarded(path: Path, frames: Iterable[np.ndarray], encode: Encode) -> None:
    """``encode(path, frames)`` in a watched child process (see the module docstring)."""
    if not hasattr(os, "fork"):
        encode(path, frames)
        return
    context = multiprocessing.get_context("fork")
    temp = path.with_name(f".{path.name}.encoding")
    for _attempt in range(ATTEMPTS):
        progress = context.Value("q", 0, lock=False)
        receive, send = context.Pipe(duplex=False)
        child = context.Process(
            target=_child, args=(temp, frames, encode, progress, send), daemon=True
        )
        with warnings.catch_warnings():
            # Python >= 3.12 warns that forking a threaded process may deadlock the child; the
            # child only encodes its own frames, and a stuck child is what the watch handles.
            warnings.simplefilter("ignore", DeprecationWarning)
            child.start()
        send.close()
        stalled = _watch(child, progress)
        error = _received(receive)
        receive.close()
        if stalled:
            continue
        if error is not None:
            temp.unlink(missing_ok=True)
            raise error
        if child.exitcode != 0:
            temp.unlink(missing_ok=True)
            raise RuntimeError(f"the video encoder for {path} exited with code {child.exitcode}")
        temp.replace(path)
        return
    temp.unlink(missing_ok=True)
    raise EncoderStalledError(
        f"the video encoder for {path} made no progress for {STALL_S:.0f} s, {ATTEMPTS} times; "
        "the machine may be overloaded, or choose another codec (codec='libx264')"
    )


def _watch(child: Any, progress: Any) -> bool:
    """Wait for ``child``; True when it was killed for making no progress."""
    seen, moved_at = -1, time.monotonic()
    while child.is_alive():
        child.join(POLL_S)
        if progress.value != seen:
            seen, moved_at = progress.value, time.monotonic()
        elif time.monotonic() - moved_at > STALL_S:
            child.kill()
            child.join()
            return True
    return False


def _received(receive: Connection) -> BaseException | None:
    with contextlib.suppress(EOFError, OSError):
        if receive.poll():
            error = receive.recv()
            return error if isinstance(error, BaseException) else None
    return None


def _counted(frames: Iterable[np.ndarray], progress: Any) -> Iterator[np.ndarray]:
    for frame in frames:
        yield frame
        progress.value += 1


def _child(
    temp: Path, frames: Iterable[np.ndarray], encode: Encode, progress: Any, send: Connection
) -> None:
    try:
        encode(temp, _counted(frames, progress))
    except Exception as exc:  # handed to the parent, which raises it
        send.send(exc)
    finally:
        send.close()
