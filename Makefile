# imaged developer commands. `make run` and `make test` are the two a newcomer needs.

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
SERVICES := deploy/local/services.sh

.PHONY: install services services-down services-status run test lint typecheck unit test-long clean

$(STAMP): pyproject.toml tests/plugin/pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq python3-venv)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]' -e tests/plugin
	@touch $(STAMP)

install: $(STAMP)  ## create the virtualenv and install imaged with its dev tools

services: $(STAMP)  ## install (if missing) and start RabbitMQ and the MongoDB-compatible server on 127.0.0.1
	PYTHON=$(PY) bash $(SERVICES) up

services-down:
	bash $(SERVICES) down

services-status:
	PYTHON=$(PY) bash $(SERVICES) status

run: services  ## start everything and the daemon (the emulator when no provider key is configured)
	$(VENV)/bin/imaged run --simulate-without-keys

lint: $(STAMP)
	$(VENV)/bin/ruff check imaged tests
	$(VENV)/bin/ruff format --check imaged tests
	$(VENV)/bin/shellcheck --norc --shell=bash --severity=style $(SERVICES)

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)  ## the unit tests alone: no services, seconds
	$(VENV)/bin/pytest tests/unit -q

test: services lint typecheck  ## lint, types, and the whole test suite against the real services
	$(VENV)/bin/pytest

test-long: services  ## the long reliability variants (hundreds of tasks, minutes)
	$(VENV)/bin/pytest tests/e2e --long

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
