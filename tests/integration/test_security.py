"""Nobody gets in where they don't belong, tried as an attacker would.

A server of its own, set up as `apparel db start` sets up the embedded one (scram-sha-256, a socket
folder only its account can enter, the roles and grants of apparel.roles), then: another local
account, a process without the password, and each role trying what its part must not do.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import errors, pq

from apparel import roles
from apparel.config import load_settings, with_database
from apparel.embedded_pg import EmbeddedServer, bin_dir, free_port
from apparel.store import ensure_store
from apparel.stream import run_stream
from tests.conftest import DATASET_DIR, load_all, scalar


@dataclass(frozen=True)
class Secured:
    server: EmbeddedServer
    passwords: dict[str, str]
    dbs: roles.Databases

    def url(self, role: str, database: str) -> str:
        return roles.role_url(self.server.url(), role, self.passwords[role], database)


@pytest.fixture(scope="module")
def secured() -> Iterator[Secured]:
    # Under the state folder: as root the server runs as `pgserver`, who must reach it.
    data_dir = load_settings().state_dir / "test-pg" / f"secured-{os.getpid()}"
    server = EmbeddedServer(data_dir, free_port(), secrets.token_urlsafe(18))
    server.start()
    passwords = {role: secrets.token_urlsafe(18) for role in roles.PASSWORD_SETTINGS}
    try:
        roles.bootstrap(server.url(), passwords, own_server=True)
        yield Secured(server, passwords, roles.Databases())
    finally:
        server.destroy()


def refused(url: str) -> str:
    """The error of a connection that must fail (the test fails if it succeeds)."""
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(url, connect_timeout=5).close()
    return str(caught.value)


def test_no_password_or_a_wrong_one_is_refused(secured: Secured) -> None:
    port = secured.server.port
    for user in ("postgres", roles.ETL, roles.READER):
        assert "no password supplied" in refused(f"postgresql://{user}@127.0.0.1:{port}/warehouse")
        assert "password authentication failed" in refused(
            f"postgresql://{user}:wrong@127.0.0.1:{port}/warehouse"
        )
    assert scalar(secured.server.url(), "select current_user") == "postgres"  # with it: in


def _as_nobody(args: list[str], password: str | None) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "PGCONNECT_TIMEOUT": "5"}
    if password:
        env["PGPASSWORD"] = password
    psql = [str(bin_dir() / "psql"), "-X", "-w", "-At", "-c", "select current_user", *args]
    return subprocess.run(
        ["runuser", "-u", "nobody", "--", *psql], env=env, capture_output=True, text=True, timeout=30
    )


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"), reason="needs root to act as `nobody`")
def test_another_local_account_is_refused(secured: Secured) -> None:
    """Another OS account (`nobody`) gets nothing without the password, over TCP or the unix socket;
    with the password over TCP it does get in, so the refusals are not the harness failing."""
    server, port = secured.server, str(secured.server.port)
    tcp = ["-h", "127.0.0.1", "-p", port, "-U", "postgres", "-d", "postgres"]
    no_password = _as_nobody(tcp, None)
    assert no_password.returncode != 0 and "no password supplied" in no_password.stderr
    # The socket's folder is the server account's alone: not even the right password gets through it.
    assert server.socket_dir.stat().st_mode & 0o777 == 0o700
    assert any(p.name.startswith(".s.PGSQL") for p in server.socket_dir.iterdir())
    socket = _as_nobody(["-h", str(server.socket_dir), "-p", port, "-U", "postgres"], server.password)
    assert socket.returncode != 0 and "Permission denied" in socket.stderr, socket.stderr
    with_password = _as_nobody(tcp, server.password)
    assert with_password.returncode == 0 and with_password.stdout.strip() == "postgres", with_password.stderr


def test_superset_reader_reads_the_dashboards_schemas_and_nothing_else(secured: Secured) -> None:
    with psycopg.connect(secured.url(roles.ETL, "warehouse"), autocommit=True) as etl:
        etl.execute("create table if not exists marts.reader_probe (x int)")
        etl.execute("insert into marts.reader_probe values (1)")
    reader_url = secured.url(roles.READER, "warehouse")
    with psycopg.connect(reader_url, autocommit=True) as conn:
        assert conn.execute("select count(*) from marts.reader_probe").fetchone()[0] >= 1
        assert conn.execute("select count(*) from raw_store.shop_order").fetchone()[0] == 0
        assert conn.execute("show statement_timeout").fetchone()[0] == roles.READER_STATEMENT_TIMEOUT
        attempts = {
            # Its read-only default is a session setting it could change: the grants must hold anyway.
            "insert": "begin read write; insert into marts.reader_probe values (2)",
            "create in marts": "begin read write; create table marts.evil (x int)",
            "create in public": "begin read write; create table public.evil (x int)",
            "create schema": "begin read write; create schema evil",
            "temp table": "begin read write; create temp table evil (x int)",
            "read raw": "select count(*) from raw._load_log",
            "read a file": "select pg_read_file('/etc/passwd')",
            "run a program": "begin read write; copy (select 1) to program 'id'",
        }
        for what, statement in attempts.items():
            with pytest.raises((errors.InsufficientPrivilege, errors.UndefinedTable)) as caught:
                conn.execute(statement)
            if conn.info.transaction_status != pq.TransactionStatus.IDLE:
                conn.execute("rollback")
            assert caught.type is errors.InsufficientPrivilege or what == "read raw", (what, caught.value)
    for database in ("store", "airflow", "superset", "postgres"):
        assert "CONNECT privilege" in refused(with_database(reader_url, database)), database


def test_each_role_reaches_only_its_databases(secured: Secured) -> None:
    """The dbt/loader role cannot read Airflow's or Superset's metadata or the shop; the shop's role
    cannot reach the warehouse; Airflow's and Superset's roles only their own databases."""
    expected = {
        roles.ETL: {"warehouse"},
        roles.SHOP: {"store"},
        roles.STREAM: {"warehouse", "store"},
        roles.AIRFLOW: {"airflow"},
        roles.SUPERSET: {"superset"},
    }
    for role, allowed in expected.items():
        for database in ("warehouse", "store", "airflow", "superset"):
            url = secured.url(role, database)
            if database in allowed:
                assert scalar(url, "select current_user") == role
            else:
                assert "CONNECT privilege" in refused(url), (role, database)


def test_the_pipeline_runs_on_least_privilege(secured: Secured, tmp_path: Path) -> None:
    """The loader as `apparel_etl`, the shop as `apparel_shop`, the stream as `apparel_stream`: each
    does its job with its grants, and the stream cannot write outside raw_store nor into the shop."""
    warehouse = secured.url(roles.ETL, "warehouse")
    load_all(warehouse, DATASET_DIR)
    assert scalar(warehouse, "select count(*) from raw.orders") == 7100
    ensure_store(secured.url(roles.SHOP, "store"), DATASET_DIR, create_database=False)
    stream_store, stream_wh = secured.url(roles.STREAM, "store"), secured.url(roles.STREAM, "warehouse")
    stats = run_stream(stream_store, stream_wh, until_caught_up=True)
    assert stats.initial_rows > 0
    assert scalar(warehouse, "select count(*) from raw_store.shop_order") == 7100  # the ETL role reads it
    with psycopg.connect(stream_wh, autocommit=True) as conn:
        for statement in (
            "insert into raw._load_log (source) values ('x')",
            "create table core.evil (x int)",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)
    with psycopg.connect(stream_store, autocommit=True) as conn:
        assert conn.execute("select count(*) from shop_order").fetchone()[0] == 7100
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("delete from shop_order")
