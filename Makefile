# Klaros developer commands. `make run` and `make test` work on a fresh machine: they create
# .venv, install the pinned requirements (again only when a requirements file changes), then act.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# Reinstall only when a requirements file is newer than this stamp.
STAMP := $(VENV)/.requirements-installed
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: help install run test lint fmt migrations-check clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

# python3.11 when it exists, otherwise python3 if it is 3.11 or newer.
$(PY):
	@set -e; \
	python=$$(command -v python3.11 || command -v python3 || true); \
	if [ -z "$$python" ] || ! "$$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then \
		echo "Klaros needs Python 3.11 or newer (python3.11 or python3 on PATH)" >&2; exit 1; \
	fi; \
	echo "Creating $(VENV) with $$("$$python" --version)"; \
	"$$python" -m venv $(VENV)

$(STAMP): requirements.txt requirements-dev.txt | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

install: $(STAMP) ## create .venv and install the pinned requirements (runtime + test tools)

# Development server: DEBUG on, SQLite in var/, private media in var/media, the database as task
# broker, a development encryption key generated into var/ (unless the environment says otherwise).
run: export DEBUG := true
run: export KLAROS_PUBLIC_URL ?= http://127.0.0.1:$(PORT)
run: $(STAMP) ## migrate, ensure the demo tenant, start web server + worker (Ctrl-C stops both)
	$(PY) manage.py migrate --noinput
	$(PY) manage.py bootstrap_demo
	PORT=$(PORT) $(PY) bin/run-dev

test: $(STAMP) ## ruff, migrations check, then pytest (SQLite, or PostgreSQL via DATABASE_URL)
	$(BIN)/ruff check .
	DEBUG=true $(PY) manage.py makemigrations --check --dry-run
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP) ## ruff check
	$(BIN)/ruff check .

fmt: $(STAMP) ## ruff format and safe autofixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

migrations-check: $(STAMP) ## fail when a model change has no migration
	DEBUG=true $(PY) manage.py makemigrations --check --dry-run

clean: ## remove .venv, caches and test leftovers (keeps var/: dev database, dev key, media)
	rm -rf $(VENV) .pytest_cache .ruff_cache staticfiles var/test.sqlite3* var/test-media
	find . -path ./.git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
