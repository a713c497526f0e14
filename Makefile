# Two commands do all the set-up on a machine with only python3:
#   make run   - creates .venv, installs the package with every extra, runs example_app until Ctrl-C / SIGTERM
#   make test  - creates .venv, installs the dev and server extras, installs Debian's redis-server
#                and prometheus (for promtool) when missing (as root, with apt-get), runs every test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The peers the benchmarks compare with (streaq, arq, aiomisc) get a venv of their own: what they pull
# in (rich, which structlog then uses for tracebacks) must not change the test suite's venv.
BENCH  := .venv-bench/bin

.PHONY: run test bench docs clean redis-server promtool

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

test: $(VENV)/.installed-dev redis-server promtool
	$(BIN)/python -m pytest

# The Redis tests start their own redis-server on a free port (never a system service's 6379,
# which Debian's package may start; it is harmless). Without one they skip, or fail when CI=true.
redis-server:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	    echo "no redis-server, and no apt-get as root to install it: the Redis tests will skip"; \
	  else \
	    echo "installing redis-server with apt-get"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; } >/tmp/redis-apt.log 2>&1 \
	      || { tail -n 5 /tmp/redis-apt.log; echo "apt-get install redis-server failed: the Redis tests will skip"; }; \
	  fi; }

# The /metrics tests pipe the exposition through `promtool check metrics`, which Debian ships in
# its prometheus package. Only the tool is wanted: no recommended exporter, and the Prometheus
# server the package starts under systemd is stopped and disabled at once (it listens on 9090,
# the example app's ops port). Without promtool those tests skip, or fail when CI=true.
promtool:
	@command -v promtool >/dev/null || { \
	  if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	    echo "no promtool, and no apt-get as root to install Debian's prometheus: the promtool tests will skip"; \
	  else \
	    echo "installing prometheus (for promtool) with apt-get"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } \
	      >/tmp/prometheus-apt.log 2>&1 \
	      || { tail -n 5 /tmp/prometheus-apt.log; echo "apt-get install prometheus failed: the promtool tests will skip"; }; \
	    if [ -d /run/systemd/system ]; then systemctl disable --now prometheus >/dev/null 2>&1 || true; fi; \
	  fi; }

$(BENCH)/python:
	$(PYTHON) -m venv .venv-bench
	$(BENCH)/python -m pip install --quiet --upgrade pip

bench: $(BENCH)/python redis-server
	$(BENCH)/python -m pip install --quiet -e '.[dev,all,bench]'
	$(BENCH)/python bench/boot.py
	$(BENCH)/python bench/boot_floor.py
	$(BENCH)/python bench/import_time.py
	$(BENCH)/python bench/dispatcher.py
	$(BENCH)/python bench/pipeline.py
	$(BENCH)/python bench/machine.py
	$(BENCH)/python bench/flows.py
	$(BENCH)/python bench/http_server.py
	$(BENCH)/python bench/redis_dispatcher.py
	$(BENCH)/python bench/restart.py
	$(BENCH)/python bench/lambda.py

docs: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) .venv-bench site .pytest_cache
