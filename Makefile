# VibeBox developer commands. A fresh machine needs only Python >= 3.11: `make run` and
# `make test` create .venv, install the project, and start PostgreSQL and Redis themselves
# (embedded under ./var/ unless DATABASE_URL / REDIS_URL point at running servers).
#
#   make run     API + worker + beat + Flower on http://127.0.0.1:5000/ (Ctrl-C stops all)
#   make test    the whole test suite, what CI runs (pytest -n auto; PYTEST_ARGS="...");
#                first `make deps`: the Debian packages the tests need (apt-get, as root)
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

.PHONY: help install deps run test test-fast lint bench bench-fleet services-stop services-status

help:
	@echo "make run              start the whole stack (API, worker, beat, Flower)"
	@echo "make test             run the tests against real PostgreSQL/Redis (PYTEST_ARGS=...)"
	@echo "make test-fast        the fast tier: no worker, sshd, RabbitMQ or ops tests (< 1 min)"
	@echo "make lint             ruff + mypy"
	@echo "make bench            issue 13 benchmarks on the make-run stack (BENCH_ARGS=--quick)"
	@echo "make bench-fleet      issue 15 fleet run, 500 boxes (FLEET_ARGS=\"--boxes 100\")"
	@echo "make install          create .venv and install the project with its dev extras"
	@echo "make deps             install the Debian packages the tests need (root; make test runs it)"
	@echo "make services-stop    stop the embedded PostgreSQL/Redis under var/ (by PID)"
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

# Debian packages the tests need, by a file each provides: sshd (pool servers of the e2e
# tests), python3 (what box users run), openssl (password hashes), pkill, sudo, crontab and at
# (box teardown), docker-compose (validates docker-compose.yml offline), rabbitmq-server (the
# RabbitMQ e2e tests start their own node). A policy-rc.d keeps apt from starting the system
# services (no sshd on port 22); `apt-get update` only when the install fails without it.
TEST_PACKAGES := /usr/sbin/sshd:openssh-server /usr/bin/python3:python3 /usr/bin/openssl:openssl \
  /usr/bin/pkill:procps /usr/bin/sudo:sudo /usr/bin/crontab:cron /usr/bin/at:at \
  /usr/bin/docker-compose:docker-compose /usr/lib/rabbitmq/bin/rabbitmq-server:rabbitmq-server

deps:
	@missing=$$(for pair in $(TEST_PACKAGES); do [ -e "$${pair%%:*}" ] || echo "$${pair#*:}"; done); \
	[ -z "$$missing" ] && exit 0; missing=$$(echo $$missing); \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "error: the tests need the Debian package(s) $$missing (sudo apt-get install $$missing)" >&2; \
	  exit 1; fi; \
	echo "[vibebox] installing system packages: $$missing" >&2; \
	export DEBIAN_FRONTEND=noninteractive; own_policy=; \
	if [ ! -e /usr/sbin/policy-rc.d ]; then own_policy=1; \
	  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; fi; \
	install="apt-get install -y -q --no-install-recommends $$missing"; \
	$$install </dev/null || { apt-get update -q </dev/null && $$install </dev/null; }; rc=$$?; \
	[ -n "$$own_policy" ] && rm -f /usr/sbin/policy-rc.d; exit $$rc

test: deps $(STAMP)
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

services-stop: $(STAMP)
	@$(VPY) scripts/services.py stop

services-status: $(STAMP)
	@$(VPY) scripts/services.py status
