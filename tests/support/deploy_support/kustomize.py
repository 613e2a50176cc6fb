"""Render a kustomization with the real kustomize, offline.

Role: find a kustomize binary (a standalone ``kustomize`` on PATH, else the copy built into
``kubectl``, i.e. ``kubectl kustomize``), run it on a directory and return the rendered
objects as dicts.

Invariants: no network and no cluster are touched (kustomize builds local directories without
either); a missing tool or a failed build raises :class:`KustomizeError` saying what to do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml


class KustomizeError(RuntimeError):
    """kustomize is not installed, or it refused the kustomization."""


def kustomize_command() -> list[str]:
    """The argv prefix that runs ``kustomize build``."""
    standalone = shutil.which("kustomize")
    if standalone:
        return [standalone, "build"]
    kubectl = shutil.which("kubectl")
    if kubectl:
        return [kubectl, "kustomize"]
    raise KustomizeError(
        "neither `kustomize` nor `kubectl` is on PATH: install Debian's/Google's `kubectl` "
        "package (it embeds kustomize v5) or a kustomize v5 release binary"
    )


def render(directory: Path, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """The objects ``kustomize build directory`` emits, in its output order."""
    argv = [*kustomize_command(), str(directory)]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    completed = subprocess.run(  # fixed argv, no shell
        argv, capture_output=True, text=True, timeout=timeout_s, env=env, check=False
    )
    if completed.returncode != 0:
        raise KustomizeError(
            f"`{' '.join(argv)}` failed ({completed.returncode}): {completed.stderr.strip()}"
        )
    objects = [doc for doc in yaml.safe_load_all(completed.stdout) if doc is not None]
    if not all(isinstance(doc, dict) for doc in objects):
        raise KustomizeError(f"kustomize printed something other than objects for {directory}")
    return objects


def kustomize_version() -> str:
    """The version line of the kustomize in use (for failure messages and the docs)."""
    argv = kustomize_command()
    if argv[-1] == "kustomize":  # kubectl: its version output names the embedded kustomize
        out = subprocess.run(
            [argv[0], "version", "--client"], capture_output=True, text=True, check=False
        ).stdout
    else:
        out = subprocess.run(
            [argv[0], "version"], capture_output=True, text=True, check=False
        ).stdout
    lines = [line for line in out.splitlines() if "ustomize" in line or line.startswith("v")]
    return lines[0].strip() if lines else out.strip()
