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
TS_CLIENT := clients/typescript
WIDGET := clients/web-widget
# The Go generators are Debian's packages (.ci/run installs them); gen/go is generated and
# checked only with these versions, since another version writes other code.
GO_PLUGINS_PINNED := protoc-gen-go v1.28.1|protoc-gen-go-grpc 1.0
GO_PLUGINS_FOUND = $(shell { protoc-gen-go --version && protoc-gen-go-grpc --version; } 2>/dev/null | paste -sd'|')

.PHONY: install lock run test test-redis-cluster test-clients fuzz faults bench lint typecheck proto proto-go check-generated breaking format clean

install: $(VENV)/.installed $(BUF) $(TS_CLIENT)/dist/index.js $(WIDGET)/dist/widget.js

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

# The TypeScript client (clients/typescript): its pinned dependencies, then its build (the
# generated code from gen/es copied in, src/ compiled to dist/ with tsc).
$(TS_CLIENT)/node_modules/.package-lock.json: $(TS_CLIENT)/package.json $(TS_CLIENT)/package-lock.json
	npm --prefix $(TS_CLIENT) ci --no-audit --no-fund --loglevel=error
	touch $@

$(TS_CLIENT)/dist/index.js: $(TS_CLIENT)/node_modules/.package-lock.json $(TS_CLIENT)/build.mjs $(TS_CLIENT)/tsconfig.json $(wildcard $(TS_CLIENT)/src/*.ts) $(shell find gen/es -type f 2>/dev/null)
	npm --prefix $(TS_CLIENT) run --silent build

# The web chat widget (clients/web-widget): TypeScript compiled by tsc into one script, which
# the bridge serves at /web/v1/widget.js.
$(WIDGET)/node_modules/.package-lock.json: $(WIDGET)/package.json $(WIDGET)/package-lock.json
	npm --prefix $(WIDGET) ci --no-audit --no-fund --loglevel=error
	touch $@

$(WIDGET)/dist/widget.js: $(WIDGET)/node_modules/.package-lock.json $(WIDGET)/build.mjs $(WIDGET)/tsconfig.json $(wildcard $(WIDGET)/src/*.ts)
	npm --prefix $(WIDGET) run --silent build

run: install
	$(VENV)/bin/chat-dev

test: install
	$(PY) -m pytest

# The Redis tests (-m redis) again, on a Redis Cluster of three primaries the run starts
# (valkey-server in cluster mode), or on the cluster CHAT_REDIS_URL names (docs/scale-out.md).
test-redis-cluster: install
	CHAT_REDIS_CLUSTER=true $(PY) -m pytest -m redis

# The TypeScript and Go clients' tests alone, against a chat-server the run starts.
test-clients: install
	$(PY) -m pytest tests/clients -rs

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
	npm --prefix $(TS_CLIENT) run --silent typecheck
	npm --prefix $(WIDGET) run --silent typecheck

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

proto: install
	$(BUF) generate
	touch $(GEN_INITS)
	$(BUF) generate --template buf.gen.es.yaml
	$(MAKE) --no-print-directory proto-go
	npm --prefix $(TS_CLIENT) run --silent build

# buf's clean would remove gen/go/go.mod too, so the old output is removed here instead.
proto-go: install
	@if [ "$(GO_PLUGINS_FOUND)" = "$(GO_PLUGINS_PINNED)" ]; then \
		rm -rf gen/go/chat && $(BUF) generate --template buf.gen.go.yaml; \
	else \
		echo "gen/go NOT regenerated: it needs $(GO_PLUGINS_PINNED) (found: '$(GO_PLUGINS_FOUND)'); apt-get install protoc-gen-go protoc-gen-go-grpc"; \
	fi

# Regenerates into a scratch directory and fails when gen/ differs from it (gen/go only where
# the pinned Go generators are installed; it says so when it skipped).
check-generated: install
	rm -rf build/gen-check && mkdir -p build/gen-check
	$(BUF) generate -o build/gen-check
	touch $(addprefix build/gen-check/,$(GEN_INITS))
	$(BUF) generate -o build/gen-check --template buf.gen.es.yaml
	diff -r build/gen-check/gen/python gen/python || { echo "gen/python is stale: run 'make proto' and commit it"; exit 1; }
	diff -r build/gen-check/gen/es gen/es || { echo "gen/es is stale: run 'make proto' and commit it"; exit 1; }
	@if [ "$(GO_PLUGINS_FOUND)" = "$(GO_PLUGINS_PINNED)" ]; then \
		$(BUF) generate -o build/gen-check --template buf.gen.go.yaml && cp gen/go/go.mod build/gen-check/gen/go/ && \
		{ diff -r build/gen-check/gen/go gen/go || { echo "gen/go is stale: run 'make proto' and commit it"; exit 1; }; } && \
		echo "gen/go checked with $(GO_PLUGINS_FOUND)"; \
	else \
		echo "gen/go NOT checked: it needs $(GO_PLUGINS_PINNED) (found: '$(GO_PLUGINS_FOUND)'); apt-get install protoc-gen-go protoc-gen-go-grpc"; \
	fi
	@test -z "$$(ls gen | grep -vx -e python -e es -e go)" || { echo "gen/ holds a language check-generated does not check"; exit 1; }

breaking: install
	$(BUF) breaking --against '.git#ref=$(BREAKING_AGAINST)'

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache $(TS_CLIENT)/dist $(TS_CLIENT)/gen $(WIDGET)/dist
