"""Orchestration benchmark: the `transform` DAG under Airflow against a plain `dbt build` of the same work.

`make bench-orchestration` (ROUNDS=3 by default) times, on the configured warehouse, in turn and round
after round, so that each method meets the same machine load:

1. plain dbt: `dbt build` of the selection `transform` builds (everything but the business marts,
   `apparel.dbt_runner.DBT_SELECTIONS`), from the command line as `make dbt-build` runs it;
2. `airflow dags test transform` (as `make run` runs it): the command's wall time, and the DAG run's
   duration that Airflow records (the command also starts Airflow and parses the DAGs first);
3. the running scheduler (`make up`): `transform` triggered through Airflow's REST API, from the
   trigger to the run's end as the API reports it. It uses a running stack, or starts one without
   Superset and the docs site (`apparel.stack up --no-superset --no-docs`) and stops it at the end.
   While it measures, `fresh_marts` and `business_marts` are paused (and unpaused afterwards when they
   were running), so that no other dbt run shares the pool or the cores with `transform`.

Every run is incremental on a model that is already built (a first, untimed `dbt build` makes sure of
it): what each `transform` after an ingest pays besides the changed rows. Each line of the table gives
the median and the range over the rounds, and the ratio of the medians to plain dbt's. The machine's
load average is printed before and after. A second table says where the last run of each way spent
its time: the one `dbt build` (the producer task), and the tasks that report on it (how many, how long
each ran, how long each waited between being queued and starting, how long after the build the last
one ended). Figures only: nothing is asserted (`--no-scheduler` leaves the scheduler out,
`--no-dags-test` the `airflow dags test` runs).
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import time
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

import requests
from rich.console import Console
from rich.table import Table

from apparel.airflow_env import AIRFLOW, airflow_env
from apparel.config import load_settings, redact_url
from apparel.dbt_runner import DBT_SELECTIONS, run_dbt
from apparel.transform import model_built

DAG_ID = "transform"
# The DAGs that would run dbt beside `transform` on a running stack (fresh_marts every minute,
# business_marts after each transform): paused while the scheduler is measured.
QUIET_DAGS = ("fresh_marts", "business_marts")
FINISHED = re.compile(r"DagRun Finished: .*?run_id=([^,]+), .*?run_duration=([\d.]+), state=(\w+)")
PLAIN_DBT = ["build", *DBT_SELECTIONS[DAG_ID].args(), "--quiet"]
PRODUCER = "dbt.dbt_producer_watcher"

console = Console()


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def time_plain_dbt() -> float:
    started = time.monotonic()
    run_dbt(PLAIN_DBT)
    return time.monotonic() - started


def utc(value: str | None) -> datetime | None:
    """A time from Airflow's metadata (UTC, with or without its offset)."""
    return datetime.fromisoformat(value).replace(tzinfo=UTC) if value else None


@dataclass
class TaskTimes:
    """When a task instance of a run was queued, started (its first start, when rescheduled) and ended."""

    task_id: str
    queued: datetime | None
    started: datetime | None
    ended: datetime | None

    @classmethod
    def parse(cls, task_id: str, queued: str | None, started: str | None, ended: str | None) -> TaskTimes:
        return cls(task_id, utc(queued), utc(started), utc(ended))


def breakdown(label: str, run_started: datetime, tasks: list[TaskTimes]) -> list[str]:
    """Where one run's time went: the build (the producer task), and the tasks that report on it."""
    producer = next(t for t in tasks if t.task_id == PRODUCER)
    reporters = [t for t in tasks if t.task_id.startswith("dbt.") and t is not producer and t.started]
    ran = [(t.ended - t.started).total_seconds() for t in reporters if t.ended]
    waited = [(t.started - t.queued).total_seconds() for t in reporters if t.queued]
    last_end = max(t.ended for t in reporters if t.ended)
    return [
        label,
        f"{(producer.started - run_started).total_seconds():.1f} s",
        f"{(producer.ended - producer.started).total_seconds():.1f} s",
        str(len(reporters)),
        f"{statistics.median(ran):.1f} s ({sum(ran):.0f} s)",
        f"{statistics.median(waited):.1f} s" if waited else "-",
        f"{(last_end - producer.ended).total_seconds():.1f} s",
    ]


def dags_test_tasks(run_id: str) -> tuple[datetime, list[TaskTimes]]:
    """The run's start and its task instances, from `airflow dags test`'s SQLite metadata."""
    path = airflow_env()["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///")
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        where = "where dag_id = ? and run_id = ?"
        (started,) = conn.execute(f"select start_date from dag_run {where}", (DAG_ID, run_id)).fetchone()
        rows = conn.execute(
            f"select task_id, queued_dttm, start_date, end_date from task_instance {where}", (DAG_ID, run_id)
        ).fetchall()
    return utc(started), [TaskTimes.parse(*row) for row in rows]


def time_dags_test() -> tuple[float, float, list[str]]:
    """(the command's wall time, the DAG run's duration as Airflow records it, where it went)."""
    started = time.monotonic()
    run = subprocess.run(
        [str(AIRFLOW), "dags", "test", DAG_ID],
        env=airflow_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    elapsed = time.monotonic() - started
    finished = FINISHED.search(run.stdout)
    if run.returncode != 0 or not finished or finished.group(3) != "success":
        raise RuntimeError(f"airflow dags test {DAG_ID} failed:\n{run.stdout[-3000:]}")
    run_started, tasks = dags_test_tasks(finished.group(1))
    return elapsed, float(finished.group(2)), breakdown("`airflow dags test`", run_started, tasks)


class Stack:
    """The running stack's Airflow, through its REST API (a JWT from /auth/token)."""

    def __init__(self) -> None:
        self.started_here = False
        self.headers: dict[str, str] = {}
        self.paused: dict[str, bool] = {}

    def healthy(self) -> bool:
        from apparel.stack import stack_settings

        try:
            return requests.get(f"{stack_settings().airflow_url}/api/v2/monitor/health", timeout=5).ok
        except requests.RequestException:
            return False

    def __enter__(self) -> Stack:
        from apparel.stack import stack_settings

        if not self.healthy():
            console.print("starting the stack (Airflow, the stream; no Superset, no docs site) ...")
            stack = [sys.executable, "-m", "apparel.stack"]
            subprocess.run([*stack, "up", "--no-superset", "--no-docs"], check=True)
            self.started_here = True
        try:
            self._prepare(stack_settings())  # read after `up`, which writes the login into .env
        except BaseException:
            self._stop()
            raise
        return self

    def _prepare(self, st) -> None:
        self.url = st.airflow_url
        token = requests.post(
            f"{self.url}/auth/token",
            json={"username": st.admin_user, "password": st.admin_password},
            timeout=30,
        )
        token.raise_for_status()
        self.headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        self.paused = {dag_id: self.dag(dag_id)["is_paused"] for dag_id in (DAG_ID, *QUIET_DAGS)}
        self.pause(DAG_ID, False)
        for dag_id in QUIET_DAGS:
            self.pause(dag_id, True)
        self.wait_until_idle()

    def __exit__(self, *exc: object) -> None:
        for dag_id, paused in self.paused.items():
            self.pause(dag_id, paused)
        self._stop()

    def _stop(self) -> None:
        if self.started_here:
            subprocess.run([sys.executable, "-m", "apparel.stack", "down"], check=False)

    def api(self, method: str, path: str, **kwargs) -> dict:
        response = requests.request(method, f"{self.url}{path}", headers=self.headers, timeout=30, **kwargs)
        response.raise_for_status()
        return response.json()

    def dag(self, dag_id: str) -> dict:
        # The DAG processor may not have parsed a just-started stack's DAGs yet.
        deadline = time.monotonic() + 300
        while True:
            try:
                return self.api("GET", f"/api/v2/dags/{dag_id}")
            except requests.HTTPError as error:
                if error.response.status_code != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(2)

    def pause(self, dag_id: str, paused: bool) -> None:
        self.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": paused})

    def busy_tasks(self) -> list[dict]:
        """Task instances of the other dbt DAGs queued or running (a paused DAG's run starts no more)."""
        busy = []
        for dag_id in QUIET_DAGS:
            path = f"/api/v2/dags/{dag_id}/dagRuns/~/taskInstances"
            states = {"state": ["queued", "running", "deferred"]}
            busy += self.api("GET", path, params=states)["task_instances"]
        return busy

    def wait_until_idle(self) -> None:
        """Until no run of transform is queued or running, nor a task of fresh_marts or business_marts."""
        path = f"/api/v2/dags/{DAG_ID}/dagRuns"
        while (
            busy := self.busy_tasks()
            + self.api("GET", path, params={"state": ["queued", "running"]})["dag_runs"]
        ):
            console.print(f"  waiting for {len(busy)} run(s) or task(s) to finish before measuring ...")
            time.sleep(5)

    def time_transform(self) -> tuple[float, list[str]]:
        """From the trigger to the run's end, as Airflow reports them (a successful run only), and
        where it went."""
        run = self.api("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None})
        path = f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run['dag_run_id'], safe='')}"
        while (run := self.api("GET", path))["state"] in ("queued", "running"):
            time.sleep(1)
        if run["state"] != "success":
            raise RuntimeError(f"{DAG_ID} run {run['dag_run_id']} ended {run['state']}")
        self.wait_until_idle()  # nothing the run set off may overlap the next measurement
        ended, triggered = datetime.fromisoformat(run["end_date"]), datetime.fromisoformat(run["queued_at"])
        listed = self.api("GET", f"{path}/taskInstances", params={"limit": 1000})["task_instances"]
        tasks = [
            TaskTimes.parse(t["task_id"], t["queued_when"], t["start_date"], t["end_date"]) for t in listed
        ]
        return (ended - triggered).total_seconds(), breakdown("scheduler", triggered, tasks)


def summary(label: str, values: list[float], plain: float) -> list[str]:
    median = statistics.median(values)
    return [label, f"{median:.1f} s", f"{min(values):.1f}–{max(values):.1f} s", f"{median / plain:.2f}x"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-scheduler", dest="scheduler", action="store_false")
    parser.add_argument("--no-dags-test", dest="dags_test", action="store_false")
    args = parser.parse_args(argv)

    settings = load_settings()
    if not model_built():
        raise SystemExit(f"no model on {redact_url(settings.warehouse_url)}: run `make run` first")
    console.print(f"warehouse {redact_url(settings.warehouse_url)}; {load()}")
    console.print("untimed warm-up: a plain dbt build, then the DAG once (Cosmos' partial parse cache)")
    time_plain_dbt()
    if args.dags_test:
        time_dags_test()

    plain: list[float] = []
    dags_test: list[tuple[float, float, list[str]]] = []
    scheduler: list[tuple[float, list[str]]] = []
    for n in range(1, args.rounds + 1 if args.dags_test else 1):
        plain.append(time_plain_dbt())
        dags_test.append(time_dags_test())
        console.print(
            f"round {n}: plain dbt {plain[-1]:.1f} s, dags test {dags_test[-1][0]:.1f} s"
            f" (run {dags_test[-1][1]:.1f} s); {load()}"
        )
    if args.scheduler:
        with Stack() as stack:
            for n in range(1, args.rounds + 1):
                plain.append(time_plain_dbt())
                scheduler.append(stack.time_transform())
                console.print(
                    f"round {n}: plain dbt {plain[-1]:.1f} s, scheduler {scheduler[-1][0]:.1f} s; {load()}"
                )

    base = statistics.median(plain)
    table = Table(title=f"transform against a plain dbt build ({args.rounds} rounds; {load()})")
    for column in ("how", "median", "range", "/ plain dbt"):
        table.add_column(column, justify="left" if column == "how" else "right")
    table.add_row(*summary("plain `dbt build` (same selection)", plain, base))
    if dags_test:
        table.add_row(*summary("`airflow dags test transform`, command", [d[0] for d in dags_test], base))
        table.add_row(*summary("`airflow dags test transform`, DAG run", [d[1] for d in dags_test], base))
    if scheduler:
        table.add_row(*summary("scheduler (`make up`), trigger to end", [s[0] for s in scheduler], base))
    console.print(table)
    where = Table(title="where the last run's time went (from the run's start or trigger)")
    columns = ("how", "build starts", "build", "report tasks", "each ran, median (sum)", "queued wait")
    for column in (*columns, "last report after the build"):
        where.add_column(column, justify="left" if column == "how" else "right")
    for run in ([dags_test[-1][2]] if dags_test else []) + ([scheduler[-1][1]] if scheduler else []):
        where.add_row(*run)
    console.print(where)
    return 0


if __name__ == "__main__":
    sys.exit(main())
