# Every target that needs the venv depends on it, so `make run` and `make test`
# are the whole set-up on a fresh clone.
PY       ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
ARGS     ?=

.PHONY: run test unit e2e bench lint proto proto-check clean

$(STAMP): pyproject.toml
	@bash .ci/ensure-venv "$(PY)" "$(VENV)"
	@touch $@

run: $(STAMP)
	$(BIN)/bridge-server $(ARGS)

test: $(STAMP) proto-check lint
	$(BIN)/python -m pytest -q $(ARGS)

# PYTHONDONTWRITEBYTECODE= : a shell that sets it makes pytest re-rewrite every test module
# and Python recompile every source module on each run (about 2 s of the unit suite's CPU).
unit: $(STAMP)
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q tests/unit $(ARGS)

e2e: $(STAMP)
	$(BIN)/python -m pytest -q tests/e2e $(ARGS)

# The bench extra (the peers: RPyC, Pyro5) is installed for `make bench` only, not `make test`.
$(BENCH_STAMP): $(STAMP) pyproject.toml
	@$(BIN)/python -m pip install -q -e ".[test,dev,bench]" 2>&1 | grep -v "^WARNING: Location" || true
	@$(BIN)/python -c 'import rpyc, Pyro5' || { echo "make bench: installing .[bench] failed" >&2; exit 1; }
	@touch $@

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench $(ARGS)

CODE := sdk server tests bench examples

lint: $(STAMP)
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)
	$(BIN)/mypy

proto: $(STAMP)
	bash .ci/gen-proto sdk/snakebridge/_generated

# Regenerate into a scratch dir and compare: the committed stubs and bridge_pb2.py must match the .proto.
proto-check: $(STAMP)
	@tmp=$$(mktemp -d) && bash .ci/gen-proto $$tmp && \
	  diff -r -x __pycache__ $$tmp sdk/snakebridge/_generated && rm -rf $$tmp && \
	  echo "proto-check: generated stubs are up to date" || \
	  { echo "proto-check: sdk/snakebridge/_generated (stubs or bridge_pb2.py) is stale; run 'make proto'"; exit 1; }

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
