# strata — the README's commands. Everything installs itself into .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PIP_FLAGS := --disable-pip-version-check -q

.PHONY: install demo test unit integration lint typecheck format bench bench-generate bench-recompute clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -U pip
	$(PY) -m pip install $(PIP_FLAGS) -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/strata demo --data ./data

test: $(STAMP) lint typecheck
	$(VENV)/bin/pytest -q tests/unit tests/integration

unit: $(STAMP)
	$(VENV)/bin/pytest -q tests/unit

integration: $(STAMP)
	$(VENV)/bin/pytest -q tests/integration

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy strata jobs actors api

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: bench-generate bench-recompute

bench-generate: $(STAMP)
	$(PY) bench/generate.py --users 1000000 --days 90

bench-recompute: $(STAMP)
	$(PY) bench/recompute.py --data /tmp/strata-bench-1m --users 1000000 --days 90 --actors 1,2

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
