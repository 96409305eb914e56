# The two commands a newcomer needs: `make demo` and `make test`.
# Each creates .venv when missing and installs the project into it.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

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
test: $(STAMP)
	$(BIN)/feedrank kafka --fetch-only || echo "no local Apache Kafka: the broker tests run on the embedded broker"
	$(BIN)/python -m pytest -v --durations=10 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var build *.egg-info
