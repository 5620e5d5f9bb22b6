"""Freshness benchmark: how long a shop order takes to reach the fact and the monthly mart under the
running stack (the stream, its asset events, `fresh_marts` under Airflow's scheduler).

`make bench-freshness` uses the stack `make up` runs, or starts it (without Superset and the dbt
docs) and waits until `transform` has built the model once. Then, for each rate (default 5 and 100
orders/s), the shop simulator writes for `--seconds` while the benchmark places `--orders` marked
orders (one line each) at random moments, and watches the warehouse every `POLL_S`:

* from the order's commit in the shop (its `_store_committed_at` in raw_store, the store's own clock)
* to the moment its line is visible in `core.fct_transactions`, and to the moment the monthly mart
  was rebuilt after that line was written (`dm_revenue_by_months.loaded_at` of its month later than
  the line's `loaded_at`: the mart's run started after the fact's).

It prints per rate p50 / p95 / max of both delays, and the `fresh_marts` runs that started during the
rate (Airflow's REST API) with their mean duration, beside the load average. Figures only: nothing
is asserted; the goals (p95 to the mart at most 10 s at 5 orders/s, 30 s at 100) are printed beside.
The stack is left running when it was running before, else stopped.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import psycopg

from apparel.config import load_settings
from apparel.simulate import load_catalogue, run_simulator
from apparel.stack import StackSettings, stack_settings, supervisor_pid

log = logging.getLogger("apparel.bench_freshness")

DEFAULT_RATES = (5, 100)
GOALS_P95_S = {5.0: 10.0, 100.0: 30.0}
POLL_S = 0.25
# How long a marked order may take before it is counted as not arrived.
ARRIVAL_TIMEOUT_S = 300
MODEL_TIMEOUT_S = 1800
DAILY_DAGS = ("ingest_dataset", "transform", "business_marts")


@dataclass
class Marked:
    line_id: int
    committed_at: float | None = None  # epoch seconds, from the mirror
    fact_at: float | None = None
    mart_at: float | None = None

    @property
    def to_fact(self) -> float | None:
        return None if self.fact_at is None else self.fact_at - self.committed_at

    @property
    def to_mart(self) -> float | None:
        return None if self.mart_at is None else self.mart_at - self.committed_at


@dataclass
class RateResult:
    rate: float
    orders_s: float
    marked: list[Marked]
    runs: int
    mean_run_s: float
    load: tuple[float, float, float]
    queued_max: int = 0
    lost: list[int] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest value that at least a share `q` of the values do not exceed."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class Airflow:
    """Airflow's REST API as the stack's admin (the password stays in .env)."""

    def __init__(self, st: StackSettings):
        self.client = httpx.Client(base_url=st.airflow_url, timeout=10)
        token = self.client.post(
            "/auth/token", json={"username": st.admin_user, "password": st.admin_password}
        )
        token.raise_for_status()
        self.client.headers["Authorization"] = f"Bearer {token.json()['access_token']}"

    def runs(self, dag_id: str, since: datetime) -> list[dict]:
        response = self.client.get(
            f"/api/v2/dags/{dag_id}/dagRuns",
            params={"start_date_gte": since.isoformat(), "limit": 1000, "order_by": "start_date"},
        )
        response.raise_for_status()
        return response.json()["dag_runs"]

    def active_runs(self, dag_id: str) -> int:
        response = self.client.get(
            f"/api/v2/dags/{dag_id}/dagRuns", params={"state": ["queued", "running"], "limit": 100}
        )
        response.raise_for_status()
        return response.json()["total_entries"]


def ensure_stack(st: StackSettings) -> bool:
    """The running stack, or one started now; True when this benchmark started it."""
    if supervisor_pid(st):
        log.info("using the running stack")
        return False
    log.info("starting the stack (make up without Superset and the dbt docs)")
    subprocess.run([sys.executable, "-m", "apparel.stack", "up", "--no-superset", "--no-docs"], check=True)
    return True


def wait_for_model(warehouse_url: str, airflow: Airflow) -> None:
    """Until `transform` has built the monthly mart (fresh_marts skips its runs until then) and no
    daily DAG runs: their dbt tasks hold the pool fresh_marts needs (a new stack's first load, the
    weekly full refresh), which would measure them, not the fresh path."""
    deadline = time.monotonic() + MODEL_TIMEOUT_S
    while time.monotonic() < deadline:
        with psycopg.connect(warehouse_url) as conn:
            built = conn.execute("select to_regclass('marts.dm_revenue_by_months') is not null").fetchone()[0]
        busy = [d for d in DAILY_DAGS if airflow.active_runs(d)]
        if built and not busy:
            return
        log.info(
            "waiting for %s", ", ".join(busy) if built else "the stack's first transform to build the marts"
        )
        time.sleep(15)
    raise SystemExit(f"the marts were not built, or the daily DAGs still ran, after {MODEL_TIMEOUT_S} s")


def place_marked_order(store_url: str, catalogue, rng: random.Random) -> int:
    """One order with one line, as the shop writes it; returns the line's id."""
    (product_id, price), (city_id, province_id) = rng.choice(catalogue.products), rng.choice(catalogue.cities)
    with psycopg.connect(store_url, autocommit=True) as conn:
        customer = conn.execute("select id from shop_customer order by random() limit 1").fetchone()[0]
        return conn.execute(
            "with o as (insert into shop_order (customer_id, province_id, city_id) values (%s, %s, %s)"
            " returning id)"
            " insert into shop_orderline (order_id, product_id, quantity, unit_price, amount)"
            " select o.id, %s, 1, %s, %s from o returning id",
            (customer, province_id, city_id, product_id, price, price),
        ).fetchone()[0]


class Watcher(threading.Thread):
    """Notes when each marked line is in raw_store, the fact and the monthly mart (polling)."""

    def __init__(self, warehouse_url: str, marked: dict[int, Marked]):
        super().__init__(daemon=True)
        self.warehouse_url = warehouse_url
        self.marked = marked
        self.deadline = float("inf")

    def finish(self, timeout: float) -> None:
        """Wait until every marked line is in the mart, or `timeout` seconds."""
        self.deadline = time.time() + timeout
        self.join()

    def run(self) -> None:
        with psycopg.connect(self.warehouse_url, autocommit=True) as conn:
            while True:
                pending = [m.line_id for m in list(self.marked.values()) if m.mart_at is None]
                if time.time() > self.deadline or (self.deadline < float("inf") and not pending):
                    return
                now = time.time()
                rows = conn.execute(
                    "select l.id, extract(epoch from l._store_committed_at), f.transaction_id is not null,"
                    " coalesce(m.loaded_at > f.loaded_at, false)"
                    " from raw_store.shop_orderline l"
                    " left join core.fct_transactions f on f.transaction_id = l.id"
                    " left join marts.dm_revenue_by_months m"
                    "   on m.month_start = date_trunc('month', f.order_date)"
                    " where l.id = any(%s)",
                    (pending,),
                ).fetchall()
                for line_id, committed, in_fact, in_mart in rows:
                    m = self.marked[line_id]
                    m.committed_at = float(committed)
                    if in_fact and m.fact_at is None:
                        m.fact_at = now
                    if in_mart and m.mart_at is None:
                        m.mart_at = now
                time.sleep(POLL_S)


def run_rate(st: StackSettings, airflow: Airflow, rate: float, seconds: float, orders: int, seed: int):
    settings = st.settings
    rng = random.Random(seed)
    catalogue = load_catalogue(settings.dataset_dir)
    moments = sorted(rng.uniform(2, seconds - 2) for _ in range(orders))
    marked: dict[int, Marked] = {}
    sim: list = []
    simulator = threading.Thread(
        target=lambda: sim.append(
            run_simulator(settings.store_url, rate, seconds, seed=seed, dataset_dir=settings.dataset_dir)
        ),
        daemon=True,
    )
    watcher = Watcher(settings.warehouse_url, marked)
    since = datetime.now(UTC)
    started = time.monotonic()
    simulator.start()
    watcher.start()
    queued_max = 0
    for moment in moments:
        time.sleep(max(0.0, started + moment - time.monotonic()))
        line_id = place_marked_order(settings.store_url, catalogue, rng)
        marked[line_id] = Marked(line_id)
        queued_max = max(queued_max, airflow.active_runs("fresh_marts"))
    simulator.join()
    watcher.finish(ARRIVAL_TIMEOUT_S)
    load = os.getloadavg()
    # The runs of this rate: those that started once it began (the last may still run: its
    # duration is left out of the mean).
    runs = [r for r in airflow.runs("fresh_marts", since) if r["start_date"]]
    durations = [
        (datetime.fromisoformat(r["end_date"]) - datetime.fromisoformat(r["start_date"])).total_seconds()
        for r in runs
        if r["end_date"]
    ]
    return RateResult(
        rate=rate,
        orders_s=sim[0].achieved_rate if sim else 0.0,
        marked=list(marked.values()),
        runs=len(runs),
        mean_run_s=statistics.fmean(durations) if durations else 0.0,
        load=load,
        queued_max=queued_max,
        lost=[m.line_id for m in marked.values() if m.mart_at is None],
    )


def render(results: list[RateResult]) -> list[str]:
    lines = [
        "| orders/s | marked | to fct_transactions p50 / p95 / max | to dm_revenue_by_months p50 / p95 / max"
        " | goal p95 | fresh_marts runs | mean run | active runs (max) | load avg 1/5/15 |",
        "| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        fact = [m.to_fact for m in r.marked if m.to_fact is not None]
        mart = [m.to_mart for m in r.marked if m.to_mart is not None]

        def fmt(values: list[float]) -> str:
            if not values:
                return "-"
            return " / ".join(
                f"{v:.1f} s" for v in (percentile(values, 0.5), percentile(values, 0.95), max(values))
            )

        goal = GOALS_P95_S.get(r.rate)
        lines.append(
            f"| {r.orders_s:.0f} | {len(mart)}/{len(r.marked)} | {fmt(fact)} | {fmt(mart)}"
            f" | {f'{goal:.0f} s' if goal else '-'} | {r.runs} | {r.mean_run_s:.1f} s | {r.queued_max}"
            f" | {r.load[0]:.1f} / {r.load[1]:.1f} / {r.load[2]:.1f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rates", default=",".join(map(str, DEFAULT_RATES)), help="orders/s, comma-separated"
    )
    parser.add_argument("--seconds", type=float, default=120, help="simulator time per rate")
    parser.add_argument("--orders", type=int, default=30, help="marked orders per rate")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    load_settings()  # fails early on a broken .env
    st = stack_settings()
    started_here = ensure_stack(st)
    st = stack_settings()  # the secrets `make up` generated
    try:
        airflow = Airflow(st)
        wait_for_model(st.settings.warehouse_url, airflow)
        results = []
        for n, rate in enumerate(float(r) for r in args.rates.split(",")):
            log.info("%g orders/s for %g s, %d marked orders", rate, args.seconds, args.orders)
            results.append(run_rate(st, airflow, rate, args.seconds, args.orders, args.seed + n))
            log.info("\n%s", "\n".join(render(results)))
    finally:
        if started_here:
            subprocess.run([sys.executable, "-m", "apparel.stack", "down"], check=False)
    print()
    print(f"cpus: {os.cpu_count()}; shop commit to visible in the table, polled every {POLL_S} s")
    print("\n".join(render(results)))
    for r in results:
        if r.lost:
            print(
                f"{r.rate:g} orders/s: {len(r.lost)} marked lines not in the mart after {ARRIVAL_TIMEOUT_S} s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
