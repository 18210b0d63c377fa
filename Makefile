# Two commands for a new user: `make run` starts everything, `make test` runs the tests.
# Both install what they need first (a virtual environment in .venv, buf through npm).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUF := node_modules/.bin/buf
# buf breaking compares the contracts with the released v1: the commit named in
# proto/BREAKING_BASELINE (moved forward only when a release is cut). Override it with e.g.
# `make breaking BREAKING_AGAINST=main`.
BREAKING_AGAINST ?= $(shell cat proto/BREAKING_BASELINE)
GEN_INITS := gen/python/chat/__init__.py gen/python/chat/v1/__init__.py

.PHONY: install lock run test fuzz faults bench lint typecheck proto check-generated breaking format clean

install: $(VENV)/.installed $(BUF)

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[embedded,dev]'
	touch $@

# Rewrites constraints.txt from a fresh resolve of pyproject.toml's ranges.
lock:
	rm -rf build/lock-venv && $(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/python -m pip install --quiet --upgrade pip
	build/lock-venv/bin/python -m pip install --quiet '.[embedded,dev]'
	{ sed -n '1,3p' constraints.txt; build/lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^chat-service'; } > build/constraints.txt
	mv build/constraints.txt constraints.txt

$(BUF): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

run: install
	$(VENV)/bin/chat-dev

test: install
	$(PY) -m pytest

# The long property campaign (tests/property, random, 3000 examples per property; about an
# hour on 2 cores). CI runs the same properties bounded and derandomized in `make test`.
fuzz: install
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest tests/property --timeout=7200 -q

# Kills and pauses servers of its own under load (a few minutes; docs/faults.md). Its figures
# are printed at the end and written to build/faults.json.
faults: install
	rm -f build/faults.json
	$(PY) -m pytest -m faults tests/faults

bench: install
	.venv/bin/python -m bench.run

lint: install
	$(BUF) lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

proto: install
	$(BUF) generate
	touch $(GEN_INITS)

# Regenerates into a scratch directory and fails when gen/ differs from it.
check-generated: install
	rm -rf build/gen-check && mkdir -p build/gen-check
	$(BUF) generate -o build/gen-check
	touch $(addprefix build/gen-check/,$(GEN_INITS))
	diff -r build/gen-check/gen gen || { echo "gen/ is stale: run 'make proto' and commit it"; exit 1; }

breaking: install
	$(BUF) breaking --against '.git#ref=$(BREAKING_AGAINST)'

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
