# The two set-up commands of the README: `make demo` and `make test`. Both build .venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck unit bench clean redis-server

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || \
	  { echo "dcs-notifier needs Python >= 3.11; '$(PYTHON)' is $$($(PYTHON) --version 2>&1). Use PYTHON=python3.11 make ..."; exit 1; }
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  rm -rf $(VENV); \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "python venv support missing: installing python3-venv with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null && \
	    $(PYTHON) -m venv $(VENV); \
	  else \
	    echo "'$(PYTHON) -m venv' failed: install venv support, e.g. 'sudo apt-get install python3-venv'"; exit 1; \
	  fi; }
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.demo-deps: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[demo]'
	@touch $@

$(VENV)/.dev-deps: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

# The tests start their own redis-server processes on free ports: the binary must be installed.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "redis-server not found: installing it with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else \
	    echo "redis-server is required by the tests and is not installed."; \
	    echo "Install it, e.g. 'sudo apt-get install redis-server' (Debian/Ubuntu) or 'brew install redis' (macOS)."; \
	    exit 1; \
	  fi; }
	@command -v redis-server >/dev/null 2>&1 || { echo "redis-server still not found after installing"; exit 1; }

demo: $(VENV)/.demo-deps
	$(BIN)/dcs-notifier demo

lint: $(VENV)/.dev-deps
	$(BIN)/ruff check notifier tests bench
	$(BIN)/ruff format --check notifier tests bench

typecheck: $(VENV)/.dev-deps
	$(BIN)/mypy --strict notifier

# Two workers (pytest-xdist): each has its own redis-server and fixtures; the tests wait on real servers.
unit: $(VENV)/.dev-deps redis-server
	$(BIN)/pytest -n 2

test: lint typecheck unit

# Speed is measured here, never in timed tests: prints a table, writes bench/results/*.json.
bench: $(VENV)/.dev-deps redis-server
	$(BIN)/python -m bench.poll_cost
	$(BIN)/python -m bench.history_cost
	$(BIN)/python -m bench.compare --quick
	$(BIN)/python -m bench.hostile_api
	$(BIN)/python -m bench.hostile_receivers
	$(BIN)/python -m bench.churn
	$(BIN)/python -m bench.active_latency --quick
	$(BIN)/python -m bench.scrape_cost
	$(BIN)/python -m bench.watchdog_cost
	$(BIN)/python -m bench.grouping_cost

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
