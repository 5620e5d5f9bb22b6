"""Superset's configuration for Django Apparel: every value comes from the environment.

Superset loads this file through SUPERSET_CONFIG_PATH (set by `apparel.superset_setup`, which
`make superset` and the tests call). Nothing secret lives here: the secret key, the admin
password and the warehouse reader's password are generated into `.env` on first start.

| variable | default | meaning |
| --- | --- | --- |
| SUPERSET_SECRET_KEY | (required) | signs sessions and encrypts connection secrets in the metadata DB |
| SUPERSET_DATABASE_URL | SQLite in $STATE_DIR/superset/ | Superset's own metadata database (SQLAlchemy URL) |
| SUPERSET_READER_USER | superset_reader | the read-only PostgreSQL role the warehouse connection logs in as |
| SUPERSET_READER_PASSWORD | (required) | its password, handed over at connect time, never stored |
| SUPERSET_WAREHOUSE_HOST, _PORT, _DB | (required) | the only database that password is handed to |
| SUPERSET_PORT | 8088 | the web server's port (read by the launcher; here for the links Superset builds) |
| STATE_DIR | ./.state | git-ignored local state |
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine.url import URL

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _state_dir() -> Path:
    path = Path(os.environ.get("STATE_DIR") or ".state").expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


SUPERSET_STATE_DIR = _state_dir() / "superset"
SUPERSET_STATE_DIR.mkdir(parents=True, exist_ok=True)
DATA_DIR = str(SUPERSET_STATE_DIR)

# No fallback: Superset refuses to start with its well-known default key, and so do we, here and not
# only in the launcher (gunicorn or `superset` started by hand read this file too).
SECRET_KEY = os.environ.get("SUPERSET_SECRET_KEY", "")
MIN_SECRET_KEY_LENGTH = 32
if len(SECRET_KEY) < MIN_SECRET_KEY_LENGTH:
    raise RuntimeError(
        f"SUPERSET_SECRET_KEY is missing or shorter than {MIN_SECRET_KEY_LENGTH} characters: "
        "`make superset` generates one into .env"
    )

# The metadata database. The launcher points this at a `superset` database on the embedded
# warehouse server when the project runs its own PostgreSQL (see superset/README.md).
SQLALCHEMY_DATABASE_URI = os.environ.get("SUPERSET_DATABASE_URL") or (
    f"sqlite:///{SUPERSET_STATE_DIR / 'superset.db'}?check_same_thread=false"
)
if SQLALCHEMY_DATABASE_URI.startswith("postgresql://"):
    SQLALCHEMY_DATABASE_URI = SQLALCHEMY_DATABASE_URI.replace("postgresql://", "postgresql+psycopg2://", 1)

READER_USER = os.environ.get("SUPERSET_READER_USER") or "superset_reader"
# Where the reader's password may go: the warehouse only (a connection a user adds with this user
# name and another host, e.g. a server of theirs, must not receive it).
WAREHOUSE = (
    os.environ.get("SUPERSET_WAREHOUSE_HOST", ""),
    int(os.environ.get("SUPERSET_WAREHOUSE_PORT") or 5432),
    os.environ.get("SUPERSET_WAREHOUSE_DB", ""),
)


def lookup_password(url: URL) -> str | None:
    """The warehouse connection's password, from the environment at connect time.

    The connection's URI (in YAML and in the metadata DB) has no password. Superset calls this
    for every connection it opens; other databases a user adds keep working when their URI
    carries no password (a limitation of this hook: Superset then stores none for them).
    """
    if url.username == READER_USER and (url.host, url.port or 5432, url.database) == WAREHOUSE:
        return os.environ.get("SUPERSET_READER_PASSWORD") or None
    return None


SQLALCHEMY_CUSTOM_PASSWORD_STORE = lookup_password

SUPERSET_WEBSERVER_PORT = int(os.environ.get("SUPERSET_PORT") or 8088)
APP_NAME = "Django Apparel"

# Rupiah: d3's "$" format prints "Rp " with thousands separators (`$,.0f` -> Rp 22,746,740,000).
D3_FORMAT = {"decimal": ".", "thousands": ",", "grouping": [3], "currency": ["Rp ", ""]}
CURRENCIES = ["IDR", "USD", "EUR"]

# Small caches in the state folder so two gunicorn workers share chart results for five minutes.
_CACHE_DIR = str(SUPERSET_STATE_DIR / "cache")
CACHE_CONFIG = {"CACHE_TYPE": "FileSystemCache", "CACHE_DIR": _CACHE_DIR, "CACHE_DEFAULT_TIMEOUT": 300}
DATA_CACHE_CONFIG = {**CACHE_CONFIG, "CACHE_KEY_PREFIX": "data_"}

# Local tool: no stack traces shown to users.
SHOW_STACKTRACE = False

# The login rate limiter needs a storage; in-memory is right for one local instance.
RATELIMIT_STORAGE_URI = "memory://"
