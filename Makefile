# The README's two commands: `make demo` (set up + main job) and `make test` (set up + tests); `make lint` gates style.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint docs install clean gpu-bundle

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the project's dependencies change.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.13.0"   # CPU wheel first, so nothing pulls a CUDA build
	$(BIN)/pip install --quiet -e ".[test,tracking,docs]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fedmemes simulate $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow" $(PYTEST_ARGS)   # everything, slow multi-round runs included

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
