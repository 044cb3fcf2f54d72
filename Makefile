# VibeBox developer commands. A fresh machine needs only Python >= 3.11: `make run` and
# `make test` create .venv, install the project, and start PostgreSQL and Redis themselves
# (embedded under ./var/ unless DATABASE_URL / REDIS_URL point at running servers).
#
#   make run     API + worker + beat + Flower on http://127.0.0.1:5000/ (Ctrl-C stops all)
#   make test    the whole test suite, what CI runs (pytest -n auto; PYTEST_ARGS="...")
#   make test-fast  the fast tier: no Celery worker, sshd boxes, RabbitMQ or ops tooling
#   make lint    ruff + mypy
#   make bench   benchmarks on the make-run stack (BENCH_ARGS="--quick")
#   make bench-fleet  issue 15's fleet run: 500 boxes on 500 sshd servers (FLEET_ARGS=...)

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.vibebox-installed

.PHONY: help install run test test-fast lint bench bench-fleet services-start services-stop services-status

help:
	@echo "make run              start the whole stack (API, worker, beat, Flower)"
	@echo "make test             run the tests against real PostgreSQL/Redis (PYTEST_ARGS=...)"
	@echo "make test-fast        the fast tier: no worker, sshd, RabbitMQ or ops tests (< 1 min)"
	@echo "make lint             ruff + mypy"
	@echo "make bench            issue 13 benchmarks on the make-run stack (BENCH_ARGS=--quick)"
	@echo "make bench-fleet      issue 15 fleet run, 500 boxes (FLEET_ARGS=\"--boxes 100\")"
	@echo "make install          create .venv and install the project with its dev extras"
	@echo "make services-start   start embedded PostgreSQL/Redis and leave them running"
	@echo "make services-stop    stop the embedded PostgreSQL/Redis under var/"
	@echo "make services-status  show the embedded servers under var/"

$(VPY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "error: '$(PYTHON)' is missing or older than Python 3.11; use PYTHON=/path/to/python3.11" >&2; \
	  exit 1; }
	@if ! $(PYTHON) -m venv $(VENV); then \
	  rm -rf $(VENV); \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "[vibebox] installing python3-venv (ensurepip is missing)" >&2; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q python3-venv </dev/null \
	      || { apt-get update -q </dev/null && apt-get install -y -q python3-venv </dev/null; } \
	      || exit 1; \
	    $(PYTHON) -m venv $(VENV) || exit 1; \
	  else \
	    echo "error: '$(PYTHON) -m venv' failed; install python3-venv" >&2; exit 1; \
	  fi; \
	fi

# Reinstall whenever pyproject.toml changes.
$(STAMP): pyproject.toml | $(VPY)
	$(VPY) -m pip install --disable-pip-version-check -q -e ".[dev]"
	@touch $@

install: $(STAMP)

run: $(STAMP)
	@exec $(VPY) scripts/run.py serve

test: $(STAMP)
	@exec $(VPY) scripts/run.py test

# The test tiers are pytest markers (pyproject.toml; applied in tests/conftest.py). The fast
# tier deselects them, and VIBEBOX_TEST_TIER=fast makes a test that would still start a
# worker, sshd or RabbitMQ fail (tests/support/tiers.py). README: Tests.
FAST_TIER := not e2e and not sshd and not rabbitmq and not ops and not fuzz

test-fast: $(STAMP)
	@VIBEBOX_TEST_TIER=fast PYTEST_ARGS="-m '$(FAST_TIER)' $$PYTEST_ARGS" \
	  exec $(VPY) scripts/run.py test

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Benchmarks against the `make run` stack (bench/stack.py; root: sshd boxes). About 10-15
# minutes on 2 cores; BENCH_ARGS="--quick" for a short run, "--only p3,p4" for a subset.
bench: $(STAMP)
	@exec $(VPY) scripts/services.py exec -- $(VPY) bench/stack.py $(BENCH_ARGS)

# Issue 15's fleet run (bench/fleet.py; root): 500 boxes on 500 sshd servers through the
# make-run stack plus one more worker; ~16 minutes on 2 cores, ~4 GB of RAM.
# FLEET_ARGS="--boxes 100 --workers 2" to change it.
bench-fleet: $(STAMP)
	@exec $(VPY) scripts/services.py exec -- $(VPY) bench/fleet.py $(FLEET_ARGS)

services-start: $(STAMP)
	@$(VPY) scripts/services.py start

services-stop: $(STAMP)
	@$(VPY) scripts/services.py stop

services-status: $(STAMP)
	@$(VPY) scripts/services.py status
