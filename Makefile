# Two entry points: `make demo` (a local multi-peer mesh doing real work) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/hivemesh: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

.PHONY: install demo test lint bench
install: $(BIN)/hivemesh

demo: install
	$(BIN)/hivemesh demo

lint: install
	$(BIN)/ruff check .

test: install lint
	$(BIN)/pytest -q

bench: install
	$(BIN)/python benchmarks/gossip_latency.py
	$(BIN)/python benchmarks/blob_throughput.py
	$(BIN)/python benchmarks/market_overhead.py
