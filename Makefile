# One command for the demo, one for the tests; each builds .venv by itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: demo test lint bench chromium clean venv

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,browser]'
	touch $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]' || echo "some peers (ray, ipyparallel) could not be installed; they will be skipped"
	touch $(BENCH_STAMP)

venv: $(STAMP)

# The browser test drives a system Chromium; install it when we can (root + apt), else it skips.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium for the browser test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not found and cannot be installed here: the browser test will be skipped"; fi; }

demo: $(STAMP)  ## the main job: the local runtime, then a policy comparison in the simulator
	$(BIN)/python -m runtime.demo
	$(BIN)/python -m simulator demo

test: $(STAMP) chromium  ## lint, then the whole test suite (slow and browser tests included)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(BENCH_STAMP)  ## performance harness (prints tables; nothing is asserted)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
