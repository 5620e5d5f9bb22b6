"""docker-compose.yml, checked without a Docker engine: what it reads, mounts, runs and publishes
must agree with .env.example, the repository and apparel.stack (the commands supervisord runs)."""

from __future__ import annotations

import argparse
import re

import pytest
import yaml

from apparel import roles, stack
from apparel.config import PROJECT_ROOT, Settings
from tests.conftest import example_settings

COMPOSE = PROJECT_ROOT / "docker-compose.yml"
ENV_EXAMPLE = PROJECT_ROOT / ".env.example"
# The container port each published service listens on, and the setting naming its host port.
PUBLISHED = {
    "airflow-api": ("AIRFLOW_PORT", 8080),
    "superset": ("SUPERSET_PORT", 8088),
    "dbt-docs": ("DBT_DOCS_PORT", 8081),
    "postgres": ("PG_PORT", 5432),
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_services(compose: dict) -> None:
    assert set(compose["services"]) == {"postgres", "init", *stack.ALL_SERVICES}
    assert set(compose["volumes"]) == {"pgdata", "state"}


def test_every_variable_it_reads_is_in_env_example() -> None:
    read = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE.read_text()))
    missing = read - set(example_settings())
    assert not missing, f"docker-compose.yml reads {sorted(missing)}, which .env.example does not list"


def test_same_commands_as_make_up(compose: dict) -> None:
    for name in stack.ALL_SERVICES:
        service = compose["services"][name]
        assert service["command"] == stack.service_command(name), name
        assert service["healthcheck"]["test"] == ["CMD", "python", "-m", "apparel.stack", "check", name]
        assert service["depends_on"] == {"init": {"condition": "service_completed_successfully"}}
    roles_then_init = compose["services"]["init"]["command"][-1]
    assert " python -m apparel.roles && " in roles_then_init
    assert roles_then_init.endswith("&& exec python -m apparel.stack init")
    # The sub-commands exist in the CLI with these arguments.
    parser = argparse.ArgumentParser()
    stack.add_arguments(parser)
    for name in stack.ALL_SERVICES:
        assert parser.parse_args(["run", name]).service == name
        assert parser.parse_args(["check", name]).service == name
    assert parser.parse_args(["init"]).stack_command == "init"


def test_ports_match_the_stack(compose: dict) -> None:
    example = example_settings()
    st = stack.StackSettings(Settings({}))
    assert (st.airflow_port, st.docs_port, st.superset().port) == (8080, 8081, 8088)
    env = compose["x-env"]
    for name, (setting, container_port) in PUBLISHED.items():
        (mapping,) = compose["services"][name]["ports"]
        match = re.fullmatch(r"127\.0\.0\.1:\$\{(\w+):-(\d+)\}:(\d+)", mapping)
        assert match, mapping
        assert match.group(1) == setting
        assert int(match.group(3)) == container_port
        # The default host port is .env.example's, so the URLs `make up` prints hold for containers.
        assert match.group(2) == example[setting], setting
        if name != "postgres":
            assert env[setting] == str(container_port)


def test_mounts_and_build_files_exist(compose: dict) -> None:
    app = compose["x-app"]
    assert (PROJECT_ROOT / app["build"]["context"] / app["build"]["dockerfile"]).is_file()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (PROJECT_ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"
        if service.get("env_file"):
            # .env is git-ignored: `make up-docker` creates it from .env.example.
            assert service["env_file"] == ".env" and ENV_EXAMPLE.exists()
    dockerfile = (PROJECT_ROOT / app["build"]["dockerfile"]).read_text()
    for path in re.findall(r"requirements/[\w.]+\.txt", dockerfile):
        assert (PROJECT_ROOT / path).is_file(), path
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    uv = re.search(r"^UV_VERSION := (\S+)", makefile, re.M).group(1)
    assert f"uv=={uv}" in dockerfile


def test_postgres_is_18_with_logical_wal(compose: dict) -> None:
    pg = compose["services"]["postgres"]
    assert pg["image"] == "postgres:18"
    assert "wal_level=logical" in pg["command"]
    assert pg["volumes"] == ["pgdata:/var/lib/postgresql"]


def test_containers_point_at_the_postgres_service(compose: dict) -> None:
    env = compose["x-env"]
    assert "@postgres:5432/warehouse" in env["WAREHOUSE_URL"]
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres:5432/airflow")
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-api:8080/execution/"
    for host in ("AIRFLOW_HOST", "SUPERSET_HOST", "DBT_DOCS_HOST"):
        assert env[host] == "0.0.0.0"


def test_make_targets(compose: dict) -> None:
    mk = (PROJECT_ROOT / "stack.mk").read_text()
    assert re.search(r"^up-docker:", mk, re.M) and "docker compose up" in mk
    assert "apparel.stack secrets --docker" in mk


def test_stream_always_simulator_on_its_profile(compose: dict) -> None:
    services = compose["services"]
    assert "profiles" not in services["stream"]
    assert services["simulator"]["profiles"] == ["simulator"]
    assert stack.OPTIONAL_SERVICES == ("simulator",)
    # The shop's database is on the postgres service; the init service creates and seeds it.
    assert compose["x-env"]["STORE_URL"].endswith("@postgres:5432/store")
    mk = (PROJECT_ROOT / "stack.mk").read_text()
    assert "COMPOSE_PROFILES=$(if $(filter 1,$(SIMULATE)),simulator) docker compose up" in mk


def test_each_service_logs_in_as_its_own_role(compose: dict) -> None:
    """No shared `postgres` password: each URL names its role and that role's own password setting;
    only the init service (apparel.roles, as `make roles`) uses the superuser's."""
    env = compose["x-env"]
    expected = {
        "WAREHOUSE_URL": roles.ETL,
        "STORE_URL": roles.SHOP,
        "STREAM_STORE_URL": roles.STREAM,
        "STREAM_WAREHOUSE_URL": roles.STREAM,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": roles.AIRFLOW,
        "SUPERSET_DATABASE_URL": roles.SUPERSET,
    }
    for key, role in expected.items():
        login = re.match(r"postgresql(?:\+\w+)?://(\w+):\$\{(\w+)", env[key])
        assert login and login.groups() == (role, roles.PASSWORD_SETTINGS[role]), (key, env[key])
    assert "POSTGRES_PASSWORD" not in yaml.safe_dump(env)
    assert "POSTGRES_PASSWORD" in compose["services"]["init"]["command"][-1]
    assert "scram-sha-256" in compose["services"]["postgres"]["environment"]["POSTGRES_INITDB_ARGS"]
