# usersync: `make demo` runs the demo sync, `make test` runs lint and the test suite
# (`make demo-ldap`: the demo from a real slapd; `make test-fast`: unit and contract tests without
# slapd, Samba, PostgreSQL or a Prefect server; `make soak`: the lifecycle state machine, long).
# Both do all the set-up they need (virtualenv, Python dependencies, Debian packages).

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

export PREFECT_SERVER_ANALYTICS_ENABLED := false
# A fresh ephemeral Prefect server migrates its database first; on a busy 2-core machine that
# takes longer than Prefect's default 20 s wait.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 180

.PHONY: setup system-packages demo demo-ldap test test-fast soak lint format clean

setup: $(VENV)/.installed system-packages

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

system-packages:
	bash scripts/install-system-packages.sh

# The demo needs no Debian package: the sample is pushed into the SCIM inbox.
demo: $(VENV)/.installed
	install -d -m 700 var var/prefect
	PREFECT_HOME=$(CURDIR)/var/prefect $(BIN)/usersync demo

# The same demo from a real OpenLDAP slapd (installed when missing).
demo-ldap: setup
	install -d -m 700 var var/prefect
	PREFECT_HOME=$(CURDIR)/var/prefect $(BIN)/usersync demo --source ldap

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Everything, and the 15 slowest tests at the end (CI's output shows where the time goes).
test: setup lint
	$(BIN)/pytest --durations=15

# The fast lane while working: unit and contract tests on the sandbox, leaving out every test
# that needs slapd, Samba, PostgreSQL or a Prefect server, or is marked slow (markers declared in
# pyproject.toml, given by tests/conftest.py). No lint (`make lint`), no system package.
FAST_MARKERS := not slapd and not samba and not postgres and not prefect and not slow

test-fast: $(VENV)/.installed
	$(BIN)/pytest -m "$(FAST_MARKERS)" --durations=15

# The lifecycle state machine (tests/lifecycle) for long: many random histories, new ones each
# time unless USERSYNC_SOAK_SEED is set. `make test` runs it briefly with a fixed seed.
soak: setup
	USERSYNC_SOAK_EXAMPLES=$${USERSYNC_SOAK_EXAMPLES:-300} \
	USERSYNC_SOAK_STEPS=$${USERSYNC_SOAK_STEPS:-40} \
	$(BIN)/pytest tests/lifecycle -p no:randomly -q

format: $(VENV)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
