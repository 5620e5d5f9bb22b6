"""`make up` / `make down` end to end: the whole stack, Superset included, on free ports with its own
state folder and its own (empty) settings file, the scheduler doing the work.

`make up` starts the warehouse and every service. Once the stack's own schedule has loaded the
extracts and queued `transform`, the test triggers `ingest_dataset` with {"force": true} through
Airflow's REST API and follows that run, through the raw layer's asset event it published, to the
`transform` run that event created: that run must succeed and build the marts. An order placed in
the shop must then reach both marts (the stream, its asset event, then a `fresh_marts` run that event
triggered), and no `fresh_marts` dbt build may have run while a `transform` dbt build ran (the pool they
share), with at least one `fresh_marts` run (triggered by an order placed for that) having waited on
the forced `transform`. Every service's memory is measured on the way. Then each
service is killed with SIGKILL in turn: supervisord must start it again while the others stay
healthy, and the shop and the warehouse must still agree row by row. Then `make down` must leave no
process of this stack, Superset and PostgreSQL included, and free its ports.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import psutil
import pytest
import requests

from apparel import stack
from apparel.config import PROJECT_ROOT, Settings
from apparel.embedded_pg import EmbeddedServer, free_port
from apparel.roles import PASSWORD_SETTINGS, SUPERUSER_PASSWORD
from apparel.superset_setup import SupersetClient
from tests.conftest import isolated_environment

pytestmark = pytest.mark.slow

RSS_LIMIT = 6 * 2**30
ARTIFACTS = PROJECT_ROOT / "test-artifacts"
# The asset `check_foreign_keys` publishes at the end of an ingest that changed a table
# (apparel.ingest.RAW_LAYER; not imported here, it would import the Airflow SDK into pytest).
RAW_LAYER = "raw"
# Generous bounds that only stop a hang: a transform run takes about 6 minutes on 2 busy cores.
FIRST_LOAD_DEADLINE = 20 * 60
PIPELINE_DEADLINE = 40 * 60
# Task instance states of tasks that never ran (the scheduler set them).
NEVER_RAN = ("skipped", "upstream_failed", "removed")
# `make up` / `make down` without rebuilding the shared environments this test runs in (`make test`
# has brought them up to date already): the targets themselves are what is under test.
KEEP_ENVIRONMENTS = ["-o", ".venv/.installed-stamp", "-o", ".venv-superset/.installed-stamp"]


@pytest.fixture(scope="module")
def stack_env() -> Iterator[dict[str, str]]:
    # Under the project's state folder: as root the warehouse runs as `pgserver`, who must reach it.
    state = PROJECT_ROOT / ".state" / "test-stack" / f"s-{uuid.uuid4().hex[:8]}"
    state.mkdir(parents=True)
    # An empty settings file instead of the checkout's .env (apparel.config and the Makefile read
    # ENV_FILE): a developer's SIMULATE=1 or STORE_URL there changes nothing here, and any secret the
    # stack would generate lands in this file, not in theirs.
    env_file = state / "settings.env"
    env_file.write_text(
        "# empty on purpose: tests/stack/test_stack.py sets every setting in the environment\n"
    )
    env = {
        **isolated_environment(),
        "ENV_FILE": str(env_file),
        "STATE_DIR": str(state),
        "DATASET_DIR": str(PROJECT_ROOT / "dataset"),
        "WAREHOUSE_URL": "",
        "STORE_URL": "",
        "SIMULATE": "0",
        "PG_PORT": str(free_port()),
        "AIRFLOW_HOST": "127.0.0.1",
        "AIRFLOW_PORT": str(free_port()),
        "DBT_DOCS_HOST": "127.0.0.1",
        "DBT_DOCS_PORT": str(free_port()),
        "SUPERSET_HOST": "127.0.0.1",
        "SUPERSET_PORT": str(free_port()),
        "SUPERSET_DATABASE_URL": "",
        # The scheduler's and triggerer's log servers (8793, 8794 by default): clear of a running `make up`.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        # Secrets in the environment: the stack writes nothing, not even into the empty settings file.
        "AIRFLOW_ADMIN_USER": "admin",
        "AIRFLOW_ADMIN_PASSWORD": "test-" + uuid.uuid4().hex,
        "AIRFLOW__CORE__FERNET_KEY": stack._fernet_key(),
        "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex * 2,
        "AIRFLOW__API__SECRET_KEY": uuid.uuid4().hex,
        "SUPERSET_SECRET_KEY": uuid.uuid4().hex,
        "SUPERSET_ADMIN_USER": "admin",
        "SUPERSET_ADMIN_PASSWORD": uuid.uuid4().hex,
        # The database roles' (apparel.roles), the reader's among them.
        **{name: uuid.uuid4().hex for name in (SUPERUSER_PASSWORD, *PASSWORD_SETTINGS.values())},
    }
    yield env
    # After a failure: stop what is left (the test itself checks `make down`).
    _stack("down", env=env, check=False)
    # Keep the logs (the stack's and Airflow's task logs) for a look after a failure.
    kept = ARTIFACTS / "stack-logs"
    shutil.rmtree(kept, ignore_errors=True)
    for part in ("stack/supervisord.log", "stack/logs", "airflow/logs"):
        source = state / part
        if source.is_dir():
            shutil.copytree(source, kept / part, dirs_exist_ok=True)
        elif source.exists():
            (kept / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, kept / part)
    EmbeddedServer(state / "pgdata", int(env["PG_PORT"])).destroy()
    shutil.rmtree(state, ignore_errors=True)


def _run(cmd: list[str], env: dict[str, str], check: bool, timeout: float) -> subprocess.CompletedProcess:
    result = subprocess.run(
        cmd, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def _make(target: str, env: dict[str, str], timeout: float = 1200) -> subprocess.CompletedProcess:
    return _run(["make", "--no-print-directory", *KEEP_ENVIRONMENTS, target], env, True, timeout)


def _stack(*args: str, env: dict[str, str], check: bool = True, timeout: float = 600):
    return _run([sys.executable, "-m", "apparel.stack", *args], env, check, timeout)


def _stack_settings(env: dict[str, str]) -> stack.StackSettings:
    return stack.StackSettings(Settings(env))


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


class Airflow:
    """Airflow's REST API with a JWT from /auth/token."""

    def __init__(self, base_url: str, user: str, password: str):
        self.base_url = base_url
        response = requests.post(
            f"{base_url}/auth/token", json={"username": user, "password": password}, timeout=30
        )
        assert response.status_code in (200, 201), response.text
        self.headers = {"Authorization": f"Bearer {response.json()['access_token']}"}

    def get(self, path: str, **params) -> dict:
        response = requests.get(f"{self.base_url}{path}", params=params, headers=self.headers, timeout=30)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: dict) -> dict:
        response = requests.post(f"{self.base_url}{path}", json=body, headers=self.headers, timeout=30)
        assert response.status_code in (200, 201), response.text
        return response.json()

    def pages(self, path: str, key: str, **params) -> list[dict]:
        """Every item of a list endpoint, page by page."""
        items: list[dict] = []
        while True:
            page = self.get(path, limit=100, offset=len(items), **params)[key]
            items += page
            if len(page) < 100:
                return items

    def runs(self, dag_id: str) -> list[dict]:
        return self.pages(f"/api/v2/dags/{dag_id}/dagRuns", "dag_runs")

    def run(self, dag_id: str, run_id: str) -> dict:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.pages(
            f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances",
            "task_instances",
            order_by="id",  # a stable order across pages (the default, map_index, is -1 for all)
        )

    def raw_layer_events(self, **filters: str) -> list[dict]:
        """The raw layer's asset events published by `ingest_dataset` (oldest first)."""
        events = self.pages(
            "/api/v2/assets/events",
            "asset_events",
            source_dag_id="ingest_dataset",
            source_task_id="check_foreign_keys",
            order_by="timestamp",
            **filters,
        )
        return [e for e in events if e["name"] == RAW_LAYER]


def _created_transform(event: dict) -> str | None:
    """The `transform` run the asset event created (consumed), if any yet."""
    runs = [r["run_id"] for r in event["created_dagruns"] if r["dag_id"] == "transform"]
    return runs[0] if runs else None


def _sample(st: stack.StackSettings, services: list[str], peaks: dict[str, float]) -> None:
    rss = {name: total for name, (_, total) in stack.service_rss(st, services).items()}
    rss["warehouse"] = stack.warehouse_rss(st)
    for name, value in rss.items():
        peaks[name] = max(peaks.get(name, 0), value)
    peaks["total"] = max(peaks.get("total", 0), sum(rss.values()))


def test_make_up_runs_the_pipeline_on_schedule_and_make_down_leaves_nothing(
    stack_env: dict[str, str],
) -> None:
    env = stack_env
    st = _stack_settings(env)
    services = stack.default_services(st)
    assert "superset" in services and "simulator" not in services

    began = time.monotonic()
    result = _make("up", env)
    up_seconds = time.monotonic() - began
    assert "stack up in" in result.stdout
    # Where the logins are, never the passwords themselves.
    secrets = {k: v for k, v in env.items() if k.endswith(("PASSWORD", "SECRET", "SECRET_KEY", "FERNET_KEY"))}
    assert [k for k, v in secrets.items() if v in result.stdout + result.stderr] == []
    ss = st.superset()
    assert st.airflow_url in result.stdout and st.docs_url in result.stdout
    assert f"{ss.base_url}/superset/dashboard/sales/" in result.stdout
    supervisor = stack.supervisor_pid(st)
    assert supervisor
    assert stack.read_record(st)["services"] == services

    # Every service answers its health check as soon as `make up` returns.
    health = requests.get(f"{st.airflow_url}/api/v2/monitor/health", timeout=30).json()
    assert {health[c]["status"] for c in ("metadatabase", "scheduler", "dag_processor", "triggerer")} == {
        "healthy"
    }
    assert requests.get(f"{st.docs_url}/index.html", timeout=30).status_code == 200
    assert requests.get(f"{ss.base_url}/health", timeout=30).status_code == 200
    # Superset: the generated login works and `make up` imported the dashboards.
    superset = SupersetClient(ss.base_url, ss.admin_user, ss.admin_password)
    for slug in ("sales", "live-orders", "customers-markets"):
        superset.find("dashboard", "slug", slug)  # exactly one each
    # Airflow's metadata is in PostgreSQL, not SQLite.
    assert not (st.state_dir / "airflow" / "airflow.db").exists()

    # A second `make up` says so and changes nothing.
    again = _make("up", env)
    assert "already running" in again.stdout
    assert stack.supervisor_pid(st) == supervisor
    # Every service running and healthy (a health request can time out on a busy machine: 3 tries).
    statuses = []
    for _ in range(3):
        statuses.append(_stack("status", env=env, check=False))
        if statuses[-1].returncode == 0:
            break
        time.sleep(5)
    assert statuses[-1].returncode == 0, "\n".join(r.stdout for r in statuses)

    # The generated login works, a wrong one does not.
    bad = requests.post(
        f"{st.airflow_url}/auth/token", json={"username": "admin", "password": "wrong"}, timeout=30
    )
    assert bad.status_code == 401
    api = Airflow(st.airflow_url, "admin", env["AIRFLOW_ADMIN_PASSWORD"])

    idle: dict[str, float] = {}
    _sample(st, services, idle)
    peaks: dict[str, float] = {}

    # The stack's own schedule first: the DAGs start unpaused, `ingest_dataset`'s daily run (and
    # `watch_dataset`) load the extracts, whose raw-layer event queues a first `transform`. Waiting
    # for it keeps that first load apart from ours: our forced ingest's event comes after it, so it
    # creates a run of its own, which starts once the first one has built the model.
    deadline = time.monotonic() + FIRST_LOAD_DEADLINE
    first_transform = None
    while first_transform is None:
        assert time.monotonic() < deadline, "the stack's schedule queued no transform in 20 minutes"
        _sample(st, services, peaks)
        first_transform = next((run for run in map(_created_transform, api.raw_layer_events()) if run), None)
        time.sleep(5)

    triggered_at = time.monotonic()
    forced = api.post("/api/v2/dags/ingest_dataset/dagRuns", {"logical_date": None, "conf": {"force": True}})
    assert forced["conf"] == {"force": True}
    forced_id = forced["dag_run_id"]

    deadline = time.monotonic() + PIPELINE_DEADLINE
    transform_id = transformed = placed_beside = None
    while transformed is None:
        assert time.monotonic() < deadline, "no transform after the forced ingest succeeded in 40 minutes"
        _sample(st, services, peaks)
        forced = api.run("ingest_dataset", forced_id)
        assert forced["state"] != "failed", "the forced ingest failed"
        runs = {r["dag_run_id"]: r for r in api.runs("transform")}
        # A transform run that started once the forced ingest had loaded every raw table must not fail.
        if forced["state"] == "success":
            late = [
                r for r in runs.values() if r["start_date"] and _ts(r["start_date"]) > _ts(forced["end_date"])
            ]
            assert not [r for r in late if r["state"] == "failed"], late
        if transform_id is None:
            events = api.raw_layer_events(source_run_id=forced_id)
            assert len(events) <= 1, events
            transform_id = next(filter(None, map(_created_transform, events)), None)
        if transform_id and transform_id in runs:
            assert runs[transform_id]["state"] != "failed", runs[transform_id]
            if (
                runs[transform_id]["state"] == "running"
                and not placed_beside
                and _building(api, transform_id)
            ):
                # The shop takes an order while the transform's dbt build runs: the stream's asset event
                # makes a fresh_marts run whose build must wait for the transform's (their shared pool).
                placed_beside = _place_order(st)
            if runs[transform_id]["state"] == "success" and forced["state"] == "success":
                transformed = runs[transform_id]
        time.sleep(5)
    pipeline_seconds = time.monotonic() - triggered_at

    # The run is the forced ingest's: scheduled by its raw-layer event (not by hand, not by `dags test`,
    # not by the stack's own first load), which it consumed.
    assert transform_id != first_transform
    assert transformed["run_type"] == "asset_triggered" and transformed["triggered_by"] == "asset"
    (event,) = api.raw_layer_events(source_run_id=forced_id)
    upstream = api.get(f"/api/v2/dags/transform/dagRuns/{quote(transform_id, safe='')}/upstreamAssetEvents")
    assert event["id"] in {e["id"] for e in upstream["asset_events"]}
    assert _ts(forced["start_date"]) <= _ts(event["timestamp"]) <= _ts(transformed["queued_at"])
    assert _ts(transformed["start_date"]) > _ts(event["timestamp"])

    import psycopg

    with psycopg.connect(st.settings.warehouse_url) as conn:
        for mart in ("dm_revenue_by_months", "dm_perfomance_product_by_cities"):
            assert conn.execute(f"select count(*) from marts.{mart}").fetchone()[0] > 0

    live = _order_reaches_the_marts(st, api)
    pool = _dbt_tasks_never_overlap(api, transformed)

    report = {
        "up_to_healthy_s": round(up_seconds, 1),
        "forced_ingest_to_its_transform_success_s": round(pipeline_seconds, 1),
        **live,
        **pool,
        "idle_rss_mb": {k: round(v / 2**20) for k, v in idle.items()},
        "peak_rss_mb_during_pipeline": {k: round(v / 2**20) for k, v in peaks.items()},
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "stack-rss.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    assert peaks["total"] < RSS_LIMIT, report

    report["sigkill_to_healthy_s"] = _each_service_killed_comes_back(st, env, services)
    (ARTIFACTS / "stack-rss.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["sigkill_to_healthy_s"], indent=2))
    _make_down_leaves_nothing(st, env, services)


def _each_service_killed_comes_back(
    st: stack.StackSettings, env: dict[str, str], services: list[str]
) -> dict[str, float]:
    """SIGKILL each service's main process in turn: supervisord starts it again (one restart counted),
    every service is healthy again, the others were not restarted, and no shop row is lost or
    doubled in the mirror. Returns the seconds from each kill to a healthy stack."""
    from apparel.bench_stream import compare_store_warehouse

    seconds = {}
    for name in services:
        before = stack.process_info(st)
        (victim, *_) = stack.service_tree(st, name)
        victim.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        deadline = killed + 600
        while True:
            info = stack.process_info(st)
            back = info[name]["pid"] not in (0, victim.pid) and info[name]["state"] == "RUNNING"
            if back and _stack("status", env=env, check=False).returncode == 0:
                break
            assert time.monotonic() < deadline, f"{name} not back and healthy 10 minutes after SIGKILL"
            time.sleep(2)
        seconds[name] = round(time.monotonic() - killed, 1)
        assert info[name]["restarts"] == before[name]["restarts"] + 1, info
        others = {s: (i["pid"], i["restarts"]) for s, i in info.items() if s != name}
        assert others == {s: (i["pid"], i["restarts"]) for s, i in before.items() if s != name}
    comparison = compare_store_warehouse(st.settings.store_url, st.settings.warehouse_url)
    assert comparison.exact, comparison
    return seconds


def _place_order(st: stack.StackSettings) -> int:
    """An order of one line (3 x product 42, Rp 330,000, city 91) placed in the shop; its id."""
    import psycopg

    with psycopg.connect(st.settings.store_url) as store:
        order_id = store.execute(
            "insert into shop_order (customer_id, province_id, city_id, status)"
            " select id, 5, 91, 'paid' from shop_customer order by id limit 1 returning id"
        ).fetchone()[0]
        store.execute(
            "insert into shop_orderline (order_id, product_id, quantity, unit_price, amount)"
            " values (%s, 42, 3, 110000, 330000)",
            (order_id,),
        )
    return order_id


def _order_reaches_the_marts(st: stack.StackSettings, api: Airflow) -> dict[str, float]:
    """An order placed in the shop: in raw_store within seconds (the stream), in both marts within
    seconds (the stream's asset event triggers fresh_marts; no clock: its timed runs are 15 minutes
    apart). Returns the two delays measured."""
    import psycopg

    month = "date_trunc('month', now() at time zone 'Asia/Jakarta')::date"
    revenue_sql = (
        f"select coalesce(sum(revenue), 0) from marts.dm_revenue_by_months where month_start = {month}"
    )
    city_sql = (
        "select coalesce(sum(revenue), 0) from marts.dm_perfomance_product_by_cities"
        " where city_id = 91 and product_id = 42"
    )
    with psycopg.connect(st.settings.warehouse_url, autocommit=True) as wh:
        before = wh.execute(revenue_sql).fetchone()[0], wh.execute(city_sql).fetchone()[0]
    placed_at = datetime.now(UTC)
    order_id = _place_order(st)
    placed = time.monotonic()
    in_raw_store = in_marts = None
    with psycopg.connect(st.settings.warehouse_url, autocommit=True) as wh:
        while time.monotonic() - placed < 600 and in_marts is None:
            if (
                in_raw_store is None
                and wh.execute(
                    "select 1 from raw_store.shop_orderline where order_id = %s", (order_id,)
                ).fetchone()
            ):
                in_raw_store = time.monotonic() - placed
            now = wh.execute(revenue_sql).fetchone()[0], wh.execute(city_sql).fetchone()[0]
            if now == (before[0] + 330000, before[1] + 330000):
                in_marts = time.monotonic() - placed
            time.sleep(0.2 if in_raw_store is None else 1)
    # The goals are a second and 10 s; the assertions only bound a hang, the figures are reported.
    assert in_raw_store is not None and in_raw_store < 60, f"order not in raw_store after {in_raw_store} s"
    assert in_marts is not None, "the shop's order did not reach both marts in 10 minutes"

    # A run the stream's asset event started put it there (the clock's runs are 15 minutes apart); its
    # build wrote the marts, its report tasks may still be finishing.
    def asset_run_succeeded() -> bool:
        runs = [r for r in api.runs("fresh_marts") if r["start_date"] and _ts(r["start_date"]) >= placed_at]
        return any(r["run_type"] == "asset_triggered" and r["state"] == "success" for r in runs)

    deadline = time.monotonic() + 300
    while not asset_run_succeeded() and time.monotonic() < deadline:
        time.sleep(2)
    assert asset_run_succeeded(), api.runs("fresh_marts")
    return {"order_to_raw_store_s": round(in_raw_store, 2), "order_to_marts_s": round(in_marts, 1)}


def _building(api: Airflow, run_id: str) -> bool:
    """Whether the `transform` run's one dbt build (Cosmos' watcher producer) is running now."""
    tis = api.task_instances("transform", run_id)
    return any(ti["task_id"] == "dbt.dbt_producer_watcher" and ti["state"] == "running" for ti in tis)


def _dbt_tasks_never_overlap(api: Airflow, transformed: dict) -> dict[str, int]:
    """No `fresh_marts` dbt build ran while a `transform` dbt build ran (their shared pool), checked on
    every run of both DAGs so far; and the check had something to prove: a `fresh_marts` run was
    active during the forced ingest's `transform`, and its build was ready to run while the
    `transform` build ran, and waited."""
    now = datetime.now(UTC)

    def intervals(dag_id: str) -> dict[str, list[tuple[datetime, datetime, dict]]]:
        by_run = {}
        for run in api.runs(dag_id):
            by_run[run["dag_run_id"]] = [
                (_ts(ti["start_date"]), _ts(ti["end_date"]) if ti["end_date"] else now, ti)
                for ti in api.task_instances(dag_id, run["dag_run_id"])
                # The one `dbt build` of each run (Cosmos' watcher producer); not the tasks that
                # report on it, which build nothing, nor store_freshness, which only reads. Only
                # builds that ran: a fresh_marts run before the model exists skips its dbt tasks,
                # which then get a start and an end date (the same instant) without ever running.
                if ti["task_id"] == "dbt.dbt_producer_watcher"
                and ti["start_date"]
                and ti["state"] not in NEVER_RAN
            ]
        return by_run

    transform_runs, fresh_runs = intervals("transform"), intervals("fresh_marts")
    transform_tis = [i for tis in transform_runs.values() for i in tis]
    fresh_tis = [i for tis in fresh_runs.values() for i in tis]
    assert transform_tis and transform_runs[transformed["dag_run_id"]]
    clashes = [
        (t[2]["dag_run_id"], t[2]["task_id"], f[2]["dag_run_id"], f[2]["task_id"])
        for t in transform_tis
        for f in fresh_tis
        if t[0] < f[1] and f[0] < t[1]
    ]
    assert not clashes, clashes

    # fresh_marts runs whose window overlaps the forced transform's, with dbt tasks that ran.
    t_start, t_end = _ts(transformed["start_date"]), _ts(transformed["end_date"])
    meta = {r["dag_run_id"]: r for r in api.runs("fresh_marts")}
    beside = [
        run_id
        for run_id, tis in fresh_runs.items()
        if tis
        and meta[run_id]["start_date"]
        and _ts(meta[run_id]["start_date"]) < t_end
        and (_ts(meta[run_id]["end_date"]) if meta[run_id]["end_date"] else now) > t_start
    ]
    assert beside, "no fresh_marts run with dbt tasks ran beside the forced transform: nothing was checked"
    waited = [
        f
        for f in fresh_tis
        if f[2]["scheduled_when"] and any(t[0] <= _ts(f[2]["scheduled_when"]) < t[1] for t in transform_tis)
    ]
    assert waited, "no fresh_marts dbt task was ready while a transform dbt task ran: nothing was checked"
    return {
        "dbt_tasks_compared": {"transform": len(transform_tis), "fresh_marts": len(fresh_tis)},
        "fresh_marts_runs_beside_the_forced_transform": len(beside),
        "fresh_marts_dbt_tasks_that_waited_for_transform": len(waited),
    }


def _make_down_leaves_nothing(st: stack.StackSettings, env: dict[str, str], services: list[str]) -> None:
    """`make down` stops every process of the stack (task processes, Superset's workers, the
    warehouse PostgreSQL) and frees every port; nothing of this state folder runs afterwards."""
    supervisor = stack.supervisor_pid(st)
    stack_id = stack.read_record(st)["stack_id"]
    postmaster = int((st.state_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
    tree = [psutil.Process(supervisor), *psutil.Process(supervisor).children(recursive=True)]
    tree += [psutil.Process(postmaster), *psutil.Process(postmaster).children(recursive=True)]
    assert len(tree) > len(services) + 1
    assert stack.service_tree(st, "superset"), "Superset is not running before `make down`"
    ports = [(name, port) for name, _, port in stack._ports(st, services)]
    ports += [("warehouse", st.settings.pg_port)]
    ports += [(k, int(env[k])) for k in env if k.endswith("_LOG_SERVER_PORT")]

    _make("down", env, timeout=600)

    alive = [p for p in tree if stack._alive(p)]
    assert not alive, [p.cmdline() for p in alive]
    assert not stack.stack_processes(stack_id)
    assert not st.pid_file.exists() and not st.record_file.exists()
    assert not list((st.run_dir / "pids").glob("*.pid"))
    assert not (st.state_dir / "pgdata" / "postmaster.pid").exists()
    assert _stack("status", env=env, check=False).returncode == 3
    for name, port in ports:
        assert not stack._port_in_use("127.0.0.1", port), name
    left = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(st.state_dir) in part for part in proc.info["cmdline"] or []):
            left.append(proc.info["cmdline"])
    assert not left, left


def test_state_folder_is_under_the_project(stack_env: dict[str, str]) -> None:
    assert Path(stack_env["STATE_DIR"]).is_relative_to(PROJECT_ROOT / ".state")
    # The developer's .env is not the settings file of the stack under test.
    assert Path(stack_env["ENV_FILE"]).is_relative_to(Path(stack_env["STATE_DIR"]))
