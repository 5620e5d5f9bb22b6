"""The dbt DAGs' parts: Cosmos configuration for the dbt project, and the marts as assets.

`transform` builds and tests the project when the extracts change, incrementally: the models that
follow what changed (staging, core, the brief's two marts). `business_marts` then rebuilds the
business marts, which rank, pair and group the whole history, once `transform` has updated the
fact. `fresh_marts` rebuilds and tests the tables downstream of the shop's streamed tables
(raw_store) whenever the stream tells Airflow that raw_store changed (the asset `SHOP_MIRROR`).
Cosmos reads the manifest that `make manifest` (`dbt parse`) writes, so parsing a DAG file never
runs dbt or touches the database.

The DAGs must not build the same models at the same time. Their dbt tasks run in the Airflow
pool `dbt_warehouse` (created by `apparel.stack prepare`, i.e. `make up`; `airflow dags test`
ignores pools): a transform or business_marts task takes one of its slots, a fresh_marts task
takes all of them. So the daily builds keep their parallelism, and a fresh_marts task runs only
when no other dbt task runs, and the other way round.
"""

from __future__ import annotations

import sys
from pathlib import Path

from airflow.sdk import Asset

from apparel.airflow_env import PARALLELISM
from apparel.airflow_notify import SHOP_MIRROR_URI
from apparel.config import load_settings
from apparel.dbt_runner import DBT_PROJECT_DIR, dbt_env
from apparel.store import MIRROR_SCHEMA, STORE_TABLES

# The brief's marts, kept fresh by `fresh_marts` too, within seconds of the shop's orders.
FRESH_MARTS = ("dm_revenue_by_months", "dm_perfomance_product_by_cities")
# The business marts recompute from the whole history: `business_marts` only (tag in dbt_project.yml).
WHOLE_HISTORY_TAG = "whole_history"
BUSINESS_MARTS = ("dm_customer_segments", "dm_cohort_retention", "dm_product_affinity", "dm_market_reach")
MARTS = FRESH_MARTS + BUSINESS_MARTS
# Exposures (the Superset dashboards in the dbt docs' lineage) are documentation, not work: no task.
NOT_RENDERED = ["resource_type:exposure"]
STREAMED_SOURCE = MIRROR_SCHEMA  # the dbt source of the mirror is named after its schema
DBT_POOL = "dbt_warehouse"
# As many slots as Airflow runs tasks at once.
DBT_POOL_SLOTS = PARALLELISM


def marts_assets(marts: tuple[str, ...]) -> list[Asset]:
    return [Asset(name=f"marts.{m}", uri=f"postgres://warehouse/marts/{m}") for m in marts]


FRESH_MARTS_ASSETS = marts_assets(FRESH_MARTS)
BUSINESS_MARTS_ASSETS = marts_assets(BUSINESS_MARTS)
# The shop mirror: the CDC stream posts its events through the REST API (apparel.airflow_notify).
SHOP_MIRROR = Asset(name=MIRROR_SCHEMA, uri=SHOP_MIRROR_URI)
# The fact: `transform` updates it once every model and test passed; `business_marts` follows it.
FACT_ASSET = Asset(name="core.fct_transactions", uri="postgres://warehouse/core/fct_transactions")


def manifest_path() -> Path:
    return load_settings().state_dir / "dbt" / "target" / "manifest.json"


def cosmos_configs(select: list[str] | None = None, exclude: list[str] | None = None) -> dict:
    """ProjectConfig, ProfileConfig, ExecutionConfig and RenderConfig for DbtTaskGroup/DbtDag: the
    models `select` picks (all by default) but those `exclude` names, each tested after it runs."""
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
            select=select or [],
            exclude=[*(exclude or []), *NOT_RENDERED],
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
            # One slot of the pool it shares with fresh_marts (see the module's docstring).
            "pool": DBT_POOL,
        },
    }


def fresh_marts_configs() -> dict:
    """Cosmos configuration of `fresh_marts`: only the models downstream of the streamed tables.

    The staging views stay in, although replacing a view changes nothing: Cosmos links a model only
    to rendered parents, and without them dim_customers would not wait for base_customers. The
    business marts are left out: they recompute from the whole history (tag `whole_history`):
    `business_marts` builds them. Each model's tests run right after it, so nothing the fresh path
    builds goes untested. dbt runs inside the task's own process (dbtRunner), which saves a Python
    start and dbt's imports per model.
    """
    from cosmos import ExecutionConfig, RenderConfig
    from cosmos.constants import InvocationMode, LoadMode, TestBehavior

    configs = cosmos_configs()
    configs["render_config"] = RenderConfig(
        load_method=LoadMode.DBT_MANIFEST,
        # Everything downstream of each mirrored table (Cosmos names a source `<source>.<table>`).
        select=[f"source:{STREAMED_SOURCE}.{table.name}+" for table in STORE_TABLES],
        # The business marts' tests that also read the fact are still rendered (Cosmos adds every test
        # of a rendered model), but Cosmos passes this exclude on to their `dbt test`, and dbt knows
        # their tag (dbt_project.yml): they run in `business_marts`, here they select nothing.
        exclude=[f"tag:{WHOLE_HISTORY_TAG}", *NOT_RENDERED],
        test_behavior=TestBehavior.AFTER_EACH,
        # As in `transform`: a test reading two models waits for both (see cosmos_configs).
        should_detach_multiple_parents_tests=True,
        emit_datasets=False,
    )
    configs["execution_config"] = ExecutionConfig(invocation_mode=InvocationMode.DBT_RUNNER)
    # All the pool's slots: no dbt task of `transform` runs beside a fresh_marts task.
    configs["operator_args"] = {**configs["operator_args"], "pool_slots": DBT_POOL_SLOTS}
    return configs


def store_freshness():
    """A Cosmos task running `dbt source freshness` on raw_store: it warns when the stream has not
    written for 10 minutes and fails after an hour (thresholds in _raw_store__sources.yml). It only
    reads, so it needs no slot of the dbt pool, and the models do not wait for it."""
    from cosmos.constants import InvocationMode
    from cosmos.operators.local import DbtSourceLocalOperator

    configs = cosmos_configs()
    operator_args = {k: v for k, v in configs["operator_args"].items() if k != "pool"}
    return DbtSourceLocalOperator(
        task_id="store_freshness",
        project_dir=str(DBT_PROJECT_DIR),
        profile_config=configs["profile_config"],
        select=f"source:{STREAMED_SOURCE}",
        invocation_mode=InvocationMode.DBT_RUNNER,
        **operator_args,
    )


def model_built() -> bool:
    """True once the daily `transform` has built the model (the fact exists): before that, on a
    warehouse that was never ingested, the fresh path has nothing to refresh and would only fail."""
    import psycopg

    with psycopg.connect(load_settings().warehouse_url, connect_timeout=10) as conn:
        return conn.execute("select to_regclass('core.fct_transactions') is not null").fetchone()[0]
