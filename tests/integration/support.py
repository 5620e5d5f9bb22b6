"""Helpers of the integration tests: a later extract, and what an `airflow dags test` run left in its
Airflow metadata database (the `airflow_env` fixture's SQLite): the run's id from its output, its
tasks' states, the asset events it published, the runs it triggered."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path
from typing import Any

FINISHED = re.compile(
    r"DagRun Finished: dag_id=(?P<dag_id>[^,]+), .*?run_id=(?P<run_id>[^,]+), .*?state=(?P<state>\w+)"
)


def append_an_order(folder: Path) -> None:
    """A later orders.csv in `folder`: one more order, a copy of the last one with the next id."""
    path = folder / "orders.csv"
    lines = path.read_text().splitlines()
    fields = lines[-1].split(",")
    fields[0] = str(int(fields[0]) + 1)
    path.write_text("\n".join([*lines, ",".join(fields)]) + "\n")


def finished_run(run: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    """(run_id, state) of the DAG run `airflow dags test` printed as finished."""
    found = FINISHED.search(run.stdout)
    assert found, f"no finished DAG run in the output:\n{run.stdout[-3000:]}"
    return found["run_id"], found["state"]


def _rows(env: dict[str, str], sql: str, params: tuple = ()) -> list[tuple[Any, ...]]:
    path = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///")
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return conn.execute(sql, params).fetchall()


def asset_events(env: dict[str, str], dag_id: str, run_id: str) -> dict[str, str]:
    """Asset name -> the task that published it, for every asset event of one run."""
    rows = _rows(
        env,
        "select a.name, e.source_task_id from asset_event e join asset a on a.id = e.asset_id"
        " where e.source_dag_id = ? and e.source_run_id = ?",
        (dag_id, run_id),
    )
    names = [name for name, _ in rows]
    assert len(names) == len(set(names)), f"an asset published twice in one run: {rows}"
    return dict(rows)


def task_states(env: dict[str, str], dag_id: str, run_id: str) -> dict[str, str]:
    return dict(
        _rows(
            env, "select task_id, state from task_instance where dag_id = ? and run_id = ?", (dag_id, run_id)
        )
    )


def xcom(env: dict[str, str], dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
    rows = _rows(
        env,
        "select value from xcom where dag_id = ? and run_id = ? and task_id = ? and key = ?",
        (dag_id, run_id, task_id, key),
    )
    return json.loads(rows[0][0]) if rows else None


def dag_run(env: dict[str, str], dag_id: str, run_id: str) -> dict[str, Any] | None:
    """A run of `dag_id` as the metadata database holds it (state, run_type, conf), or None."""
    rows = _rows(
        env,
        "select state, run_type, triggered_by, conf from dag_run where dag_id = ? and run_id = ?",
        (dag_id, run_id),
    )
    if not rows:
        return None
    state, run_type, triggered_by, conf = rows[0]
    return {"state": state, "run_type": run_type, "triggered_by": triggered_by, "conf": json.loads(conf)}


def run_ids(env: dict[str, str], dag_id: str) -> set[str]:
    return {r[0] for r in _rows(env, "select run_id from dag_run where dag_id = ?", (dag_id,))}
