# Two commands do all the set-up on a machine with only python3:
#   make run   - creates .venv, installs the package with every extra, runs example_app until Ctrl-C / SIGTERM
#   make test  - creates .venv, installs the dev and server extras, runs every test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test bench docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[all]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,all]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/python -m example_app

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/boot.py
	$(BIN)/python bench/import_time.py
	$(BIN)/python bench/dispatcher.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/machine.py
	$(BIN)/python bench/http.py

docs: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) site .pytest_cache
