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
from urllib.parse import urlparse, urlunparse

from dotenv import dotenv_values

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# The embedded server's superuser and database; only used when WAREHOUSE_URL is unset.
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
        return _resolve(self.get("STATE_DIR", ".state"))

    @cached_property
    def dataset_dir(self) -> Path:
        return _resolve(self.get("DATASET_DIR", "dataset"))

    @property
    def pg_port(self) -> int:
        return int(self.get("PG_PORT", "5433"))

    @property
    def embedded(self) -> bool:
        """True when no WAREHOUSE_URL is configured and the project runs its own server."""
        return not self.get("WAREHOUSE_URL")

    @property
    def warehouse_url(self) -> str:
        """libpq URL of the warehouse database."""
        return self.get("WAREHOUSE_URL") or self.embedded_url(EMBEDDED_DATABASE)

    @property
    def store_url(self) -> str:
        """libpq URL of the shop's own database.

        Default: a `store` database next to the warehouse (on the embedded server, or on
        WAREHOUSE_URL's server), so a configured warehouse never silently pairs with a store
        on an embedded server that nothing starts.
        """
        from apparel.store import STORE_DATABASE

        return self.get("STORE_URL") or with_database(self.warehouse_url, STORE_DATABASE)

    def embedded_url(self, database: str) -> str:
        return f"postgresql://{EMBEDDED_USER}@127.0.0.1:{self.pg_port}/{database}"


def _resolve(path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else PROJECT_ROOT / p


def default_env_file() -> Path:
    """The settings file: `.env` in the checkout, or ENV_FILE's (read from the environment only,
    relative to the checkout), e.g. an empty file that keeps a developer's `.env` out of the tests."""
    return _resolve(os.environ.get("ENV_FILE") or ".env")


def load_settings(env_file: Path | None = None) -> Settings:
    """The environment wins over `.env`, so CI and Docker can override anything."""
    env_file = env_file or default_env_file()
    values: dict[str, str] = {}
    if env_file.exists():
        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    values.update(os.environ)
    return Settings(values)


def with_database(url: str, database: str) -> str:
    """The same server URL pointing at another database."""
    parsed = urlparse(url)
    return urlunparse(parsed._replace(path=f"/{database}"))


def ensure_secrets(
    generators: dict[str, Callable[[], str]], env_file: Path | None = None, example: Path | None = None
) -> list[str]:
    """Write a generated value into `.env` for each name set neither there nor in the environment.

    `.env` is created from `.env.example` when missing and kept at mode 600. Returns the names written.
    """
    env_file = env_file or default_env_file()
    example = example or PROJECT_ROOT / ".env.example"
    if not env_file.exists():
        env_file.write_text(example.read_text() if example.exists() else "")
    env_file.chmod(0o600)
    lines = env_file.read_text().splitlines()
    present: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and not key.lstrip().startswith("#"):
            present[key.strip()] = value.strip()
    written = []
    for name, generate in generators.items():
        if os.environ.get(name) or present.get(name):
            continue
        value = generate()
        for i, line in enumerate(lines):
            if line.partition("=")[0].strip() == name:
                lines[i] = f"{name}={value}"
                break
        else:
            lines.append(f"{name}={value}")
        written.append(name)
    if written:
        env_file.write_text("\n".join(lines) + "\n")
    return written
