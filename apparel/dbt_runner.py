"""Run dbt against the configured warehouse.

dbt's profile cannot parse a URL, so the one setting WAREHOUSE_URL is split
into the DBT_PG_* variables that `dbt_project/profiles.yml` reads. Make,
the tests and the Cosmos DAG all go through `dbt_env()`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from apparel.config import PROJECT_ROOT, Settings, load_settings
from apparel.store import MIRROR_SCHEMA, STORE_TABLES

DBT_PROJECT_DIR = PROJECT_ROOT / "dbt_project"
# The business marts recompute from the whole history: `business_marts` only (tag in dbt_project.yml).
WHOLE_HISTORY_TAG = "whole_history"
# Exposures (the Superset dashboards in the dbt docs' lineage) are documentation, not work: no task.
NOT_RENDERED = "resource_type:exposure"
STREAMED_SOURCE = MIRROR_SCHEMA  # the dbt source of the mirror is named after its schema
# What Cosmos asks `dbt ls` for when it lists a project itself (LoadMode.DBT_LS): what it renders from.
DBT_LS_KEYS = (
    "name",
    "unique_id",
    "resource_type",
    "depends_on",
    "original_file_path",
    "tags",
    "config",
    "fqn",
)


@dataclass(frozen=True)
class DbtSelection:
    """A dbt DAG's nodes, in dbt's selection syntax: what its build runs and what Cosmos renders."""

    select: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def args(self) -> list[str]:
        select = ["--select", *self.select] if self.select else []
        return [*select, "--exclude", *self.exclude, NOT_RENDERED]


DBT_SELECTIONS = {
    # Everything but the business marts, and so (dbt's eager test selection) but their tests.
    "transform": DbtSelection(exclude=(f"tag:{WHOLE_HISTORY_TAG}",)),
    "business_marts": DbtSelection(select=(f"tag:{WHOLE_HISTORY_TAG}",)),
    # Everything downstream of each mirrored table (Cosmos names a source `<source>.<table>`) but the
    # business marts. The staging views stay in, although replacing a view changes nothing: the
    # selection is the one of the graph the shop's changes flow through.
    "fresh_marts": DbtSelection(
        select=tuple(f"source:{STREAMED_SOURCE}.{table.name}+" for table in STORE_TABLES),
        exclude=(f"tag:{WHOLE_HISTORY_TAG}",),
    ),
}


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


def target_dir() -> Path:
    return load_settings().state_dir / "dbt" / "target"


def manifest_path() -> Path:
    return target_dir() / "manifest.json"


def dbt_ls_path(dag_id: str) -> Path:
    return target_dir() / f"ls_{dag_id}.json"


def write_render_files() -> None:
    """`dbt parse` (the manifest), then per dbt DAG the `dbt ls` output of its selection, which Cosmos
    renders the DAG from: in this process, so dbt starts once and lists from the parsed manifest."""
    import contextlib
    import io

    from dbt.cli.main import dbtRunner

    os.environ.update({**dbt_env(load_settings()), "DBT_TARGET_PATH": str(target_dir())})
    project = ["--project-dir", str(DBT_PROJECT_DIR)]
    parsed = dbtRunner().invoke(["parse", "--quiet", *project])
    if not parsed.success:
        raise RuntimeError(f"dbt parse failed: {parsed.exception}")
    runner = dbtRunner(manifest=parsed.result)
    for dag_id, selection in DBT_SELECTIONS.items():
        keys = ["--output", "json", "--output-keys", *DBT_LS_KEYS]
        # `dbt ls` prints each node besides returning it, --quiet or not.
        with contextlib.redirect_stdout(io.StringIO()):
            listed = runner.invoke(["ls", "--quiet", *project, *selection.args(), *keys])
        if not listed.success:
            raise RuntimeError(f"dbt ls for {dag_id} failed: {listed.exception}")
        # Unit tests run inside the build, before their model (one failing fails the model's task):
        # Cosmos has no task for them.
        nodes = [line for line in listed.result if json.loads(line)["resource_type"] != "unit_test"]
        dbt_ls_path(dag_id).write_text("\n".join(nodes) + "\n")
