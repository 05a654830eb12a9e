# Two entry points for a newcomer: `make run` (the whole local pipeline) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser tcmalloc run smoke test e2e rehearse proof slow lint bench

# uv at the tested versions (constraints.txt; tools/install.py says how): ~70 s on 2 cores, where pip took ~3.5 min.
$(STAMP): pyproject.toml constraints.txt tools/install.py
	$(PY) -m venv $(VENV)
	$(PY) tools/install.py $(VENV)
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
e2e: $(STAMP) browser tcmalloc
	$(BIN)/python -m pytest -q -m e2e

# The Modal functions in replicas of their containers (-m rehearsal): only the image's packages (a venv cached under
# ~/.cache/nothing-gpt/rehearsal), only the mounted sources, a folder bound at /vol (root; ~3.5 min the first time).
rehearse: $(STAMP)
	$(BIN)/python -m pytest -q -m rehearsal

# The real-model tests (-m realmodel): the SmolLM2 kit, and the local run proving DPO beats SFT (~14 min on 2 cores without native bf16).
proof: $(STAMP) tcmalloc
	$(BIN)/python -m pytest -q -m realmodel

# rehearse, e2e and proof in one pytest run: its two workers run the rounds chain beside the real-model proof
# (.ci/run runs this after `make test`).
slow: $(STAMP) browser tcmalloc
	$(BIN)/python -m pytest -q -m 'rehearsal or e2e or realmodel'

bench: $(STAMP)
	$(BIN)/python bench/engine_bench.py
