# The two commands a newcomer needs: `make demo` and `make test`.
# Each creates .venv when missing and installs the project into it.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-long install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/feedrank demo

# The broker tests run on a local Apache Kafka: its jars are fetched once (Maven, deploy/kafka/pom.xml)
# into ~/.cache/feedrank/kafka. Without Java 17+ or Maven they fall back to the embedded broker.
# `make test` leaves out the tests marked `long` (reliability scenarios: a minute of load, broker restarts,
# a 3-node failover, the embedded broker's outage and restarts, a rebalance; two hours of replayed
# traffic); `make test-long` runs exactly those. CI (.ci/run) runs both.
test: $(STAMP)
	$(BIN)/feedrank kafka --fetch-only || echo "no local Apache Kafka: the broker tests run on the embedded broker"
	$(BIN)/python -m pytest -v --durations=10 -m "not long" $(PYTEST_ARGS)

test-long: $(STAMP)
	$(BIN)/feedrank kafka --fetch-only || echo "no local Apache Kafka: the broker tests run on the embedded broker"
	$(BIN)/python -m pytest -v --durations=10 -m long $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var build *.egg-info
