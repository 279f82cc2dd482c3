# The two commands of the README: `make demo` and `make test`. Both set up everything
# they need (a virtual environment with the pinned dependencies) on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
PYTEST_ARGS ?=
# Tests run on PostgreSQL when DATABASE_URL is set, or when one answers on 127.0.0.1:5432
# (trust auth, user postgres); otherwise on SQLite, with the PostgreSQL tests skipped.
LOCAL_PG_URL := postgres://postgres@127.0.0.1:5432/laoshi

.PHONY: install demo test lint

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	DJANGO_SETTINGS_MODULE=config.settings.local $(PY) manage.py migrate --noinput
	DJANGO_SETTINGS_MODULE=config.settings.local $(PY) manage.py load_demo
	DJANGO_SETTINGS_MODULE=config.settings.local HF_HUB_OFFLINE=1 $(PY) manage.py build_base_model
	DJANGO_SETTINGS_MODULE=config.settings.local $(PY) manage.py rundemo --port $(PORT)

test: install
	@if [ -z "$$DATABASE_URL" ] && $(PY) -c "import socket; socket.create_connection(('127.0.0.1', 5432), 1)" 2>/dev/null; then \
		export DATABASE_URL=$(LOCAL_PG_URL); echo "make test: PostgreSQL at $$DATABASE_URL"; \
	fi; \
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
