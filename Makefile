# The two commands of the README: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo demo-broker test install system-deps lint check bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11 or newer is needed (found $$($(PYTHON) --version))"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { echo "cannot create a virtual environment: on Debian, apt-get install python3-venv"; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,demo]'
	@touch $(STAMP)

install: $(STAMP)

## Start the simulated city and the server (OPC UA on opc.tcp://localhost:4840/scada/).
## `make demo CITY=dijon` runs the whole metropolis; ACCEL=60 runs an hour a minute.
## The bollards' and vehicles' MQTT broker: Mosquitto, installed here when that needs no
## password, else the embedded amqtt of the `demo` extra; BROKER=embedded|mosquitto|none forces one.
CITY ?= small
ACCEL ?= 1
BROKER ?= auto
demo: demo-broker $(STAMP)
	$(BIN)/scada demo --config . --city $(CITY) --acceleration $(ACCEL) --broker $(BROKER)

demo-broker:
	@scripts/install-demo-broker.sh

## Install what the tests need (Debian packages with apt-get, pip packages), check lint,
## formatting and types (ruff, mypy), and run the suite in parallel (pytest-xdist): most of a test's
## time is waiting for the servers it starts, so 4 workers on 2 cores (measured on 2 cores, load 2-3:
## 3 workers 11.1 min, CPU 120 %; 4 workers 8.4 min, 157 %; 5 workers 7.6 min, 174 %, each test
## 16 % slower than with 3: too close to the CPU's limit for a busy machine); --dist loadfile keeps a
## file's tests (and its module- and class-scoped servers) on one worker; --no-loadscope-reorder
## hands the files out in tests/conftest.py's order (the long integration files first, not last).
## XDIST= runs it serially.
XDIST ?= -n 4 --dist loadfile --no-loadscope-reorder
test: system-deps $(STAMP)
	BIN=$(BIN) scripts/lint.sh
	$(BIN)/python -m pytest $(XDIST)

lint: $(STAMP)
	BIN=$(BIN) scripts/lint.sh

system-deps:
	@scripts/install-system-deps.sh

check: $(STAMP)
	$(BIN)/scada check --config .

bench: $(STAMP)
	$(BIN)/python bench/bench_skeleton.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
