PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench

$(BIN)/adapt: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[all,dev]"
	touch $(BIN)/adapt

setup: $(BIN)/adapt

demo: setup
	rm -rf runs/demo-driving
	$(BIN)/adapt --domain driving --demo --out runs/demo-driving

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy mini_internvl_adapt domains

bench: setup
	$(BIN)/python benchmarks/tiling.py
