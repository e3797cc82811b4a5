# The two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: run test lint typecheck pytest install lock clean bench-relay

$(STAMP): setup.cfg pyproject.toml requirements/dev.lock
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing pinned dependencies into $(VENV) ..."
	@$(PIP) install -q -r requirements/dev.lock 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	@$(PIP) install -q --no-deps -e . 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	@touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/dms up

test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check api gateway common tests bench locustfiles

typecheck: $(STAMP)
	$(BIN)/mypy api gateway common

pytest: $(STAMP)
	@rm -f .coverage .coverage.*
	$(BIN)/pytest --cov --cov-report=term
	@echo "coverage of api/, gateway/ and common/ (lines and branches): $$($(BIN)/coverage report --format=total)%"

# Re-pin requirements/dev.lock from setup.cfg's ranges (run after changing dependencies).
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q -e '.[dev]'
	.lock-venv/bin/pip freeze --exclude-editable | grep -v '^dms-realtime' > requirements/dev.lock
	rm -rf .lock-venv

bench-relay: $(STAMP)
	$(BIN)/python -m bench.relay

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
