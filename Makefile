# The two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# CI requires 85% (lines and branches of api/, gateway/, relay/, common/, devstack/, dms_client/); a machine that skips the
# nginx, PgBouncer and browser tests measures less, so locally the number is only printed.
COV_FAIL_UNDER ?= 0
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: run test test-quick lint typecheck pytest install lock clean bench-relay

PACKAGES := api gateway relay common devstack dms_client

$(STAMP): setup.cfg pyproject.toml requirements/dev.lock
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing pinned dependencies into $(VENV) ..."
	@$(PIP) install -q --require-hashes -r requirements/dev.lock 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	@$(PIP) install -q --no-deps -e . 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	@touch $@

# The benchmarks' rivals (flask-socketio and what it pulls in), on top of the dev set.
BENCH_STAMP := $(VENV)/.bench-stamp
$(BENCH_STAMP): $(STAMP) requirements/bench.lock
	@$(PIP) install -q --require-hashes -r requirements/bench.lock
	@touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/dms up

test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check $(PACKAGES) tests bench locustfiles

typecheck: $(STAMP)
	$(BIN)/mypy $(PACKAGES)

pytest: $(STAMP)
	@rm -f .coverage .coverage.*
	$(BIN)/pytest --cov --cov-report=term --cov-fail-under=$(COV_FAIL_UNDER)
	@echo "coverage of api/, gateway/, relay/, common/, devstack/ and dms_client/ (lines and branches): $$($(BIN)/coverage report --format=total)%"

# Unit-level tests only: no embedded PostgreSQL/Redis, no servers (tests marked `quick`). Under 90 s.
test-quick: $(STAMP)
	$(BIN)/pytest -m quick -q -p no:cacheprovider

# Re-pin the locks from setup.cfg's ranges (run after changing dependencies). uv resolves once for
# every Python from 3.11 and every platform (--universal) and records each file's sha256, so
# `make install` with --require-hashes gets the same bytes on any machine.
LOCK_FLAGS := --quiet --universal --python-version 3.11 --generate-hashes --no-header --no-strip-extras
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q 'uv>=0.5,<1'
	.lock-venv/bin/uv pip compile $(LOCK_FLAGS) setup.cfg -o requirements/runtime.lock
	.lock-venv/bin/uv pip compile $(LOCK_FLAGS) --extra dev --extra devstack -c requirements/runtime.lock \
	  setup.cfg -o requirements/dev.lock
	.lock-venv/bin/uv pip compile $(LOCK_FLAGS) --extra dev --extra devstack --extra bench \
	  -c requirements/dev.lock setup.cfg -o requirements/bench.lock
	rm -rf .lock-venv

# Commit-to-client latency through API and gateway; BENCH_ARGS="--mode ceiling [--profile]": the relay
# alone, its events/s ceiling and commit-to-publish latency (docs/PERFORMANCE.md "Relay ceiling").
bench-relay: $(BENCH_STAMP)
	$(BIN)/python -m bench.relay $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# -- load tests and benchmarks (docs/PERFORMANCE.md) ---------------------------------------------
# make swarm [SWARM=both|api|ws] [SCENARIO=custom|baseline|spike|stress|soak] [RATE=100] [USERS=50]
#            [DURATION=60s] [TARGET=.dms/env]; CSV and HTML reports go to results/.
# TARGET is an env file with API_URL, GATEWAY_URL, JWT_SECRET and DATABASE_URL (what `dms up` writes).
.PHONY: swarm bench-fanout bench-peer bench-peer-quick bench-api bench-storm bench-compression
USERS ?= 50
RATE ?= 100
DURATION ?= 60s
TARGET ?= .dms/env
SWARM ?= both
SCENARIO ?= custom
BENCH_ARGS ?=

swarm: $(STAMP)
	@test -f "$(TARGET)" || { echo "no $(TARGET): run the stack first (see docs/PERFORMANCE.md) or set TARGET=<env file>"; exit 2; }
	@mkdir -p results
	set -a; . "$(abspath $(TARGET))"; set +a; status=0; \
	if [ "$(SWARM)" != ws ]; then \
	  $(BIN)/locust -f locustfiles/api.py --headless --only-summary --host "$$API_URL" --scenario $(SCENARIO) \
	    -u $$(( ($(RATE) + 1) / 2 )) -r 20 -t $(DURATION) --csv results/api --html results/api.html & rest=$$!; fi; \
	if [ "$(SWARM)" != api ]; then \
	  $(BIN)/locust -f locustfiles/ws_swarm.py --headless --only-summary --host "$$API_URL" \
	    -u $(USERS) -r 20 -t $(DURATION) --csv results/ws --html results/ws.html & ws=$$!; fi; \
	if [ -n "$${rest:-}" ]; then wait $$rest || status=1; fi; \
	if [ -n "$${ws:-}" ]; then wait $$ws || status=1; fi; \
	exit $$status

bench-fanout: $(BENCH_STAMP)
	$(BIN)/python -m bench.fanout $(BENCH_ARGS)

# Ours, Flask-SocketIO and Node socket.io (npm installs its pinned packages into bench/reports/node-peer;
# no node/npm: that peer is skipped). 7-12 min; bench-peer-quick ~2 min; BENCH_ARGS=--source=redis skips the API.
bench-peer: $(BENCH_STAMP)
	$(BIN)/python -m bench.peer $(BENCH_ARGS)

# Bytes on the wire and gateway CPU per delivery, plain against permessage-deflate (about 1 min).
bench-compression: $(STAMP)
	$(BIN)/python -m bench.compression $(BENCH_ARGS)

bench-peer-quick: $(BENCH_STAMP)
	$(BIN)/python -m bench.peer --quick $(BENCH_ARGS)

bench-api: $(BENCH_STAMP)
	$(BIN)/python -m bench.api $(BENCH_ARGS)

# Reconnect storm (docs/PERFORMANCE.md "Reconnect storm"): 20,000 subscribers through nginx over two
# gateways, kill -9 of the busiest; BENCH_ARGS="--clients 4000", "--mode drain" or "--mode handshakes".
bench-storm: $(STAMP)
	$(BIN)/python -m bench.storm $(BENCH_ARGS)
