# The README's two commands: `make demo` (set up + main job) and `make test` (set up + tests); `make lint` gates style.
# This machine sets PYTHONDONTWRITEBYTECODE=1 (CI too, by its times). With pip's --no-compile below, nothing would
# ever be cached: every process (each ClientApp, Ray actor, test subprocess) would compile torch, ray and flwr from
# source again, 11-13 s of CPU per start in a fresh clone instead of 4-5. Unset, Python writes the .pyc of what it
# imports, once.
unexport PYTHONDONTWRITEBYTECODE
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint docs install clean gpu-bundle

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the project's dependencies change. One resolver pass, torch pinned to its CPU wheel (a bare
# torch pulls a multi-GB CUDA build). --no-compile: pip would byte-compile every installed file (torch, ray, mlflow:
# tens of thousands); Python compiles only what it imports, once (PYTHONDONTWRITEBYTECODE unset above).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --no-compile "torch==2.13.0" -e ".[test,tracking,docs,sweep]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fedmemes simulate $(ARGS)

# pytest-xdist workers (0 = one process). The same tree, same 2-core machine, nothing else running, 2026-12-07, 992
# tests: one process 1,292 s (`time`: 74% of one core on average; the slow tests wait on Ray, heartbeats and child
# processes), 2 workers 858 s, 3 workers 926 s (they only take turns). tests/xdist_plan.py keeps the Ray runs on one
# worker and the deployments on one, each one at a time.
TEST_WORKERS ?= 2

test: $(STAMP)   # everything, slow multi-round runs included
	$(BIN)/python -m pytest -q -m "slow or not slow" -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder $(PYTEST_ARGS)

# The lint and type gate (CI runs it before the tests): ruff's rules, ruff's format, mypy --strict on fedmemes/.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The docs site (docs/, mkdocs.yml) into site/, offline; --strict: a broken link or a page missing from nav fails.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet   # the banner names a successor; nothing to fix

# What the lent GPU machine lacks (wheels, MiniLM in fp16) in gpu-bundle/; there: `bash gpu-bundle/run.sh` (README).
gpu-bundle: $(STAMP)
	$(BIN)/python benchmarks/gpu_bundle.py build $(ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache .mypy_cache .ruff_cache gpu-bundle site
