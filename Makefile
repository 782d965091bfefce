# stagebox: the same targets locally and in CI (.ci/run runs `make test`).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: all venv test lint typecheck unit integration demo bench bench-quick bench-deps system-deps clean

all: test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The demo needs the server and the client, not the test and benchmark tools; uv
# fetches them in parallel (pip took over a minute here, uv about 15 s).
DEMO_STAMP := $(VENV)/.installed-server
$(DEMO_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/python -m uv pip install --quiet --python $(BIN)/python -e '.[server]'
	touch $(DEMO_STAMP)

# Debian packages the tests and benchmarks talk to; installed only when missing.
SYSTEM_PACKAGES := openssh-server openssh-client rsync curl passwd
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) system-deps lint typecheck
	$(BIN)/pytest -q -n 2 --dist loadfile --durations=25 tests

demo: $(DEMO_STAMP)
	$(BIN)/stagebox demo

# Tools only the benchmarks' peers need (rclone; node and npm for @tus/server, which the
# harness itself npm-installs into benchmarks/work/node). Each is installed only when its
# command is missing; a case whose tool still cannot be had says "not available" and why.
BENCH_TOOLS := rclone:rclone node:nodejs npm:npm
bench-deps: system-deps
	@missing=""; for t in $(BENCH_TOOLS); do \
	  command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; } \
	    || echo "could not install$$missing: the cases needing them will say not available"; \
	fi

bench: $(STAMP) bench-deps
	$(BIN)/python -m benchmarks.run --full

bench-quick: $(STAMP) bench-deps
	$(BIN)/python -m benchmarks.run --quick

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache benchmarks/work
