# ethml — every set-up step is a target here; the README's commands call `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
NODE_BIN := node_modules/.bin

.PHONY: setup venv node contracts models native demo test test-contracts test-python lint typecheck gas bench-pow clean

setup: venv node

## Python virtualenv with ethml installed in editable mode (builds the native core).
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml setup.py build_native.py $(wildcard native/*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

## Node packages: pinned solc-js, Foundry binaries, OpenZeppelin, ipfs-only-hash.
node: node_modules/.installed
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

## Recompile the contracts into the artifacts shipped in src/ethml/chain/artifacts.
contracts: node
	node tools/compile_contracts.js

## Rebuild the cffi extension in place after editing native/.
native: venv
	$(PY) -m pip install --quiet -e '.[dev]'

test: test-contracts test-python lint typecheck

test-contracts: node
	$(NODE_BIN)/forge test

# Two workers, a test file per worker at a time (module-scoped deployments stay in one process), the
# slow files first (tests/conftest.py). `PYTEST_WORKERS=0 make test-python` runs in one process.
PYTEST_WORKERS ?= 2
test-python: setup
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: venv
	$(BIN)/ruff check src tests benchmarks tools models examples build_native.py
	$(BIN)/ruff format --check src tests benchmarks tools models examples build_native.py

typecheck: venv
	$(BIN)/mypy

## Retrain the bundled models (deterministic) and rewrite models/manifest.json.
models: venv
	$(PY) models/build_models.py

## The gas tables in docs/gas-table.md: the oracle's transactions, then the training tasks'.
gas: setup
	$(PY) benchmarks/gas_table.py --out docs/gas-table.md
	$(PY) benchmarks/training_gas.py --out docs/gas-table.md --append

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache src/ethml/_native*.so src/ethml/_native.c

## The main job: the whole oracle in one process on the embedded chain (see README).
demo: venv
	$(BIN)/ethml demo

## The proof-of-work benchmark (every path, 1..N threads, the Python reference).
bench-pow: venv
	$(BIN)/ethml bench-pow
