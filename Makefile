# The two commands of README.md. Both create .venv with pip when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Exact versions used by CI and the demo; pyproject.toml only declares lower bounds.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint format clean-venv smoke-install

$(BIN)/cnnlab: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[dev]' $(TORCH_PINS)
	touch $(BIN)/cnnlab

# Datasets: --data-dir, else $$CNNLAB_DATA, else ./data. Where a shared data folder sits beside the checkout
# (as in CI), the demo uses it rather than downloading.
SHARED_DATA := $(wildcard ../shared/data)

demo: $(BIN)/cnnlab
	$(if $(SHARED_DATA),CNNLAB_DATA=$${CNNLAB_DATA:-$(abspath $(SHARED_DATA))}) MPLBACKEND=Agg $(BIN)/cnnlab answers --quick

test: $(BIN)/cnnlab
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/deptry src
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

# A plain `pip install .` (no extras) in a fresh venv trains a model: every import of that path is a declared
# dependency. CI runs it after `make test` (.ci/run); it needs MNIST ($$CNNLAB_DATA) and a few minutes.
CORE_VENV := .venv-core
smoke-install:
	rm -rf $(CORE_VENV) build
	$(PYTHON) -m venv $(CORE_VENV)
	$(CORE_VENV)/bin/pip install -q --upgrade pip
	$(CORE_VENV)/bin/pip install -q $(TORCH_PINS)
	$(CORE_VENV)/bin/pip install -q . $(TORCH_PINS)
	cd $(CORE_VENV) && $(if $(SHARED_DATA),CNNLAB_DATA=$${CNNLAB_DATA:-$(abspath $(SHARED_DATA))}) MPLBACKEND=Agg \
		bin/cnnlab train mnist --recipe quick --epochs 1 --output runs --name smoke --quiet
	rm -rf $(CORE_VENV) build

lint: $(BIN)/cnnlab
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

clean-venv:
	rm -rf $(VENV)
