# Superset: dashboards as code beside the pipeline. Included from the main Makefile
# (`include superset/superset.mk`); uses its PYTHON, BIN, VENV, STATE_DIR and the venv / db-up / .env targets.
# How it works: superset/README.md. The work is done by apparel/superset_setup.py.

SUPERSET_VENV := .venv-superset
SUPERSET_STAMP := $(SUPERSET_VENV)/.installed-stamp

.PHONY: superset superset-stop superset-status superset-import superset-export superset-venv superset-lock browser-deps

superset-venv: $(SUPERSET_STAMP) ## build .venv-superset from requirements/superset.txt (only when missing or stale)

# Its own environment: Superset pins SQLAlchemy 1.4, the pipeline needs 2.x.
$(SUPERSET_STAMP): requirements/superset.txt $(STAMP)
	@test -x $(SUPERSET_VENV)/bin/python || $(PYTHON) -m venv $(SUPERSET_VENV)
	@echo '*' > $(SUPERSET_VENV)/.gitignore
	$(BIN)/uv pip sync -q --python $(SUPERSET_VENV)/bin/python requirements/superset.txt
	@touch $@

superset: db-up superset-venv ## start Superset in the background, import the dashboards, print URL and login
	@$(BIN)/python -m apparel.superset_setup start

superset-stop: venv ## stop Superset
	@$(BIN)/python -m apparel.superset_setup stop

superset-status: venv ## is Superset running?
	@$(BIN)/python -m apparel.superset_setup status

superset-import: venv ## import superset/assets/ into the running Superset again (overwrites, never duplicates)
	@$(BIN)/python -m apparel.superset_setup import

superset-export: venv ## write what was changed in Superset's UI back into superset/assets/*.yaml
	@$(BIN)/python -m apparel.superset_setup export

superset-lock: venv ## re-resolve requirements/superset.txt from requirements/superset.in
	$(BIN)/uv pip compile -q --python-version 3.11 requirements/superset.in -o requirements/superset.txt

# Headless Chromium for the dashboard tests: Debian's package (Playwright cannot download its own here).
browser-deps: ## install Debian's chromium for the browser tests when missing
	@test -x /usr/bin/chromium || { \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }
	@/usr/bin/chromium --version

# The suite's Superset tests need both; `down` stops Superset before the warehouse it reads.
test: superset-venv browser-deps
down: superset-stop
