# segleak: `make benchmark` and `make test` install what is missing into .venv, then run.
# The install is idempotent: a stamp file keyed by the hash of pyproject.toml and this Makefile makes a
# second call install nothing. mmcv 2.1.0 is compiled once per machine; pip's wheel cache keeps the build.

SHELL      := /bin/bash
PYTHON     ?= python3
VENV       := .venv
PY         := $(VENV)/bin/python
PIP        := $(PY) -m pip
SEGLEAK    := $(VENV)/bin/segleak
TORCH_WHL  := $(wildcard /opt/wheels/torch-2.13.0+cpu-*.whl)
TORCH_REQ  := $(if $(TORCH_WHL),$(TORCH_WHL),torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu)
STAMP      := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)
RESULTS    ?= results
PROFILE    ?= default
PYTEST_ARGS ?=

export RAY_AUTH_MODE ?= disabled
export PYTHONUNBUFFERED := 1

.PHONY: install chromium benchmark test test-fast ui leaderboard plots bench gpu-check docker cluster-test clean

install: $(STAMP)

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo ">> installing into $(VENV) (first time only; mmcv compiles once per machine, 7-25 min)"
	$(PIP) install -q --upgrade "pip>=24,<26"
	# torch first, from the CPU wheel, so nothing later pulls a CUDA build
	$(PIP) install -q $(TORCH_REQ)
	# mmcv 2.1.0's setup.py needs setuptools<70, below torch's declared >=77.0.3: pip's resolver would print an
	# ERROR about it although everything works; --no-warn-conflicts keeps a good install free of ERROR lines
	$(PIP) install -q --no-warn-conflicts "setuptools<70" wheel ninja "numpy<2.5"
	# compiled ops against the installed torch; --no-build-isolation keeps that torch; pip caches the wheel
	MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=2 $(PIP) install --no-warn-conflicts --no-build-isolation mmcv==2.1.0
	$(PIP) install -q --no-warn-conflicts -e ".[test]"
	@rm -f $(VENV)/.installed-*
	@touch $@

# Debian's headless browser for the tests that read pages (leaderboard, MLflow UI); they skip without it
chromium:
	@test -x /usr/bin/chromium || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null && \
	  { DEBIAN_FRONTEND=noninteractive apt-get -y -qq install chromium >/dev/null 2>&1 || \
	    { apt-get -qq update && DEBIAN_FRONTEND=noninteractive apt-get -y -qq install chromium >/dev/null 2>&1; }; }; } || \
	  echo ">> chromium not installed (needs root and apt-get): the browser tests skip"

benchmark: install
	$(SEGLEAK) benchmark --profile $(PROFILE) --results $(RESULTS)

test: install chromium
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

ui: install
	$(SEGLEAK) ui --results $(RESULTS)

leaderboard: install
	$(SEGLEAK) leaderboard --results $(RESULTS)

plots: install
	$(SEGLEAK) plots --results $(RESULTS)

cluster-test: install
	$(PY) -m pytest -q tests/cluster $(PYTEST_ARGS)

# THP as in the Ray workers (ray_jobs/running/runner.py), so the figures measure the allocator the grid runs with;
# ONLY=driver,planning (etc.) runs some sections; the driver's 100k no-op units take ~1 h on 2 busy cores
bench: install
	THP_MEM_ALLOC_ENABLE=1 $(PY) -m ray_jobs.measure.perf --out $(RESULTS)/bench.json $(if $(ONLY),--only $(ONLY))

# throughput / memory / MFU of the paper archs on one GPU (<= 8 min); QUICK=1: tiny sizes on the CPU (< 2 min)
gpu-check: install
	$(PY) -m ray_jobs.measure.gpu_check $(if $(filter 1 yes true,$(QUICK)),--quick) --out $(RESULTS)/gpu-check.json

docker:
	docker build -f docker/Dockerfile -t segleak:gpu .

clean:
	rm -rf $(RESULTS) .pytest_cache
