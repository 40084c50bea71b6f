# One command for the demo, one for the tests; each builds .venv by itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean venv

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)  ## the main job: the local runtime, then the simulator
	$(BIN)/python -m runtime.demo
	$(BIN)/python -m simulator demo

test: $(STAMP)  ## lint, then the whole test suite
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)  ## performance harness (prints tables; nothing is asserted)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
