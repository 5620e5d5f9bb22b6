# Django Apparel analytics. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
SCALE ?= 10
SEED ?= 42

# Settings come from the environment, then .env (see .env.example); these are the fallbacks.
-include .env
STATE_DIR ?= ./.state
export STATE_DIR

# Airflow runs from the project: metadata (SQLite) and logs in the state folder, our DAGs only.
export AIRFLOW_HOME := $(abspath $(STATE_DIR))/airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(abspath airflow/dags)
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN ?= sqlite:///$(AIRFLOW_HOME)/airflow.db
export AIRFLOW__COSMOS__CACHE_DIR := $(abspath $(STATE_DIR))/cosmos
export AIRFLOW__CORE__PARALLELISM ?= 4

STAMP := $(VENV)/.installed-stamp

.PHONY: help venv run test lint format down db-up db-status generate bench-ingest lock clean airflow-init

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

venv: $(STAMP) ## build .venv from the locked pins (only when missing or stale)

$(STAMP): requirements/main.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip sync -q --python $(BIN)/python requirements/main.txt
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	@touch $@

.env:
	@cp .env.example .env && echo "created .env from .env.example"

db-up: venv .env ## start the embedded warehouse (or check WAREHOUSE_URL's server)
	@$(BIN)/apparel db start

db-status: venv ## is the warehouse running?
	@$(BIN)/apparel db status

airflow-init: venv
	@mkdir -p $(AIRFLOW_HOME)
	@$(BIN)/airflow db migrate > $(AIRFLOW_HOME)/db-migrate.log 2>&1 || (tail -20 $(AIRFLOW_HOME)/db-migrate.log; exit 1)

run: db-up airflow-init ## the pipeline: ingest the 7 extracts with Airflow (airflow dags test), print the tables
	@$(BIN)/apparel dags-test ingest_dataset
	@$(BIN)/apparel report
	@echo "connect: psql $$($(BIN)/apparel db url)"

test: venv .env ## lint, format check and the whole test suite on a PostgreSQL the suite starts itself
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

format: venv ## apply ruff's fixes and format
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

down: venv ## stop what make started (the embedded warehouse)
	@$(BIN)/apparel db stop

generate: venv ## write scale SCALE extracts into dataset-SCALE/ (SCALE=1 rewrites the committed dataset/)
	$(BIN)/apparel generate --scale $(SCALE) --seed $(SEED) --out $(if $(filter 1,$(SCALE)),dataset,bench-data/scale-$(SCALE))

bench-ingest: venv ## compare our loader with psql \copy and pandas.to_sql at SCALE (default 10)
	$(BIN)/python -m apparel.bench_ingest --scale $(SCALE) --seed $(SEED)

lock: ## re-resolve requirements/main.txt from requirements/main.in
	$(BIN)/uv pip compile -q --python-version 3.11 requirements/main.in -o requirements/main.txt

clean: down ## stop and delete all local state (warehouse data, Airflow metadata)
	rm -rf $(STATE_DIR) bench-data
