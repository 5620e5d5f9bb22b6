"""Settings, read from the environment first and from `.env` second.

One place decides where the warehouse is, where the extracts are and where
local state lives, so the loader, Airflow, dbt and the tests agree.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from urllib.parse import quote, urlparse, urlunparse

from apparel.envfile import read_env_file, set_values

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# The embedded server's superuser (bootstrap only: apparel.roles) and database; only used when
# WAREHOUSE_URL is unset.
EMBEDDED_USER = "postgres"
EMBEDDED_DATABASE = "warehouse"


@dataclass(frozen=True)
class Settings:
    """What the pipeline needs to know about its surroundings."""

    values: dict[str, str]

    def get(self, name: str, default: str = "") -> str:
        return self.values.get(name) or default

    @cached_property
    def state_dir(self) -> Path:
        """Git-ignored folder for the embedded server, Airflow's metadata and logs."""
        return resolve_path(self.get("STATE_DIR", ".state"))

    @cached_property
    def dataset_dir(self) -> Path:
        return resolve_path(self.get("DATASET_DIR", "dataset"))

    @property
    def pg_port(self) -> int:
        return int(self.get("PG_PORT", "5433"))

    @property
    def embedded(self) -> bool:
        """True when no WAREHOUSE_URL is configured and the project runs its own server."""
        return not self.get("WAREHOUSE_URL")

    @property
    def warehouse_url(self) -> str:
        """libpq URL of the warehouse database, as the loader and dbt log in (embedded: `apparel_etl`)."""
        from apparel.roles import ETL

        return self.get("WAREHOUSE_URL") or self.embedded_url(EMBEDDED_DATABASE, ETL)

    @property
    def store_url(self) -> str:
        """libpq URL of the shop's own database.

        Default: a `store` database next to the warehouse (on the embedded server, or on
        WAREHOUSE_URL's server), so a configured warehouse never silently pairs with a store
        on an embedded server that nothing starts. The embedded one logs in as the shop's role `apparel_shop`.
        """
        from apparel.roles import SHOP
        from apparel.store import STORE_DATABASE

        if url := self.get("STORE_URL"):
            return url
        if self.embedded:
            return self.embedded_url(STORE_DATABASE, SHOP)
        return with_database(self.warehouse_url, STORE_DATABASE)

    @property
    def stream_store_url(self) -> str:
        """The CDC stream's login to the store: STREAM_STORE_URL, else `apparel_stream` on the embedded
        server, else STORE_URL's (a role with REPLICATION and SELECT on the shop's tables)."""
        from apparel.roles import STREAM
        from apparel.store import STORE_DATABASE

        if url := self.get("STREAM_STORE_URL"):
            return url
        if self.embedded and not self.get("STORE_URL"):
            return self.embedded_url(STORE_DATABASE, STREAM)
        return self.store_url

    @property
    def stream_warehouse_url(self) -> str:
        """The CDC stream's login to the warehouse (it writes `raw_store` only): STREAM_WAREHOUSE_URL,
        else `apparel_stream` on the embedded server, else WAREHOUSE_URL's."""
        from apparel.roles import STREAM

        if url := self.get("STREAM_WAREHOUSE_URL"):
            return url
        return self.embedded_url(EMBEDDED_DATABASE, STREAM) if self.embedded else self.warehouse_url

    def embedded_url(self, database: str, role: str) -> str:
        """`role`'s URL to `database` on the embedded server, its password from `.env`."""
        from apparel.roles import PASSWORD_SETTINGS, SUPERUSER_PASSWORD

        setting = SUPERUSER_PASSWORD if role == EMBEDDED_USER else PASSWORD_SETTINGS[role]
        password = quote(self.get(setting), safe="")
        return f"postgresql://{role}:{password}@127.0.0.1:{self.pg_port}/{database}"


def resolve_path(path: str) -> Path:
    """A setting's path: `~` expanded, relative ones to the checkout."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else PROJECT_ROOT / p


def default_env_file() -> Path:
    """The settings file: `.env` in the checkout, or ENV_FILE's (read from the environment only,
    relative to the checkout), e.g. an empty file that keeps a developer's `.env` out of the tests."""
    return resolve_path(os.environ.get("ENV_FILE") or ".env")


def load_settings(env_file: Path | None = None) -> Settings:
    """The environment wins over `.env`, so CI and Docker can override anything."""
    env_file = env_file or default_env_file()
    values = read_env_file(env_file)
    values.update(os.environ)
    return Settings(values)


def redact_url(url: str, mask: str = "***") -> str:
    """The URL with its password masked, for printing and logging (`mask=""`: without a password, as
    psql takes it, asking for the password or reading it from PGPASSWORD / ~/.pgpass)."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    credentials, _, host = parsed.netloc.rpartition("@")
    user = credentials.partition(":")[0]
    return urlunparse(parsed._replace(netloc=f"{user}{':' + mask if mask else ''}@{host}"))


def with_database(url: str, database: str) -> str:
    """The same server URL pointing at another database."""
    parsed = urlparse(url)
    return urlunparse(parsed._replace(path=f"/{database}"))


def ensure_secrets(
    generators: dict[str, Callable[[], str]], env_file: Path | None = None, example: Path | None = None
) -> list[str]:
    """Write a generated value into `.env` for each name set neither there nor in the environment.

    `.env` is created from `.env.example` when missing; it is written atomically and at mode 600
    (apparel.envfile). Returns the names written.
    """
    env_file = env_file or default_env_file()
    example = example or PROJECT_ROOT / ".env.example"
    present = read_env_file(env_file)
    missing = {
        name: generate()
        for name, generate in generators.items()
        if not (os.environ.get(name) or present.get(name))
    }
    if missing or not env_file.exists():
        set_values(env_file, missing, template=example)
    else:
        env_file.chmod(0o600)
    return list(missing)
