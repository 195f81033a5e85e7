# The two commands: `make demo` (set up everything, start the default lab, show how traffic spreads)
# and `make test` (set up everything, run the whole test suite).
PYTHON ?= python3
LAB ?= $(PYTHON) -m lab

.PHONY: setup demo test unit lint bench down

setup:
	bash scripts/ensure-docker.sh
	bash scripts/ensure-tools.sh
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(LAB) images

demo: setup
	$(LAB) status >/dev/null 2>&1 || $(LAB) up
	$(LAB) verify --requests 3000 --report reports/verify.html

test: setup
	$(PYTHON) -m pytest

unit:
	$(PYTHON) -m pytest tests/unit

lint:
	$(PYTHON) -m ruff check lab tests bench
	$(PYTHON) -m mypy lab

bench: setup
	$(PYTHON) bench/up.py
	$(PYTHON) bench/verify.py

down:
	$(LAB) down
