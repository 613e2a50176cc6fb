"""What ``pip install narrator`` puts into site-packages: one top-level import name.

The role folders (``common/``, ``producer/``, ``workers/``, ``writer/``) live at the top of the
repository and are mapped into the package through symlinks under ``narrator/``; the wheel
must hold them as ``narrator.common`` etc. and nothing else at its top level (a package named
``common`` or ``tests`` would collide with whatever else a user has installed).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)],
        check=True,
        capture_output=True,
        text=True,
    )
    (built,) = out.glob("narrator-*.whl")
    return built


def test_the_wheel_installs_exactly_one_top_level_name(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top_level_txt = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
        declared = archive.read(top_level_txt).decode().split()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"narrator"}
    assert declared == ["narrator"]
    for role in ("common", "producer", "workers", "writer"):
        assert f"narrator/{role}/__init__.py" in names
    # the data files travel with their packages
    assert "narrator/common/prompts/plan.subtasks.txt" in names
    assert any(n.startswith("narrator/consumer/recipes/") and n.endswith(".yaml") for n in names)


def test_installed_wheel_has_no_bare_common(wheel: Path, tmp_path: Path) -> None:
    """Installed (without dependencies) into an empty target: ``import common`` fails there,
    ``narrator.common`` is a package."""
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
         str(wheel)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    probe = (
        "import importlib.util, sys\n"
        f"sys.path[:] = [{str(target)!r}] + [p for p in sys.path if 'site-packages' not in p]\n"
        "assert importlib.util.find_spec('common') is None, 'bare common importable'\n"
        "assert importlib.util.find_spec('workers') is None, 'bare workers importable'\n"
        "spec = importlib.util.find_spec('narrator.common')\n"
        f"assert spec is not None and spec.origin.startswith({str(target)!r}), spec\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, cwd=tmp_path)
    installed = {p.name for p in target.iterdir() if not p.name.endswith(".dist-info")}
    assert installed - {"bin"} == {"narrator"}  # bin/ holds the `narrator` console script
