"""The `transform` DAG's parts: Cosmos configuration for the dbt project, and the marts as assets.

Cosmos reads the manifest that `make manifest` (`dbt parse`) writes, so parsing
the DAG file never runs dbt or touches the database.
"""

from __future__ import annotations

import sys
from pathlib import Path

from airflow.sdk import Asset

from apparel.config import load_settings
from apparel.dbt_runner import DBT_PROJECT_DIR, dbt_env

MARTS = ("dm_revenue_by_months", "dm_perfomance_product_by_cities")
MARTS_ASSETS = [Asset(name=f"marts.{m}", uri=f"postgres://warehouse/marts/{m}") for m in MARTS]


def manifest_path() -> Path:
    return load_settings().state_dir / "dbt" / "target" / "manifest.json"


def cosmos_configs() -> dict:
    """ProjectConfig, ProfileConfig, ExecutionConfig and RenderConfig for DbtTaskGroup/DbtDag."""
    from cosmos import ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
    from cosmos.constants import ExecutionMode, LoadMode, TestBehavior

    manifest = manifest_path()
    if not manifest.exists():
        raise FileNotFoundError(f"dbt manifest missing at {manifest}: run `make manifest` (dbt parse) first")
    settings = load_settings()
    return {
        "project_config": ProjectConfig(
            dbt_project_path=DBT_PROJECT_DIR, manifest_path=manifest, project_name="apparel"
        ),
        "profile_config": ProfileConfig(
            profile_name="apparel",
            target_name="dev",
            profiles_yml_filepath=DBT_PROJECT_DIR / "profiles.yml",
        ),
        # dbt from this same environment: several times faster per task than a second virtualenv.
        "execution_config": ExecutionConfig(
            execution_mode=ExecutionMode.LOCAL, dbt_executable_path=str(Path(sys.executable).parent / "dbt")
        ),
        "render_config": RenderConfig(
            load_method=LoadMode.DBT_MANIFEST,
            test_behavior=TestBehavior.AFTER_EACH,
            # Tests that read two models (relationships, reconciliations) get their own task after both;
            # otherwise Cosmos runs them with one parent, possibly before the other model exists.
            should_detach_multiple_parents_tests=True,
            # We publish the marts as assets ourselves (below); Cosmos' own needs OpenLineage.
            emit_datasets=False,
        ),
        "operator_args": {
            # The warehouse connection split for profiles.yml; computed at parse time (reads only .env).
            "env": dbt_env(settings),
            "append_env": True,
            "install_deps": False,
        },
    }
