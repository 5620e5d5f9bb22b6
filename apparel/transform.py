"""The dbt DAGs' parts: Cosmos configuration for the dbt project, and the marts as assets.

`transform` builds and tests the project when the extracts change, incrementally: the models that
follow what changed (staging, core, the brief's two marts). `business_marts` then rebuilds the
business marts, which rank, pair and group the whole history, once `transform` has updated the
fact. `fresh_marts` rebuilds and tests the tables downstream of the shop's streamed tables
(raw_store) whenever the stream tells Airflow that raw_store changed (the asset `SHOP_MIRROR`).

Each runs dbt in Cosmos' watcher execution mode: one `dbt build` per DAG run (the task
`dbt.dbt_producer_watcher`), so dbt starts once, and per model a task (and one for its tests) that
reports that node's status and log once the build is done (`report_after_the_build`), and runs dbt
for that node alone when retried or cleared. Cosmos renders each DAG from the `dbt ls` output of its
selection (LoadMode.DBT_LS_FILE), which `make manifest` writes (`apparel manifest`): so Cosmos renders
exactly the nodes, tests included, that dbt's own selection gives the build (the tests of a model the
build excludes, such as the business marts' reconciliations with the fact, are neither built nor
rendered), and parsing a DAG file, which Airflow does at every task start, reads a small file and
never runs dbt.

The DAGs must not build the same models at the same time. Their builds run in the Airflow pool
`dbt_warehouse` (created by `apparel.stack prepare`, i.e. `make up`; `airflow dags test` ignores
pools) and take all its slots, so one build runs at a time. The tasks that report on a build wait
outside the pool: they build nothing unless retried.
"""

from __future__ import annotations

import sys
from pathlib import Path

from airflow.sdk import Asset

from apparel.airflow_env import PARALLELISM
from apparel.airflow_notify import SHOP_MIRROR_URI
from apparel.config import load_settings
from apparel.dbt_runner import (
    DBT_PROJECT_DIR,
    DBT_SELECTIONS,
    NOT_RENDERED,
    STREAMED_SOURCE,
    dbt_env,
    dbt_ls_path,
)

# The brief's marts, kept fresh by `fresh_marts` too, within seconds of the shop's orders.
FRESH_MARTS = ("dm_revenue_by_months", "dm_perfomance_product_by_cities")
# The business marts recompute from the whole history: `business_marts` only (tag in dbt_project.yml).
BUSINESS_MARTS = ("dm_customer_segments", "dm_cohort_retention", "dm_product_affinity", "dm_market_reach")
MARTS = FRESH_MARTS + BUSINESS_MARTS
DBT_POOL = "dbt_warehouse"
# As many slots as Airflow runs tasks at once; a build takes them all.
DBT_POOL_SLOTS = PARALLELISM


def marts_assets(marts: tuple[str, ...]) -> list[Asset]:
    return [Asset(name=f"marts.{m}", uri=f"postgres://warehouse/marts/{m}") for m in marts]


FRESH_MARTS_ASSETS = marts_assets(FRESH_MARTS)
BUSINESS_MARTS_ASSETS = marts_assets(BUSINESS_MARTS)
# The shop mirror: the CDC stream posts its events through the REST API (apparel.airflow_notify).
SHOP_MIRROR = Asset(name=STREAMED_SOURCE, uri=SHOP_MIRROR_URI)
# The fact: `transform` updates it once every model and test passed; `business_marts` follows it.
FACT_ASSET = Asset(name="core.fct_transactions", uri="postgres://warehouse/core/fct_transactions")


def cosmos_configs(dag_id: str) -> dict:
    """ProjectConfig, ProfileConfig, ExecutionConfig, RenderConfig and operator_args for the
    DbtTaskGroup of the dbt DAG `dag_id`: its selection, built by one `dbt build`, each model's tests
    reported after it."""
    from cosmos import ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
    from cosmos.constants import ExecutionMode, LoadMode, TestBehavior

    listed = dbt_ls_path(dag_id)
    if not listed.exists():
        raise FileNotFoundError(f"dbt ls output missing at {listed}: run `make manifest` first")
    selection = DBT_SELECTIONS[dag_id]
    return {
        "project_config": ProjectConfig(dbt_project_path=DBT_PROJECT_DIR, project_name="apparel"),
        "profile_config": ProfileConfig(
            profile_name="apparel",
            target_name="dev",
            profiles_yml_filepath=DBT_PROJECT_DIR / "profiles.yml",
        ),
        "execution_config": ExecutionConfig(
            execution_mode=ExecutionMode.WATCHER,
            # dbt from this same environment, which the producer runs in its own process (dbtRunner).
            dbt_executable_path=str(Path(sys.executable).parent / "dbt"),
            # The producer runs the whole build: every slot of the pool the dbt DAGs share.
            setup_operator_args={"pool": DBT_POOL, "pool_slots": DBT_POOL_SLOTS},
        ),
        "render_config": RenderConfig(
            load_method=LoadMode.DBT_LS_FILE,
            dbt_ls_path=listed,
            # The producer's `dbt build --select/--exclude`: the selection the file lists.
            select=list(selection.select),
            exclude=[*selection.exclude, NOT_RENDERED],
            test_behavior=TestBehavior.AFTER_EACH,
            # We publish the marts as assets ourselves (in the DAGs); Cosmos' own needs OpenLineage.
            emit_datasets=False,
        ),
        "operator_args": dbt_run_args(),
    }


def report_after_the_build(group) -> None:
    """The tasks of the DbtTaskGroup `group` that report on its build start once the build is done,
    whatever its outcome (each then reports its own node: a failed test fails its own task).

    Cosmos (1.15) starts them beside the build in a DbtTaskGroup, waiting for its results. Neither way
    they can wait works here: `airflow dags test` runs one task at a time, in no set order, and runs a
    deferred task's trigger inline (Cosmos' default), so a report task taken before the build waits
    for a build that never starts; in `reschedule` mode, polled every second, the scheduler races the
    executor and fails a task it has just rescheduled (Airflow: "finished with state success, but the
    task instance's state attribute is queued"). After the build, a report task finds its result at
    its first look; on two cores, starting them earlier would only take CPU from dbt.
    """
    from airflow.task.trigger_rule import TriggerRule
    from cosmos.constants import PRODUCER_WATCHER_TASK_ID

    producer = group.children[f"{group.group_id}.{PRODUCER_WATCHER_TASK_ID}"]
    for task in group.roots:
        if task is not producer:
            producer >> task
            task.trigger_rule = TriggerRule.ALL_DONE


def dbt_run_args() -> dict:
    """The arguments of any Cosmos task that runs dbt."""
    return {
        # The warehouse connection split for profiles.yml; computed at parse time (reads only .env).
        "env": dbt_env(load_settings()),
        "append_env": True,
        "install_deps": False,
    }


def store_freshness():
    """A Cosmos task running `dbt source freshness` on raw_store: it warns when the stream has not
    written for 10 minutes and fails after an hour (thresholds in _raw_store__sources.yml). It only
    reads, so it needs no slot of the dbt pool, and the models do not wait for it."""
    from cosmos.constants import InvocationMode
    from cosmos.operators.local import DbtSourceLocalOperator

    return DbtSourceLocalOperator(
        task_id="store_freshness",
        project_dir=str(DBT_PROJECT_DIR),
        profile_config=cosmos_configs("fresh_marts")["profile_config"],
        select=f"source:{STREAMED_SOURCE}",
        invocation_mode=InvocationMode.DBT_RUNNER,
        **dbt_run_args(),
    )


def model_built() -> bool:
    """True once the daily `transform` has built the model (the fact exists): before that, on a
    warehouse that was never ingested, the fresh path has nothing to refresh and would only fail."""
    import psycopg

    with psycopg.connect(load_settings().warehouse_url, connect_timeout=10) as conn:
        return conn.execute("select to_regclass('core.fct_transactions') is not null").fetchone()[0]
