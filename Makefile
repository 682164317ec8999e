# The README's two commands: `make demo` (the whole system, live) and `make test` (the suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install stack-deps venv bench clean

# System packages (PostgreSQL 15, Mosquitto, TimescaleDB built from source); skips what is there.
stack-deps:
	bash deploy/local/install.sh

venv: $(BIN)/wulian
$(BIN)/wulian: pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-dev >/dev/null; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $(BIN)/wulian

install: stack-deps venv

demo: install
	$(BIN)/wulian demo

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/wulian bench ingest --json

clean:
	-$(BIN)/wulian stack down
	rm -rf .stack $(VENV)
