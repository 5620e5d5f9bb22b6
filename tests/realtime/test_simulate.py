"""The shop simulator on a real store: its pace, the validity of what it writes, its seed, its stop.

Its pace is tested on a simulated clock (time moves only when the simulator waits for its next
tick), so what it writes for a given number of ticks is exact however busy the machine; the real
time it took is printed, not asserted."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from types import SimpleNamespace

import pytest

from apparel import simulate
from apparel.config import PROJECT_ROOT
from apparel.simulate import TICK_SECONDS, load_catalogue, run_simulator
from apparel.store import ensure_store, reset_store, store_status
from tests.conftest import DATASET_DIR, query, scalar

APPAREL = PROJECT_ROOT / ".venv" / "bin" / "apparel"


@pytest.fixture
def store(fresh_db: str) -> str:
    ensure_store(fresh_db, DATASET_DIR)
    return fresh_db


class SimulatedClock(threading.Event):
    """The simulator's clock and its stop event in one: `wait(timeout)` moves the clock on by
    `timeout` instead of sleeping, and sets the event once `stop_after` simulated seconds have passed."""

    def __init__(self, stop_after: float | None = None):
        super().__init__()
        self.now = 0.0
        self.ticks = 0
        self.stop_after = stop_after

    def monotonic(self) -> float:
        return self.now

    def wait(self, timeout: float | None = None) -> bool:
        self.now += timeout or 0.0
        self.ticks += 1
        if self.stop_after is not None and self.now >= self.stop_after:
            self.set()
        return self.is_set()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> SimulatedClock:
    """The simulated clock, in place of the real one for `apparel.simulate` only (pass it as stop_event)."""
    clock = SimulatedClock()
    monkeypatch.setattr(simulate, "time", SimpleNamespace(monotonic=clock.monotonic))
    return clock


def _max_ids(url: str) -> dict[str, int]:
    return {s.table: s.max_id for s in store_status(url)}


def _seeded_max_order_id(url: str) -> int:
    return _max_ids(url)["shop_order"]


@pytest.mark.parametrize(("rate", "transactions"), [(100, "auto"), (1000, "tick")])
def test_simulator_writes_valid_orders_at_its_rate(
    store: str, clock: SimulatedClock, rate: int, transactions: str
) -> None:
    seeded_max, seeded_customers = _max_ids(store)["shop_order"], _max_ids(store)["shop_customer"]
    duration = 2.0

    started = time.perf_counter()
    stats = run_simulator(
        store, rate, duration, seed=5, dataset_dir=DATASET_DIR, transactions=transactions, stop_event=clock
    )
    real = time.perf_counter() - started
    print(f"{stats.orders:,} orders ({stats.transactions:,} transactions) in {real:.2f} s real time")

    # The steady clock: exactly rate x duration orders, in duration / TICK_SECONDS ticks.
    assert stats.orders == rate * duration
    assert stats.seconds == pytest.approx(duration) and clock.ticks == round(duration / TICK_SECONDS)
    if transactions == "tick":
        assert stats.transactions == clock.ticks  # every tick had orders due: one transaction each
    else:  # 2 orders a tick: never behind, so each order and each change is a transaction of its own
        assert stats.transactions == stats.orders + stats.updates + stats.cancellations + stats.line_deletes
    assert stats.transactions_mode == transactions
    new_orders = f"(select id from shop_order where id > {seeded_max})"
    assert scalar(store, f"select count(*) from {new_orders} o") == stats.orders
    assert scalar(store, f"select count(*) from shop_orderline where order_id in {new_orders}") == (
        stats.lines - stats.line_deletes
    )
    assert 2.3 <= stats.lines / stats.orders <= 2.9
    assert stats.updates > 0 and stats.cancellations > 0 and stats.line_deletes > 0
    assert scalar(store, "select count(*) from shop_order where status = 'cancelled'") == stats.cancellations
    assert (
        scalar(store, f"select count(*) from shop_order where id > {seeded_max} and status <> 'pending'") > 0
    )
    assert (
        scalar(store, "select count(*) from shop_customer where id > %s", (seeded_customers,))
        == stats.customers
    )

    catalogue = load_catalogue(DATASET_DIR)
    prices = dict(catalogue.products)
    provinces = dict(catalogue.cities)
    lines = query(
        store,
        f"select product_id, quantity, unit_price, amount from shop_orderline where order_id in {new_orders}",
    )
    for product, qty, price, amount in lines:
        assert 1 <= qty <= 9 and price == prices[product] and amount == qty * price
    places = query(store, f"select city_id, province_id from shop_order where id in {new_orders}")
    assert all(provinces[city] == province for city, province in places)
    # Removing a line never empties an order.
    without_lines = (
        f"select count(*) from {new_orders} o"
        " where not exists (select from shop_orderline l where l.order_id = o.id)"
    )
    assert scalar(store, without_lines) == 0


def _written(url: str, after: int) -> list[tuple]:
    """What the simulator chose for each new order: customer, place and lines, status aside."""
    return query(
        url,
        "select o.id, o.customer_id, o.city_id, array_agg((l.id, l.product_id, l.quantity) order by l.id)"
        " from shop_order o left join shop_orderline l on l.order_id = o.id where o.id > %s"
        " group by o.id order by o.id",
        (after,),
    )


def _statuses(url: str, after: int) -> list[tuple]:
    return query(url, "select id, status from shop_order where id > %s order by id", (after,))


def test_the_same_seed_writes_the_same_orders_whatever_the_transactions(
    store: str, clock: SimulatedClock
) -> None:
    seeded_max = _seeded_max_order_id(store)

    def run(seed: int, transactions: str):
        clock.now, clock.ticks = 0.0, 0
        return run_simulator(
            store, 100, 1, seed=seed, dataset_dir=DATASET_DIR, transactions=transactions, stop_event=clock
        )

    first = run(42, "order")
    rows_first, statuses_first = _written(store, seeded_max), _statuses(store, seeded_max)

    reset_store(store, DATASET_DIR, create_database=False)
    second = run(42, "tick")

    assert first.orders == second.orders == 100 and len(rows_first) == 100
    assert first.transactions > second.transactions  # one per write vs one per tick
    assert _written(store, seeded_max) == rows_first
    # Each order's last status too (a tick's transaction keeps an order's last change of the tick).
    assert _statuses(store, seeded_max) == statuses_first
    assert {status for _, status in statuses_first} > {"pending"}

    reset_store(store, DATASET_DIR, create_database=False)
    run(43, "auto")
    assert _written(store, seeded_max) != rows_first


def test_duration_zero_runs_until_stopped(store: str, clock: SimulatedClock) -> None:
    clock.stop_after = 1.0

    stats = run_simulator(store, 50, 0, seed=1, dataset_dir=DATASET_DIR, stop_event=clock)

    # It ran until the event, not for a duration, and wrote the tick it was stopped in.
    assert clock.ticks == round(1.0 / TICK_SECONDS) and stats.seconds == pytest.approx(1.0)
    assert stats.orders == 50


def test_cli_simulate_stops_cleanly_on_sigterm(store: str) -> None:
    proc = subprocess.Popen(
        [str(APPAREL), "simulate", "--rate", "20", "--seed", "3"],
        env={**os.environ, "STORE_URL": store},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Wait until it writes, then stop it as a process manager would.
    seeded_max = _seeded_max_order_id(store)
    deadline = time.monotonic() + 30
    while scalar(store, "select count(*) from shop_order where id > %s", (seeded_max,)) == 0:
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)

    assert proc.returncode == 0, err
    written = scalar(store, "select count(*) from shop_order where id > %s", (seeded_max,))
    assert f"{written:,} orders" in out
