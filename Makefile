# The two commands: `make demo` (set up everything, start the default lab, show how traffic spreads)
# and `make test` (set up everything, run the whole test suite).
PYTHON ?= python3
LAB ?= $(PYTHON) -m lab

.PHONY: setup demo test unit lint bench down

setup:
	bash scripts/ensure-docker.sh
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(LAB) images

demo: setup
	$(LAB) status >/dev/null 2>&1 || $(LAB) up
	$(LAB) status

test: setup
	$(PYTHON) -m pytest

unit:
	$(PYTHON) -m pytest tests/unit

lint:
	$(PYTHON) -m ruff check lab tests bench
	$(PYTHON) -m mypy lab

bench: setup
	$(PYTHON) bench/up.py

down:
	$(LAB) down
