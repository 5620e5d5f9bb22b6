# The whole stack on one machine: Airflow 3 (api-server, scheduler, dag-processor, triggerer), Superset,
# the dbt docs site, on the warehouse PostgreSQL. Included from the main Makefile (`include stack.mk`);
# uses its BIN, VENV, STATE_DIR and the venv / db-up / manifest / superset-venv / .env targets.
# supervisord runs the services and restarts one that exits; the work is done by apparel/stack.py.
#
#   make up                  start everything, return when every service answers its health check
#   make up SUPERSET=0       the same without Superset (DOCS=0: without the dbt docs site)
#   make status / logs       each service's state, uptime, restarts, memory and health / follow the logs
#   make stack-down          stop the services (`make down` also stops Superset's own and the warehouse)
#   make up-docker           the same services in containers (docker-compose.yml)

SUPERSET ?= 1
DOCS ?= 1
# The shop simulator runs with SIMULATE=1 (.env or the command line), as under `make up`.
SIMULATE ?= $(or $(call dotenv,SIMULATE),0)
SIMULATE := $(SIMULATE)
STACK_FLAGS := $(if $(filter 0,$(SUPERSET)),--no-superset) $(if $(filter 0,$(DOCS)),--no-docs)

.PHONY: up stack-down status logs up-docker down-docker

up: db-up manifest $(if $(filter 0,$(SUPERSET)),,superset-venv) ## the whole stack: Airflow, Superset, dbt docs; returns when all are healthy
	@$(BIN)/python -m apparel.stack up $(STACK_FLAGS)

stack-down: ## stop the stack's services (the warehouse keeps running: `make down` stops it too)
	@test -x $(BIN)/python || exit 0; $(BIN)/python -m apparel.stack down

status: ## each service of the stack: state, uptime, restarts, processes, memory (RSS) and health
	@$(BIN)/python -m apparel.stack status

logs: ## follow the stack's logs (supervisord's and each service's)
	@$(BIN)/python -m apparel.stack logs

# Containers: the same .env, the same commands (python -m apparel.stack run <service>); Compose restarts them.
up-docker: venv .env ## the same stack with Docker Compose (needs a Docker engine)
	@$(BIN)/python -m apparel.stack secrets --docker
	COMPOSE_PROFILES=$(if $(filter 1,$(SIMULATE)),simulator) docker compose up -d --build --wait
	@docker compose ps

down-docker: ## stop the containers (volumes are kept)
	docker compose down
