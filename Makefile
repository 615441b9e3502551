# Two commands on a fresh machine: `make run` (set up .venv, run the smoke grid, write the report)
# and `make test`. Every install applies the exact versions pinned in constraints.txt. The
# development venv is the full install; a measuring device needs only `pip install
# 'medq-bench[device]'` (no torch).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STORE ?= results
REPORT ?= reports/index.html
GRID ?= smoke

.PHONY: install install-test run test test-slow bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[full]"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[full,test]"
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

run: install
	$(BIN)/bench run --grid $(GRID) --store $(STORE)
	$(BIN)/bench report --store $(STORE) --out $(REPORT)
	@echo "Report: $(abspath $(REPORT))"

test: install-test
	$(BIN)/python -m pytest

test-slow: install-test
	MEDQ_SLOW=1 $(BIN)/python -m pytest tests/test_paper_shaped.py tests/test_arm64_device.py

bench: install-test
	MEDQ_BENCH=1 $(BIN)/python -m pytest tests/benchmarks -o addopts="" -s --benchmark-columns=min,median,max,rounds

lint: install-test
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
