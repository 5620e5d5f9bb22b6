"""The stack's configuration without starting anything: secrets, Airflow's environment, supervisord's."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from apparel import stack
from apparel.config import PROJECT_ROOT, Settings, ensure_secrets, load_settings


def test_supervisord_runs_every_service_through_apparel_stack(tmp_path: Path) -> None:
    import configparser

    with pytest.raises(ValueError, match="change STATE_DIR"):
        stack.write_supervisor_config(_settings(tmp_path / "100%"), ["stream"])
    st = _settings(tmp_path)
    conf = configparser.RawConfigParser()
    conf.read(stack.write_supervisor_config(st, list(stack.ALL_SERVICES)))
    programs = [s.removeprefix("program:") for s in conf.sections() if s.startswith("program:")]
    assert tuple(programs) == stack.ALL_SERVICES
    for name in programs:
        program = conf[f"program:{name}"]
        assert program["command"] == f"{stack.VENV_BIN / 'python'} -m apparel.stack run {name}"
        assert (program["autorestart"], program["stopasgroup"], program["killasgroup"]) == ("true",) * 3
        assert int(program["stopwaitsecs"]) == stack.STOP_GRACE_SECONDS
        assert program["stdout_logfile"] == str(st.logs_dir / f"{name}.log")
    # The control socket is its owner's only.
    assert conf["unix_http_server"]["chmod"] == "0700"
    assert conf["supervisord"]["pidfile"] == str(st.pid_file)


def test_ensure_secrets_writes_only_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("# comment\nAIRFLOW_ADMIN_PASSWORD=kept\nAIRFLOW__API__SECRET_KEY=\n")
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "from-the-environment")
    monkeypatch.delenv("AIRFLOW__CORE__FERNET_KEY", raising=False)
    monkeypatch.delenv("AIRFLOW__API__SECRET_KEY", raising=False)
    monkeypatch.delenv("STREAM_AIRFLOW_PASSWORD", raising=False)
    written = stack.ensure_secrets(stack.AIRFLOW_SECRETS, env_file=env_file, example=tmp_path / "none")
    assert sorted(written) == [
        "AIRFLOW__API__SECRET_KEY",
        "AIRFLOW__CORE__FERNET_KEY",
        "STREAM_AIRFLOW_PASSWORD",
    ]
    text = env_file.read_text()
    assert "AIRFLOW_ADMIN_PASSWORD=kept\n" in text
    assert "JWT_SECRET" not in text  # the environment has it: nothing written
    assert re.search(r"^AIRFLOW__API__SECRET_KEY=\S{20,}$", text, re.M)  # the empty line was filled in
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    from cryptography.fernet import Fernet

    key = re.search(r"^AIRFLOW__CORE__FERNET_KEY=(\S+)$", text, re.M).group(1)
    Fernet(key.encode())  # a valid key
    assert stack.ensure_secrets(stack.AIRFLOW_SECRETS, env_file=env_file) == []  # idempotent


def _settings(tmp_path: Path, **values: str) -> stack.StackSettings:
    return stack.StackSettings(Settings({"STATE_DIR": str(tmp_path), "PG_PORT": "6543", **values}))


def test_airflow_env_uses_postgres_metadata_and_shared_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in list(os.environ):
        if key.startswith("AIRFLOW"):
            monkeypatch.delenv(key)
    st = _settings(
        tmp_path,
        AIRFLOW_PORT="18080",
        AIRFLOW__CORE__FERNET_KEY="fernet-from-dotenv",
        AIRFLOW__API_AUTH__JWT_SECRET="jwt-from-dotenv",
        AIRFLOW_CONN_SHOP="postgres://u@h/shop",
        AIRFLOW__CORE__PARALLELISM="3",
        AIRFLOW_DB_PASSWORD="af-pw",
        APPAREL_ETL_PASSWORD="etl-pw",
    )
    env = stack.airflow_stack_env(st)
    # Each on its own role: the metadata as `airflow`, the DAGs' warehouse connection as the ETL role.
    assert (
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        == "postgresql+psycopg://airflow:af-pw@127.0.0.1:6543/airflow"
    )
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18080/execution/"
    assert env["AIRFLOW__CORE__FERNET_KEY"] == "fernet-from-dotenv"
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == "jwt-from-dotenv"
    assert env["AIRFLOW_CONN_SHOP"] == "postgres://u@h/shop"
    assert env["AIRFLOW_CONN_WAREHOUSE"] == "postgres://apparel_etl:etl-pw@127.0.0.1:6543/warehouse"
    assert env["AIRFLOW__CORE__PARALLELISM"] == "3"  # .env wins over the defaults
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "False"
    # From apparel.airflow_env, not repeated here.
    assert env["AIRFLOW__CORE__DAGS_FOLDER"].endswith("airflow/dags")
    assert env["AIRFLOW_HOME"] == str(tmp_path / "airflow")


def test_explicit_metadata_url_wins(tmp_path: Path) -> None:
    st = _settings(tmp_path, AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="postgresql+psycopg://a@b/c")
    assert st.airflow_metadata_url == "postgresql+psycopg://a@b/c"
    st = _settings(tmp_path, WAREHOUSE_URL="postgresql://u:p@db.example:5432/dw")
    assert st.airflow_metadata_url == "postgresql+psycopg://u:p@db.example:5432/airflow"


def test_passwords_file_from_env(tmp_path: Path) -> None:
    st = _settings(tmp_path, AIRFLOW_ADMIN_USER="ops", AIRFLOW_ADMIN_PASSWORD="s3cret")
    path = stack.write_airflow_passwords(
        st, {"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(tmp_path / "p.json")}
    )
    assert path.read_text().strip() == '{"ops": "s3cret"}'
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # The stream's own login (it posts the shop mirror's asset events), with the least role that may.
    st = _settings(tmp_path, AIRFLOW_ADMIN_PASSWORD="s3cret", STREAM_AIRFLOW_PASSWORD="str3am")
    env = stack.airflow_stack_env(st)
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin,apparel_stream:op"
    assert json.loads(stack.write_airflow_passwords(st, env).read_text()) == {
        "admin": "s3cret",
        "apparel_stream": "str3am",
    }
    with pytest.raises(RuntimeError, match="AIRFLOW_ADMIN_PASSWORD"):
        stack.write_airflow_passwords(_settings(tmp_path), {})


def test_status_and_down_when_nothing_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("STATE_DIR", str(tmp_path))
    (tmp_path / "stack").mkdir()
    (tmp_path / "stack" / "supervisord.pid").write_text("999999999\n")  # stale
    assert stack.status() == 3
    assert not (tmp_path / "stack" / "supervisord.pid").exists()
    assert stack.down() == 0
    assert "not running" in capsys.readouterr().out


def test_env_file_names_the_settings_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENV_FILE replaces the checkout's .env for the Python side and for make (the stack test runs
    `make up` / `make down` with an empty one, so a developer's .env cannot change what it tests)."""
    for key in ("SIMULATE", "STORE_URL", "STATE_DIR", "X_TEST_SECRET"):
        monkeypatch.delenv(key, raising=False)
    other = tmp_path / "other.env"
    other.write_text(f"SIMULATE=1\nSTORE_URL=postgresql://u@h/shop\nSTATE_DIR={tmp_path / 'state'}\n")
    monkeypatch.setenv("ENV_FILE", str(other))
    settings = load_settings()
    assert settings.get("SIMULATE") == "1" and settings.store_url == "postgresql://u@h/shop"
    assert ensure_secrets({"X_TEST_SECRET": lambda: "generated"}) == ["X_TEST_SECRET"]
    assert "X_TEST_SECRET=generated\n" in other.read_text()
    make_env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    printed = subprocess.run(
        ["make", "-s", "--no-print-directory", "--eval", "print-state: ; @echo $(STATE_DIR)", "print-state"],
        cwd=PROJECT_ROOT,
        env=make_env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert printed.stdout.strip() == str(tmp_path / "state")
    # A file that does not exist: nothing but the environment and the defaults.
    monkeypatch.setenv("ENV_FILE", str(tmp_path / "absent.env"))
    assert load_settings().get("SIMULATE", "0") == "0"


def test_a_web_ui_on_a_non_loopback_address_gets_a_tls_warning(capsys: pytest.CaptureFixture[str]) -> None:
    for host in ("127.0.0.1", "localhost", "::1"):
        stack.warn_if_exposed("Airflow", host)
    assert capsys.readouterr().err == ""
    for host in ("0.0.0.0", "::", "192.168.1.5", "apparel.example"):
        stack.warn_if_exposed("Superset", host)
        assert "TLS" in capsys.readouterr().err, host


def test_the_scheduler_waits_for_the_api_server_its_tasks_report_to(caplog: pytest.LogCaptureFixture) -> None:
    """A real HTTP server that starts answering its health after 1.5 s: the wait ends then (not before,
    not at the timeout); with nothing listening it gives up at its timeout, saying so."""
    import http.server
    import threading
    import time

    from apparel.embedded_pg import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}/execution/"
    began = time.monotonic()
    stack._wait_for_api_server(url, timeout=1)
    assert 1 <= time.monotonic() - began < 5
    assert "did not answer in 1 s" in caplog.text

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/api/v2/monitor/health" else 404)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", port), Health)
    threading.Timer(1.5, server.serve_forever).start()
    try:
        began = time.monotonic()
        stack._wait_for_api_server(url, timeout=30)
        assert 1.5 <= time.monotonic() - began < 10
    finally:
        server.shutdown()
        server.server_close()
