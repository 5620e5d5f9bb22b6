"""Run dbt against the configured warehouse.

dbt's profile cannot parse a URL, so the one setting WAREHOUSE_URL is split
into the DBT_PG_* variables that `dbt_project/profiles.yml` reads. Make,
the tests and the Cosmos DAG all go through `dbt_env()`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

from apparel.config import PROJECT_ROOT, Settings, load_settings

DBT_PROJECT_DIR = PROJECT_ROOT / "dbt_project"


def dbt_env(settings: Settings, url: str | None = None) -> dict[str, str]:
    parsed = urlparse(url or settings.warehouse_url)
    return {
        "DBT_PG_HOST": parsed.hostname or "127.0.0.1",
        "DBT_PG_PORT": str(parsed.port or 5432),
        "DBT_PG_USER": unquote(parsed.username or "apparel_etl"),
        "DBT_PG_PASSWORD": unquote(parsed.password or ""),
        "DBT_PG_DBNAME": parsed.path.lstrip("/") or "postgres",
        "DBT_PROFILES_DIR": str(DBT_PROJECT_DIR),
        # Keep dbt's own files out of the source tree's parent and away from other runs.
        "DBT_LOG_PATH": str(settings.state_dir / "dbt" / "logs"),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    }


def run_dbt(
    args: list[str], *, url: str | None = None, target_path: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """Run `dbt <args>` in the project folder with the warehouse's connection settings."""
    settings = load_settings()
    env = {**os.environ, **dbt_env(settings, url)}
    # Outside the source tree by default: the manifest Cosmos reads lives here (see apparel.transform).
    env["DBT_TARGET_PATH"] = str(target_path or settings.state_dir / "dbt" / "target")
    dbt = Path(sys.executable).parent / "dbt"
    return subprocess.run([str(dbt), *args], cwd=DBT_PROJECT_DIR, env=env, check=check)


def downstream_of_sources(names: list[str]) -> list[str]:
    """dbt's selection of every node downstream of the raw tables `names` (reloaded since the last
    build), tests included: what an incremental build has to run when only those changed."""
    return [f"source:raw.{name}+" for name in names]
