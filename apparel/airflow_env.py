"""Airflow's configuration for this project, as environment variables, in one place.

Make, `apparel dags-test` and the tests run Airflow through `airflow_env()`,
so they agree on where the DAGs, metadata and caches are.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from apparel.config import PROJECT_ROOT, Settings, load_settings

AIRFLOW = Path(sys.executable).parent / "airflow"
# Tasks Airflow runs at once. 2 cores: more parallel tasks than this only queue up on the CPU.
PARALLELISM = 4


def airflow_env(settings: Settings | None = None, home: Path | None = None) -> dict[str, str]:
    """The process environment plus Airflow settings; anything already set in the environment wins,
    except an explicit `home` (the tests' own Airflow), which also moves the SQLite metadata there."""
    settings = settings or load_settings()
    explicit_home = home is not None
    home = home or Path(os.environ.get("AIRFLOW_HOME") or settings.state_dir / "airflow")
    defaults = {
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "airflow" / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # `airflow dags test` runs in one process: SQLite is enough (`make up` uses PostgreSQL).
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__PARALLELISM": str(PARALLELISM),
        "AIRFLOW__COSMOS__CACHE_DIR": str(settings.state_dir / "cosmos"),
        # Both phone home by default; this machine and many users' have no route out.
        "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
        "AIRFLOW__USAGE_DATA_COLLECTION__ENABLED": "False",
    }
    env = dict(os.environ)
    for key, value in defaults.items():
        env.setdefault(key, value)
    env["AIRFLOW_HOME"] = str(home)
    if explicit_home:
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = defaults["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    home.mkdir(parents=True, exist_ok=True)
    return env
