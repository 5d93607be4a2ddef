# strata — the README's commands. Everything installs itself into .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PIP_FLAGS := --disable-pip-version-check -q

.PHONY: install demo test unit integration faults lint typecheck format bench bench-generate bench-recompute clean browser

# strata runs on Python 3.11 and 3.12 (pyproject.toml's requires-python). The pinned pip and
# setuptools go in first; the package then builds with that setuptools (no build isolation).
# setuptools stays below 81: lifetimes' datasets (CDNOW, used by the tests) import pkg_resources.
PY_VERSION_OK := import sys; sys.exit(sys.version_info[:2] not in ((3, 11), (3, 12)))

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -c '$(PY_VERSION_OK)' 2>/dev/null || { \
	  echo "strata needs Python 3.11 or 3.12, but PYTHON=$(PYTHON) is" \
	    "$$($(PYTHON) --version 2>/dev/null || echo 'not found')." >&2; \
	  echo "Install one and run e.g.: make install PYTHON=python3.12" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c '$(PY_VERSION_OK)' || { \
	  echo "$(VENV) runs $$($(PY) --version 2>&1); strata needs Python 3.11 or 3.12:" \
	    "run make clean, then make install PYTHON=python3.12" >&2; exit 1; }
	$(PY) -m pip install $(PIP_FLAGS) -c constraints.txt pip setuptools
	$(PY) -m pip install $(PIP_FLAGS) -c constraints.txt --no-build-isolation -e ".[dev]"
# gbstats (the A/B engine the tests compare strata's against) pins numpy<2 but the modules
# the tests import are pure Python and run on numpy 2: installed without its dependencies.
	$(PY) -m pip install $(PIP_FLAGS) --no-deps gbstats==0.8.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/strata demo --data ./data

test: $(STAMP) lint typecheck browser
	$(VENV)/bin/pytest -q tests/unit tests/integration tests/faults

unit: $(STAMP)
	$(VENV)/bin/pytest -q tests/unit

integration: $(STAMP) browser
	$(VENV)/bin/pytest -q tests/integration

# issue 16's light faults: disk full (a small tmpfs, needs root), corrupt inputs
faults: $(STAMP)
	$(VENV)/bin/pytest -q tests/faults

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

# The dashboard's browser test (tests/integration/test_dashboard_browser.py) drives Debian's
# chromium through Playwright's executable_path: no Playwright browser download. Installed
# (with a CJK font for the zh pages' screenshots) only when no chromium is on PATH.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser test (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    chromium fonts-wqy-microhei >/dev/null; }

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
