# Django Apparel analytics. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
SCALE ?= 10
SEED ?= 42

# Settings come from the environment, then .env (see .env.example), as in apparel/config.py.
# .env is not `include`d: its empty WAREHOUSE_URL= would override one set in the environment.
# Make itself needs only these few; `?=` keeps an environment value. ENV_FILE names another settings
# file than .env (apparel/config.py reads it from the environment; make exports a command-line one).
# apparel/envfile.py is the one parser of .env (`export`, quotes, comments), run with the system Python.
ENV_FILE ?= .env
dotenv = $(shell $(PYTHON) apparel/envfile.py $(ENV_FILE) $(1) 2>/dev/null)
STATE_DIR ?= $(or $(call dotenv,STATE_DIR),./.state)
DBT_DOCS_PORT ?= $(or $(call dotenv,DBT_DOCS_PORT),8081)
# Read once (`?=` alone would run the parser at every use).
STATE_DIR := $(STATE_DIR)
DBT_DOCS_PORT := $(DBT_DOCS_PORT)

STAMP := $(VENV)/.installed-stamp

.PHONY: help venv run test format down db-up db-status roles store generate bench-ingest bench-transform bench-stream bench-orchestration bench-freshness lock clean airflow-init manifest dbt-build docs

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

venv: $(STAMP) ## build .venv from the locked pins (only when missing or stale)

$(STAMP): requirements/main.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip sync -q --python $(BIN)/python requirements/main.txt
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	@touch $@

# Mode 600 from the start: the secrets are generated into it.
$(ENV_FILE):
	@(umask 077 && cp .env.example $@) && echo "created $@ from .env.example"

db-up: venv $(ENV_FILE) ## start the embedded warehouse (or check WAREHOUSE_URL's server)
	@$(BIN)/apparel db start

# On a server of your own (WAREHOUSE_URL): ADMIN_URL is a superuser's URL, used once and not stored.
roles: venv $(ENV_FILE) ## create the project's roles, databases and grants on your server: make roles ADMIN_URL=postgresql://admin@host/postgres
	@test -n "$(ADMIN_URL)" || { echo "usage: make roles ADMIN_URL=postgresql://<superuser>@<host>:<port>/postgres"; exit 2; }
	@$(BIN)/python -m apparel.roles  # reads ADMIN_URL from the environment (make exports it), not argv

store: db-up ## create the shop's database (STORE_URL, default: `store` on the embedded server), seed it when empty
	@$(BIN)/apparel store init

db-status: venv ## is the warehouse running?
	@$(BIN)/apparel db status

# Airflow's configuration (DAGs folder, SQLite metadata in the state folder, ...) is in apparel/airflow_env.py.
airflow-init: venv
	@mkdir -p $(STATE_DIR)/logs
	@$(BIN)/apparel airflow db migrate > $(STATE_DIR)/logs/airflow-db-migrate.log 2>&1 \
		|| (tail -20 $(STATE_DIR)/logs/airflow-db-migrate.log; exit 1)

run: db-up airflow-init manifest ## the pipeline: the shop's store, Airflow ingests the 7 extracts, the stream catches up, dbt (Cosmos) builds the model and the business marts
	@$(BIN)/apparel store init
	@$(BIN)/apparel dags-test ingest_dataset
	@$(BIN)/apparel report
	@$(BIN)/apparel stream --until-caught-up
	@$(BIN)/apparel dags-test transform
	@$(BIN)/apparel dags-test business_marts
	@$(BIN)/apparel marts
	@echo "connect: psql $$($(BIN)/apparel db url)  (password: APPAREL_ETL_PASSWORD in .env, unless WAREHOUSE_URL is set)"

MANIFEST := $(STATE_DIR)/dbt/target/manifest.json
DBT_SOURCES := $(shell find dbt_project -name '*.sql' -o -name '*.yml' -o -name '*.md' -o -name '*.csv' 2>/dev/null | grep -v -e target/ -e logs/)

manifest: $(MANIFEST) ## dbt parse, and the `dbt ls` of each dbt DAG's selection, which Cosmos renders it from (no database needed)

# apparel/dbt_runner.py holds the dbt DAGs' selections.
$(MANIFEST): $(STAMP) $(DBT_SOURCES) apparel/sources.py apparel/dbt_runner.py
	@$(BIN)/apparel manifest

docs: db-up manifest ## dbt docs: generate the site (models, columns, lineage) and serve it on DBT_DOCS_PORT
	$(BIN)/apparel dbt docs generate --quiet
	@echo "dbt docs on http://127.0.0.1:$(DBT_DOCS_PORT) (Ctrl-C to stop)"
	$(BIN)/apparel dbt docs serve --port $(DBT_DOCS_PORT) --host 127.0.0.1 --no-browser

dbt-build: db-up manifest ## dbt build (all models and tests) straight from dbt, without Airflow
	$(BIN)/apparel dbt build

test: venv $(ENV_FILE) manifest ## lint, format check and the whole test suite on a PostgreSQL the suite starts itself
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

format: venv ## apply ruff's fixes and format
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

down: venv ## stop what make started (Superset, then the embedded warehouse)
	@$(BIN)/apparel db stop

generate: venv ## write scale SCALE extracts into bench-data/scale-SCALE/ (SCALE=1 rewrites dataset/)
	$(BIN)/apparel generate --scale $(SCALE) --seed $(SEED) --out $(if $(filter 1,$(SCALE)),dataset,bench-data/scale-$(SCALE))

bench-ingest: venv ## compare our loader with psql \copy and pandas.to_sql at SCALE (default 10)
	$(BIN)/python -m apparel.bench_ingest --scale $(SCALE) --seed $(SEED)

bench-transform: venv ## dbt build from scratch, then incremental steps (extracts, shop) at SCALES (default "10 100 1000")
	$(BIN)/python -m apparel.bench_transform --scales $(or $(SCALES),10 100 1000) --seed $(SEED)

bench-orchestration: db-up airflow-init manifest ## transform (Cosmos watcher) under `airflow dags test` and the scheduler against a plain dbt build (ROUNDS=3)
	$(BIN)/python -m apparel.bench_orchestration --rounds $(or $(ROUNDS),3)

bench-stream: venv ## CDC stream at 100, 1000, 5000 orders/s (BENCH_STREAM_ARGS="--seconds 20"): lag, rows compared
	$(BIN)/python -m apparel.bench_stream $(BENCH_STREAM_ARGS)

bench-freshness: db-up manifest ## shop order to fct_transactions and dm_revenue_by_months under the stack (make up) at 5 and 100 orders/s (BENCH_FRESHNESS_ARGS="--seconds 60")
	$(BIN)/python -m apparel.bench_freshness $(BENCH_FRESHNESS_ARGS)

lock: ## re-resolve requirements/main.txt from requirements/main.in
	$(BIN)/uv pip compile -q --python-version 3.11 requirements/main.in -o requirements/main.txt

clean: down ## stop and delete all local state (warehouse data, Airflow metadata)
	rm -rf $(STATE_DIR) bench-data

# Superset (its own venv, dashboards as code, browser tests): targets and their wiring into test/down.
include superset/superset.mk

# The whole stack (`make up`, Airflow services, Superset, dbt docs under supervisord) and its compose file.
include stack.mk
down: stack-down
