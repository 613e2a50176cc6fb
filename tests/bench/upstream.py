"""An upstream-like orchestration, to compare narrator's against (benchmark only).

LeRobot's own annotation pipeline (``lerobot-annotate``, its in-process executor) runs one
module at a time over the whole dataset (plan for every episode, then interjections, then
VQA), 16 episodes at a time in a thread pool (``episode_parallelism=16``); inside an episode
the plan and interjection requests go one after the other, and the VQA requests of the
episode are fired as one batch; requests are spread over the servers round-robin, with no
per-server limit. This module runs that shape with narrator's own modules, prompts, frames
and VLM client, so the request mix is exactly narrator's (same requests, same seeds, same
simulated answers):

* phases plan -> interjections -> vqa, each over every episode, ``EPISODES_AT_ONCE`` at a time;
* a per-episode gate lets one plan/interjections request of the episode run at a time (serial)
  and ``VQA_WIDTH`` VQA requests at a time (the batch, 16 wide);
* the client has no per-replica in-flight limit (an override far above any replica's slots)
  and no hedging; it picks the least-loaded replica, which is never worse than round-robin.

Nothing is written to the dataset: the wall time reported is to the last answer (upstream's
writer phase would come on top). The orchestration runs in a child process (``python -m
tests.bench.upstream --child``) so its CPU is measured apart and it does not share the
benchmark's interpreter.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from narrator.common.config import VLMSettings, load_config
from narrator.common.dataset.meta import DatasetMeta
from narrator.common.dataset.reader import load_dataset_meta, read_episode_frames
from narrator.common.logging import configure_logging
from narrator.common.prompts import PromptSet, load_prompts
from narrator.common.staging import ModuleResult
from narrator.workers.frame_source import EpisodeFrameSource
from narrator.workers.modules.base import EpisodeContext, ModuleOutput, ModuleRunner
from narrator.workers.modules.interjections import run_interjections
from narrator.workers.modules.plan import run_plan
from narrator.workers.modules.vqa import run_vqa
from narrator.workers.vlm_api import VLM, AnswerParser, ChatAnswer, ChatRequest
from narrator.workers.vlm_client import VLMClient
from tests.bench.pipeline import PipelineRun, fleet_overrun
from tests.bench.processes import ProcessSampler, SimFleetProcess
from tests.bench.support import REPO_ROOT, child_environment, copy_dataset
from tests.bench.timeline import merged, slot_utilisation

T = TypeVar("T")

EPISODES_AT_ONCE = 16
VQA_WIDTH = 16
NO_LIMIT = 100_000  # in-flight requests per replica: no client-side limit at all
RUNNERS: dict[str, ModuleRunner] = {
    "plan": run_plan,
    "interjections": run_interjections,
    "vqa": run_vqa,
}
CHILD_TIMEOUT_S = 3600.0


class GatedVLM:
    """At most ``width`` requests of one episode at a time (1: serial)."""

    def __init__(self, inner: VLM, width: int) -> None:
        self._inner = inner
        self._gate = asyncio.Semaphore(width)

    async def ask(self, request: ChatRequest, parse: AnswerParser[T]) -> ChatAnswer[T]:
        async with self._gate:
            return await self._inner.ask(request, parse)


def client_settings(urls: Sequence[str]) -> VLMSettings:
    vlm: dict[str, Any] = {"urls": list(urls), "max_in_flight_per_replica": NO_LIMIT}
    if "hedge" in VLMSettings.model_fields:
        vlm["hedge"] = False
    return load_config({"vlm": vlm}, env={}).vlm


async def _context(
    meta: DatasetMeta,
    index: int,
    prompts: PromptSet,
    model: str,
    upstream: dict[str, ModuleResult],
) -> EpisodeContext:
    settings = load_config({}, env={}).annotation
    ep = meta.episodes[index]
    frames = await asyncio.to_thread(read_episode_frames, meta, index)
    task = ep.tasks[0] if ep.tasks else meta.tasks.get(int(frames.task_index[0]), "")
    return EpisodeContext(
        run_id="upstream-like",
        episode=ep,
        frames=frames,
        task=task,
        fps=meta.fps,
        cameras=tuple(c for c in meta.cameras if c.key in ep.videos),
        settings=settings,
        prompts=prompts,
        model=model,
        frame_source=EpisodeFrameSource(meta, ep, frames, settings.frames),
        upstream=upstream,
    )


async def _phase(
    module: str,
    meta: DatasetMeta,
    client: VLM,
    prompts: PromptSet,
    model: str,
    plans: dict[int, ModuleResult],
) -> list[ModuleOutput]:
    """One module over every episode, EPISODES_AT_ONCE episodes at a time."""
    pool = asyncio.Semaphore(EPISODES_AT_ONCE)

    async def one(index: int) -> ModuleOutput:
        async with pool:
            upstream = {"plan": plans[index]} if module == "interjections" else {}
            ctx = await _context(meta, index, prompts, model, upstream)
            gate = GatedVLM(client, VQA_WIDTH if module == "vqa" else 1)
            output = await RUNNERS[module](ctx, gate)
            if module == "plan":
                plans[index] = ModuleResult(
                    module="plan",
                    episode=index,
                    module_hash="upstream-like",
                    rows=output.rows,
                    failures=output.failures,
                    extra=output.extra,
                )
            return output

    return list(await asyncio.gather(*(one(index) for index in sorted(meta.episodes))))


async def annotate_upstream_like(root: Path, urls: Sequence[str]) -> dict[str, Any]:
    meta = load_dataset_meta(root)
    prompts = load_prompts()
    modules = load_config({}, env={}).annotation.modules
    plans: dict[int, ModuleResult] = {}
    phases: list[float] = []
    failures = 0
    started = time.monotonic()
    async with VLMClient(client_settings(urls)) as client:
        model = await client.resolve_model()
        for module in modules:
            phase_started = time.monotonic()
            outputs = await _phase(module, meta, client, prompts, model, plans)
            failures += sum(len(o.failures) for o in outputs)
            phases.append(time.monotonic() - phase_started)
    return {
        "episodes": len(meta.episodes),
        "modules": list(modules),
        "phase_walls_s": phases,
        "wall_s": time.monotonic() - started,
        "item_failures": failures,
    }


def run_upstream_like(
    source: Path, fleet: SimFleetProcess, work: Path, deadline_s: float | None = None
) -> PipelineRun:
    """The upstream-like orchestration of a copy of ``source`` against the fleet (stopped at
    ``deadline_s`` if it has not answered everything by then)."""
    root = copy_dataset(source, work)
    out = work / "upstream.json"
    args = [sys.executable, "-m", "tests.bench.upstream", "--child", str(root), str(out)]
    with ProcessSampler() as sampler:
        fleet.reset()
        clock0 = time.monotonic()
        started = time.perf_counter()
        proc = subprocess.Popen(
            [*args, *fleet.urls],
            env=child_environment(),
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _, stderr = proc.communicate(timeout=deadline_s or CHILD_TIMEOUT_S)
            finished = True
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
            finished = False
        returned = time.perf_counter() - started
        usage = sampler.stop()
    if finished and (proc.returncode != 0 or not out.exists()):
        raise RuntimeError(f"the upstream-like run failed ({proc.returncode}): {stderr[-2000:]}")
    result = json.loads(out.read_text()) if finished else {}
    timelines = fleet.timelines()
    timeline = merged(timelines)
    utilisation = slot_utilisation(timeline, fleet.settings.total_slots)
    return PipelineRun(
        mode="upstream-like",
        episodes=int(result.get("episodes", 0)),
        # start to the last answer (nothing is written), or to the deadline
        wall_s=utilisation.last_end_s if finished else returned,
        returned_s=returned,
        exit_code=proc.returncode if finished else 124,
        requests=fleet.requests_total(),
        usage=usage,
        utilisation=utilisation,
        timeline=timeline,
        redis_used_before=0,
        redis_used_after=0,
        phase_walls_s=[float(w) for w in result.get("phase_walls_s", [])],
        config={"episodes_at_once": EPISODES_AT_ONCE, "vqa_width": VQA_WIDTH},
        sim_overrun=fleet_overrun(fleet, timelines),
        clock0_s=clock0,
        replica_timelines=timelines,
        finished=finished,
    )


def _child(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.upstream --child")
    parser.add_argument("root", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("urls", nargs="+")
    args = parser.parse_args(argv)
    configure_logging("warning")
    result = asyncio.run(annotate_upstream_like(args.root, args.urls))
    args.out.write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["--child"]:
        sys.stderr.write("usage: python -m tests.bench.upstream --child ROOT OUT URL...\n")
        sys.exit(2)
    sys.exit(_child(sys.argv[2:]))
