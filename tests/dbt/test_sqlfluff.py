"""The dbt project's SQL passes sqlfluff (dbt templater) — part of `make test`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from apparel.config import PROJECT_ROOT, load_settings
from apparel.dbt_runner import dbt_env

pytestmark = pytest.mark.slow


def test_sql_is_lint_clean(fresh_db: str) -> None:
    # The dbt templater compiles each model as dbt does, which needs a warehouse connection.
    env = {**os.environ, **dbt_env(load_settings(), fresh_db)}
    sqlfluff = Path(sys.executable).parent / "sqlfluff"
    paths = ["dbt_project/models", "dbt_project/snapshots", "dbt_project/tests", "dbt_project/macros"]
    run = subprocess.run(
        [str(sqlfluff), "lint", *paths],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
