"""The adaptive in-flight limit over a run: two worker-like client processes share one
simulated replica that publishes no capacity figure (only vLLM's running/waiting gauges).

    python -m tests.bench.inflight_trace [--slots 64] [--seconds 25] [--demand 100]

Prints each client's limit readings merged by time (limit, the replica's running and waiting,
the client's requests in flight, the sum of both limits) and the replica's utilisation. The
target the clients should settle at together is ``1.25 x slots``. A measurement, not a test:
it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from typing import Any

from narrator.common.config import VLMSettings
from narrator.workers.vlm_api import ChatRequest, as_object
from narrator.workers.vlm_client import VLMClient

SCHEMA = {"type": "object", "properties": {"count": {"type": "integer"}}, "required": ["count"]}


async def _client(url: str, name: str, seconds: float, demand: int) -> list[dict[str, Any]]:
    settings = VLMSettings(urls=(url,), metrics_interval_s=0.5, timeout_s=60)
    async with VLMClient(settings) as client:
        stop = asyncio.Event()

        async def keep_asking(worker: int) -> None:
            n = 0
            while not stop.is_set():
                request = ChatRequest(
                    module="vqa",
                    item=f"{name}-{worker}-{n}",
                    messages=[{"role": "user", "content": f"How many? ({name} {worker} {n})"}],
                    schema=SCHEMA,
                    schema_name="vqa_count",
                    model="narrator-sim-vlm",
                    max_tokens=64,
                    temperature=0.0,
                )
                await client.ask(request, as_object)
                n += 1

        tasks = [asyncio.create_task(keep_asking(w)) for w in range(demand)]
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)
        return client.limit_trace()


def _table(traces: dict[str, list[dict[str, Any]]]) -> list[str]:
    rows = sorted((s["at_s"], name, s) for name, trace in traces.items() for s in trace)
    start = rows[0][0]
    limits: dict[str, int] = {}
    lines = [f"{'t_s':>5} {'client':>6} {'limit':>5} {'running':>7} {'waiting':>7} "
             f"{'in_flight':>9} {'sum':>5}"]  # fmt: skip
    for at, name, sample in rows:
        limits[name] = sample["limit"]

        def num(value: float | None) -> str:
            return "-" if value is None else f"{value:.0f}"

        lines.append(
            f"{at - start:5.1f} {name:>6} {sample['limit']:5d} {num(sample['running']):>7} "
            f"{num(sample['waiting']):>7} {sample['in_flight']:9d} {sum(limits.values()):5d}"
        )
    return lines


def _start_client(url: str, name: str, args: argparse.Namespace) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "tests.bench.inflight_trace", "--client", url, name]
    argv += ["--seconds", str(args.seconds), "--demand", str(args.demand)]
    return subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={"NARRATOR_LOG_LEVEL": "error", "PATH": "/usr/bin:/bin"},
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--service-s", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=25.0)
    parser.add_argument("--demand", type=int, default=100, help="requests each client wants")
    parser.add_argument("--client", nargs=2, metavar=("URL", "NAME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:  # one of the two client processes
        trace = asyncio.run(_client(args.client[0], args.client[1], args.seconds, args.demand))
        sys.stdout.write(json.dumps(trace) + "\n")
        return 0
    sim = subprocess.Popen(
        [sys.executable, "-m", "narrator.simulator", "--replicas", "1", "--port", "0",
         "--slots", str(args.slots), "--base-s", str(args.service_s), "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert sim.stdout is not None
        url = sim.stdout.readline().strip()
        clients = {name: _start_client(url, name, args) for name in ("a", "b")}
        traces = {}
        for name, proc in clients.items():
            out, _ = proc.communicate(timeout=args.seconds + 120)
            traces[name] = json.loads(out.strip().splitlines()[-1])
        with urllib.request.urlopen(f"{url}/admin/stats", timeout=10) as response:
            stats = json.loads(response.read())
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    for line in _table(traces):
        sys.stdout.write(line + "\n")
    sys.stdout.write(
        f"replica: {stats['slots']} slots, target sum {1.25 * stats['slots']:.0f}, "
        f"most in flight {stats['max_in_flight']}, most running {stats['max_running']}, "
        f"utilisation {stats['utilisation']:.3f}, {stats['requests_total']} requests "
        f"({time.strftime('%H:%M:%S')})\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
