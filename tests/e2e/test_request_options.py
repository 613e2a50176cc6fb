"""The request options of a lerobot-annotate user (``--temperature``, ``--max-tokens``,
``--seed``, ``--reasoning-effort``) and ``--only-episodes`` through the whole CLI path: every
chat request the simulated vLLM receives carries them (counted on the server side, over real
HTTP), the run records them and ``narrator status`` shows them, and a changed option
recomputes the run (it is in the module hashes) while the same command again asks nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from narrator.cli.main import main
from narrator.samples.dataset import make_sample_dataset
from narrator.simulator.fleet import Fleet

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _chat_requests(fleet: Fleet) -> int:
    return sum(int(n) for n in fleet.stats(0)["by_schema"].values())


def test_request_options_reach_every_request_the_run_and_the_status(
    tmp_path: Path, fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_sample_dataset(
        tmp_path / "ds", episodes=4, cameras=1, episodes_per_file=2, min_length=20, max_length=40
    )
    state = tmp_path / "state"
    argv = [
        "annotate", str(root), "--vlm-url", fleet.urls[0], "--state-dir", str(state),
        "--temperature", "0.7", "--max-tokens", "512", "--seed", "5",
        "--reasoning-effort", "low", "--only-episodes", "1-2", "--no-progress",
        "--log-level", "error", "--no-vlm-hedge",  # no hedges: the request count is exact
    ]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err[-3000:]
    sent = _chat_requests(fleet)
    options = fleet.stats(0)["request_options"]
    assert sent > 0
    assert options["temperature=0.7"] == sent and options["max_tokens=512"] == sent
    assert options["seed"] == sent and options["reasoning_effort=low"] == sent
    assert not fleet.stats(0)["ignored_fields"]

    capsys.readouterr()
    assert main(["status", str(root), "--state-dir", str(state), "--log-level", "error"]) == 0
    shown = capsys.readouterr().out
    assert "requests: temperature 0.7  max_tokens 512  seed 5  reasoning_effort low" in shown
    assert "episodes: only 1-2 (2 episode(s) in 2 file(s)" in shown

    fleet.reset()
    assert main(argv) == 0  # the same command: complete, nothing asked
    assert fleet.stats(0)["requests_total"] == 0
    changed = [a if a != "low" else "medium" for a in argv]
    assert main(changed) == 0  # another effort: other module hashes, every answer asked again
    assert fleet.stats(0)["request_options"]["reasoning_effort=medium"] == _chat_requests(fleet)
    assert _chat_requests(fleet) == sent
