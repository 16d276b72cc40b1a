# The README's two commands: `make demo` and `make test`. Both build .venv from scratch when
# it is missing or older than pyproject.toml, so a fresh clone needs nothing installed by hand.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Extras installed into .venv. `libvirt` builds libvirt-python against libvirt-dev (see .ci/run);
# `amqp` is aio-pika for the RabbitMQ transport; `postgres` is asyncpg for the PostgreSQL
# store. `make test EXTRAS=test` leaves them out, and the libvirt, RabbitMQ and PostgreSQL tests
# then skip, saying why.
EXTRAS ?= test,libvirt,amqp,postgres

.PHONY: demo test lint typecheck unit bench clean diagrams-check

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/ism simulate

test: lint typecheck unit diagrams-check

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/.installed
	$(BIN)/mypy

unit: $(BIN)/.installed
	$(BIN)/python -m pytest

# CI fails on a stale diagram: diagrams/ must be what `ism diagram --write` makes of the table.
diagrams-check: $(BIN)/.installed
	$(BIN)/ism diagram --check

bench: $(BIN)/.installed
	$(BIN)/ism bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
