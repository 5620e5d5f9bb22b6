"""Who connects as what: the login roles, their databases and their grants.

The superuser (or, on a server of your own, an admin with CREATEROLE and CREATEDB) only bootstraps:
`apparel db start` runs `bootstrap()` on the embedded server, `make roles ADMIN_URL=...` on yours.
Each part of the project then logs in as its own role, with only what it needs:

| role            | password setting         | can                                                          |
| --------------- | ------------------------ | ------------------------------------------------------------ |
| apparel_etl     | APPAREL_ETL_PASSWORD     | owns the warehouse database: the loader's `raw`, dbt's       |
|                 |                          | `staging`, `snapshots`, `core`, `marts`; reads `raw_store`   |
| apparel_shop    | APPAREL_SHOP_PASSWORD    | owns the shop's database (the store and the simulator)       |
| apparel_stream  | APPAREL_STREAM_PASSWORD  | REPLICATION and SELECT on the shop's tables; owns `raw_store`|
|                 |                          | in the warehouse, and nothing else there                     |
| airflow         | AIRFLOW_DB_PASSWORD      | owns Airflow's metadata database                             |
| superset        | SUPERSET_DB_PASSWORD     | owns Superset's metadata database                            |
| superset_reader | SUPERSET_READER_PASSWORD | reads `core`, `marts`, `raw_store`; read-only, time-limited  |

CONNECT and TEMP on the project's databases are revoked from PUBLIC, so a role reaches only the
databases it is granted. Every statement is idempotent: run it again after changing a password.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
from dataclasses import dataclass
from urllib.parse import quote, urlparse

import psycopg
from psycopg import sql

from apparel.config import (
    EMBEDDED_DATABASE,
    Settings,
    ensure_secrets,
    load_settings,
    redact_url,
    with_database,
)

log = logging.getLogger(__name__)

ETL = "apparel_etl"
SHOP = "apparel_shop"
STREAM = "apparel_stream"
AIRFLOW = "airflow"
SUPERSET = "superset"
READER = "superset_reader"

# The role -> the setting holding its password (generated into .env on first start).
PASSWORD_SETTINGS = {
    ETL: "APPAREL_ETL_PASSWORD",
    SHOP: "APPAREL_SHOP_PASSWORD",
    STREAM: "APPAREL_STREAM_PASSWORD",
    AIRFLOW: "AIRFLOW_DB_PASSWORD",
    SUPERSET: "SUPERSET_DB_PASSWORD",
    READER: "SUPERSET_READER_PASSWORD",
}
SUPERUSER_PASSWORD = "PG_SUPERUSER_PASSWORD"

# The schemas Superset's dashboards read (the CDC mirror for the live one) and who creates their tables.
READER_SCHEMAS = {"core": ETL, "marts": ETL, "raw_store": STREAM}
# A dashboard query that runs longer is cancelled: one user cannot hold the warehouse's CPUs.
READER_STATEMENT_TIMEOUT = "1min"


def ensure_role_secrets() -> Settings:
    """The superuser's and every role's password into `.env` where missing; the settings after that."""
    names = [SUPERUSER_PASSWORD, *PASSWORD_SETTINGS.values()]
    written = ensure_secrets({name: lambda: secrets.token_urlsafe(18) for name in names})
    if written:
        log.info("generated %s into .env", ", ".join(written))
    return load_settings()


@dataclass(frozen=True)
class Databases:
    """The databases of the project on one server."""

    warehouse: str = EMBEDDED_DATABASE
    store: str | None = "store"  # None: the shop's database is elsewhere (STORE_URL)
    airflow: str = "airflow"
    superset: str = "superset"


def role_url(server_url: str, role: str, password: str, database: str | None = None) -> str:
    """`server_url`'s host and port, logged in as `role` into `database` (default: the URL's)."""
    parsed = urlparse(server_url)
    netloc = f"{quote(role, safe='')}:{quote(password, safe='')}@{parsed.hostname}"
    if parsed.port:
        netloc += f":{parsed.port}"
    return parsed._replace(netloc=netloc, path=f"/{database}" if database else parsed.path).geturl()


def bootstrap(
    admin_url: str,
    passwords: dict[str, str],
    dbs: Databases = Databases(),
    publication: str = "apparel_cdc",
    *,
    own_server: bool = False,
) -> None:
    """Create or update every role, database and grant (idempotent). `admin_url`: any database of the
    server, as a superuser (REPLICATION and a publication of a whole schema need one). `own_server`
    (the embedded one): the maintenance database `postgres` is closed to PUBLIC too; on a server of
    yours other programs may rely on reaching it."""
    missing = [PASSWORD_SETTINGS[r] for r in PASSWORD_SETTINGS if not passwords.get(r)]
    if missing:
        raise RuntimeError(f"no password for {', '.join(missing)}: run `apparel db start` (it writes them)")
    owners = {dbs.warehouse: ETL, dbs.store: SHOP, dbs.airflow: AIRFLOW, dbs.superset: SUPERSET}
    owners.pop(None, None)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for role, password in passwords.items():
            login_role(conn, role, password)
        conn.execute(sql.SQL("alter role {} with replication").format(sql.Identifier(STREAM)))
        restrict_reader(conn, READER)
        for database, owner in owners.items():
            ensure_database(conn, database, owner)
        for database in [*owners, "postgres"] if own_server else owners:
            revoke = sql.SQL("revoke connect, temporary on database {} from public")
            conn.execute(revoke.format(sql.Identifier(database)))
        _grant_connect(conn, dbs.warehouse, STREAM, READER)
        # The stream stages each batch in temporary tables before merging it into raw_store.
        conn.execute(
            sql.SQL("grant temporary on database {} to {}").format(
                *map(sql.Identifier, (dbs.warehouse, STREAM))
            )
        )
        if dbs.store:
            _grant_connect(conn, dbs.store, STREAM)
    with psycopg.connect(with_database(admin_url, dbs.warehouse), autocommit=True) as conn:
        _warehouse_grants(conn)
    if dbs.store:
        with psycopg.connect(with_database(admin_url, dbs.store), autocommit=True) as conn:
            _store_grants(conn, publication)
    log.info("roles and grants in place: %s", ", ".join(passwords))


def restrict_reader(conn: psycopg.Connection, role: str) -> None:
    """Read-only sessions with a time limit for the dashboards' role."""
    ident = sql.Identifier(role)
    # Belt and braces: even a grant given by mistake later cannot write through this role.
    conn.execute(sql.SQL("alter role {} set default_transaction_read_only = on").format(ident))
    timeout = sql.Literal(READER_STATEMENT_TIMEOUT)
    conn.execute(sql.SQL("alter role {} set statement_timeout = {}").format(ident, timeout))


def login_role(conn: psycopg.Connection, role: str, password: str) -> None:
    exists = conn.execute("select 1 from pg_roles where rolname = %s", (role,)).fetchone()
    verb = sql.SQL("alter role" if exists else "create role")
    conn.execute(
        sql.SQL("{} {} with login password {}").format(verb, sql.Identifier(role), sql.Literal(password))
    )


def _grant_connect(conn: psycopg.Connection, database: str, *roles: str) -> None:
    conn.execute(
        sql.SQL("grant connect on database {} to {}").format(
            sql.Identifier(database), sql.SQL(", ").join(map(sql.Identifier, roles))
        )
    )


def ensure_database(conn: psycopg.Connection, name: str, owner: str) -> None:
    """Create database `name` owned by `owner`, or give an existing one to `owner`."""
    ident, role = sql.Identifier(name), sql.Identifier(owner)
    if conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone():
        conn.execute(sql.SQL("alter database {} owner to {}").format(ident, role))
    else:
        conn.execute(sql.SQL("create database {} owner {}").format(ident, role))


def _warehouse_grants(conn: psycopg.Connection) -> None:
    """Each dashboard schema belongs to the role that fills it: raw_store to the stream (its tables are
    created now, as the stream, so the loader and dbt find them), core and marts to the ETL role. The
    reader reads all three; the ETL role also reads raw_store (dbt's source of the shop's orders)."""
    from apparel.store import MIRROR_SCHEMA, ensure_mirror

    for schema, owner in READER_SCHEMAS.items():
        create = sql.SQL("create schema if not exists {} authorization {}")
        conn.execute(create.format(sql.Identifier(schema), sql.Identifier(owner)))
    conn.execute(sql.SQL("set role {}").format(sql.Identifier(STREAM)))
    ensure_mirror(conn)
    conn.execute("reset role")
    for schema, owner in READER_SCHEMAS.items():
        grant_select(conn, schema, owner, [READER, ETL] if schema == MIRROR_SCHEMA else [READER])


def grant_select(conn: psycopg.Connection, schema: str, owner: str | None, roles: list[str]) -> None:
    """USAGE on `schema` and SELECT on its tables, today's and those `owner` (None: the connected role)
    creates later (dbt rebuilds its tables)."""
    ident = sql.Identifier(schema)
    to = sql.SQL(", ").join(map(sql.Identifier, roles))
    conn.execute(sql.SQL("grant usage on schema {} to {}").format(ident, to))
    conn.execute(sql.SQL("grant select on all tables in schema {} to {}").format(ident, to))
    for_role = sql.SQL("for role {} ").format(sql.Identifier(owner)) if owner else sql.SQL("")
    conn.execute(
        sql.SQL("alter default privileges {}in schema {} grant select on tables to {}").format(
            for_role, ident, to
        )
    )


def _store_grants(conn: psycopg.Connection, publication: str) -> None:
    """The stream reads the shop's tables (created later by the shop's role) and replicates them through
    a publication of the whole `public` schema: created here, before the tables exist (only a
    superuser can publish a schema; a table's publication needs its owner)."""
    grant_select(conn, "public", SHOP, [STREAM])
    if not conn.execute("select 1 from pg_publication where pubname = %s", (publication,)).fetchone():
        conn.execute(
            sql.SQL("create publication {} for tables in schema public").format(sql.Identifier(publication))
        )


def role_passwords(settings: Settings) -> dict[str, str]:
    return {role: settings.get(name) for role, name in PASSWORD_SETTINGS.items()}


def start_embedded(settings: Settings | None = None):
    """`apparel db start`: generate the passwords when missing, initialise and start the embedded
    server, then its roles, databases and grants. Returns the server."""
    from apparel.embedded_pg import EmbeddedServer, slot_wal_keep_mb

    settings = ensure_role_secrets()
    server = EmbeddedServer(
        settings.state_dir / "pgdata",
        settings.pg_port,
        settings.get(SUPERUSER_PASSWORD),
        slot_wal_keep_mb=slot_wal_keep_mb(settings),
    )
    server.start()
    dbs = Databases(store=None if settings.get("STORE_URL") else Databases.store)
    publication = settings.get("STREAM_PUBLICATION", "apparel_cdc")
    bootstrap(server.url(), role_passwords(settings), dbs, publication, own_server=True)
    return server


# ------------------------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    """`make roles ADMIN_URL=...`: the roles, databases and grants on a server of your own."""
    parser = argparse.ArgumentParser(prog="python -m apparel.roles", description=main.__doc__)
    # From the environment by default: an argument would show in `ps` (with its password).
    parser.add_argument(
        "admin_url",
        nargs="?",
        default=os.environ.get("ADMIN_URL"),
        help="a superuser's URL to any database of the server (default: ADMIN_URL)",
    )
    args = parser.parse_args(argv)
    if not args.admin_url:
        parser.error("no admin URL: set ADMIN_URL")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = ensure_role_secrets()
    try:
        bootstrap(
            args.admin_url,
            role_passwords(settings),
            publication=settings.get("STREAM_PUBLICATION", "apparel_cdc"),
        )
    except (psycopg.Error, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    host = redact_url(args.admin_url)
    print(f"roles ready on {host}; their passwords are in .env ({', '.join(PASSWORD_SETTINGS.values())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
