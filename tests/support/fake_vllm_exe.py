"""A stand-in for ``vllm serve`` used by tests/test_serve.py.

Run as ``python tests/fake_vllm_exe.py serve MODEL [ANY ARGS] --port P [--host H]``. It prints a
few log lines, records its argv and ``CUDA_VISIBLE_DEVICES`` as JSON in
``<--record DIR>/replica-<port>.json``, then serves ``GET /health`` and ``GET /v1/models`` with
the standard library's http.server until it is terminated.

Test-only options: ``--sleep-before-serve S`` (slow start), ``--die-with CODE`` (print an error
and exit at start; only for the replica on ``--die-port`` if that is given),
``--die-after PATH`` (the dying replica first waits until PATH exists, e.g. the record of
the replica that starts, so a test knows that one started), ``--ignore-sigterm`` (needs
SIGKILL to stop). The record file appears whole (written beside it, then renamed). Unknown
arguments are accepted and recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Handler(BaseHTTPRequestHandler):
    model = "fake-model"

    def do_GET(self) -> None:
        if self.path == "/health":
            body = b""
        elif self.path == "/v1/models":
            body = json.dumps({"object": "list", "data": [{"id": self.model}]}).encode()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--record", default=None)
    parser.add_argument("--sleep-before-serve", type=float, default=0.0)
    parser.add_argument("--die-with", type=int, default=None)
    parser.add_argument("--die-port", type=int, default=None)
    parser.add_argument("--die-after", default=None)
    parser.add_argument("--ignore-sigterm", action="store_true")
    args, rest = parser.parse_known_args()
    if args.record:
        record = {
            "argv": sys.argv[1:],
            "unknown": rest,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "pid": os.getpid(),
        }
        path = Path(args.record, f"replica-{args.port}.json")
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(record))
        partial.replace(path)
    print(f"INFO fake vllm starting on port {args.port}", flush=True)
    if args.die_with is not None and args.die_port in (None, args.port):
        deadline = time.monotonic() + 60
        while args.die_after and not Path(args.die_after).exists():
            if time.monotonic() > deadline:
                break  # die anyway; the test then fails on the missing record
            time.sleep(0.02)
        print("ERROR fake vllm: CUDA out of memory while loading weights", flush=True)
        return int(args.die_with)
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(args.sleep_before_serve)
    if rest[:1] == ["serve"] and len(rest) > 1:
        Handler.model = rest[1]
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"INFO fake vllm serving http://{args.host}:{args.port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
