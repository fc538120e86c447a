# The README's two commands: `make quickstart` (a real search on the bundled digits data) and
# `make test`. Each creates the virtual environment in .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: quickstart test test-fast lint

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

quickstart: $(STAMP)
	bash experiments/install_data.sh
	$(VENV)/bin/lvit search experiments/quickstart.yaml

# tests/services.sh starts PostgreSQL on 127.0.0.1 (and installs it, Chromium and Debian's
# dataset-fashion-mnist as root if missing, the last through experiments/install_data.sh). As
# root (CI) they are required: their tests fail, never skip, without them.
test: $(STAMP)
	LVIT_TEST_POSTGRES="$$(bash tests/services.sh)" \
	LVIT_REQUIRE_SERVICES="$$([ "$$(id -u)" = 0 ] && echo 1)" \
	$(VENV)/bin/python -m pytest -q

# the inner loop: everything but the slow, service and one-shot tests (under 3 minutes)
test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not slow and not services and not nni"

lint: $(STAMP)
	$(VENV)/bin/ruff check nas search_spaces tests experiments
