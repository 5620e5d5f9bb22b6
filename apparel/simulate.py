"""The shop simulator: realistic new orders, status changes, cancellations and line deletes.

`run_simulator` writes into the store database at a steady rate of orders per second, the way
the Django shop would: a customer from `shop_customer` (about 3% of orders come from a new
customer), a delivery city with its own province, 1 to 5 lines of products at their list price,
and a stream of changes to recent orders (pending -> paid -> shipped -> delivered, some
cancellations, now and then a line removed from a pending order).

Every choice comes from one seeded random generator consumed order by order, and the ids are
taken from the tables' own identity sequences, so `seed=N` on the same store writes the same rows
whatever the timing. The pace comes from a steady clock: the orders due at each 20 ms tick are
`rate x elapsed time` minus those written, so the rate does not drift when a tick runs long.

Two ways to write, same rows:
- `transactions="order"`: each order, status change and line delete is its own transaction, as
  the shop writes them; the tick's transactions are sent in one pipeline (one round trip).
- `transactions="tick"`: all the writes of one tick in one transaction, with one statement per
  table; this is what reaches thousands of orders per second on a small machine.
`"auto"` (the default): per-order transactions up to ORDER_TRANSACTIONS_MAX_RATE orders/s, except
that a tick which has fallen behind (the store could not commit them one by one fast enough) writes
its backlog in one transaction; per-tick transactions above that rate.
"""

from __future__ import annotations

import csv
import io
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg

from apparel.readers import open_extract
from apparel.sources import get_source
from apparel.store import StoreError, connect_store

log = logging.getLogger(__name__)

TICK_SECONDS = 0.02
# Lines per order 1..5 and their weights: mean 2.6 lines, like the dataset's orders.
LINE_COUNTS = (1, 2, 3, 4, 5)
LINE_WEIGHTS = (0.25, 0.27, 0.22, 0.15, 0.11)
MAX_QUANTITY = 9
# Per new order: chance of a new customer, and of each change to a recent order.
P_NEW_CUSTOMER = 0.03
P_STATUS_CHANGE = 0.9
P_CANCEL = 0.03
P_LINE_DELETE = 0.01
# Changes go to orders among the last RECENT_ORDERS the simulator knows of.
RECENT_ORDERS = 5_000
NEXT_STATUS = {"pending": "paid", "paid": "shipped", "shipped": "delivered"}
CANCELLABLE = ("pending", "paid")
# "auto": per-order transactions up to this rate. One connection commits a few hundred to a thousand
# transactions per second on a 2-core machine (each order comes with about one change: ~2 per order).
ORDER_TRANSACTIONS_MAX_RATE = 200.0
# "auto": a tick with more than this many ticks' worth of orders due has fallen behind; it is grouped.
CATCH_UP_TICKS = 2
# At most this many ticks' worth of orders in one tick: a simulator that cannot keep up writes
# moderate transactions at its best speed rather than one huge catch-up transaction.
MAX_TICKS_PER_WRITE = 5
# ... and never more orders than this in one transaction (about 5,000 changes: one stream batch).
MAX_ORDERS_PER_WRITE = 1_000
ID_BLOCK = 1_000


@dataclass
class SimulationStats:
    """What a run wrote. `rate` is the target; `achieved_rate` what the store took."""

    rate: float
    transactions_mode: str = "auto"  # how it wrote: order, tick, or auto (per order, catching up per tick)
    orders: int = 0
    lines: int = 0
    customers: int = 0  # new customers created
    updates: int = 0  # status changes pending -> paid -> shipped -> delivered
    cancellations: int = 0
    line_deletes: int = 0
    transactions: int = 0
    seconds: float = 0.0

    @property
    def achieved_rate(self) -> float:
        """Orders per second actually written."""
        return self.orders / self.seconds if self.seconds else 0.0

    @property
    def lines_per_second(self) -> float:
        return self.lines / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        return (
            f"{self.orders:,} orders ({self.achieved_rate:,.1f}/s of {self.rate:,.0f}/s), "
            f"{self.lines:,} lines ({self.lines_per_second:,.1f}/s), {self.customers:,} new customers, "
            f"{self.updates:,} status changes, {self.cancellations:,} cancellations, "
            f"{self.line_deletes:,} line deletes in {self.seconds:.1f}s"
        )


# --- Reference data ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Catalogue:
    """What the shop sells and where it delivers, from the extracts."""

    products: list[tuple[int, int]]  # (product_id, list price)
    cities: list[tuple[int, int]]  # (city_id, province_id)


def load_catalogue(dataset_dir: Path) -> Catalogue:
    products = [(int(r["product_id"]), int(r["price"])) for r in _extract_rows("products", dataset_dir)]
    cities = [(int(r["city_id"]), int(r["province_id"])) for r in _extract_rows("cities", dataset_dir)]
    if not products or not cities:
        raise ValueError(f"no products or no cities in {dataset_dir}: the simulator needs both")
    return Catalogue(products, cities)


def _extract_rows(source_name: str, dataset_dir: Path) -> list[dict[str, str]]:
    """An extract's rows as dicts, read by the loader's own reader (any format it supports)."""
    source = get_source(source_name)
    extract = open_extract(source, dataset_dir / source.file)
    text = b"".join(extract.chunks).decode()
    return [dict(zip(extract.columns, row, strict=False)) for row in csv.reader(io.StringIO(text))]


# --- What to write ----------------------------------------------------------------------------


@dataclass
class NewOrder:
    order_id: int
    customer_id: int
    province_id: int
    city_id: int
    # (line id, product id, quantity, unit price)
    lines: list[tuple[int, int, int, int]]
    # (id, first name, last name, gender) when the order comes from a new customer
    new_customer: tuple[int, str, str, str] | None = None


@dataclass
class StatusChange:
    order_id: int
    status: str


@dataclass
class LineDelete:
    line_id: int


Write = NewOrder | StatusChange | LineDelete


@dataclass
class _RecentOrder:
    status: str
    line_ids: list[int]


class IdBlocks:
    """Ids reserved from a table's identity sequence, handed out in order."""

    def __init__(self, conn: psycopg.Connection, table: str):
        self.conn = conn
        self.sequence = conn.execute("select pg_get_serial_sequence(%s, 'id')", (table,)).fetchone()[0]
        self.ids: deque[int] = deque()

    def reserve(self, count: int) -> None:
        """Make `count` ids available without a round trip (called before the tick's pipeline)."""
        while len(self.ids) < count:
            rows = self.conn.execute(
                "select nextval(%s) from generate_series(1, %s)", (self.sequence, ID_BLOCK)
            ).fetchall()
            self.ids.extend(r[0] for r in rows)

    def take(self) -> int:
        return self.ids.popleft()


class Shop:
    """Decides what the shop writes next; every choice from one seeded generator."""

    def __init__(self, conn: psycopg.Connection, catalogue: Catalogue, seed: int | None):
        self.rng = random.Random(seed)
        self.catalogue = catalogue
        if conn.execute("select to_regclass('shop_customer') is null").fetchone()[0]:
            raise StoreError("the store has no shop tables: run `apparel store init` (make store) first")
        customers = conn.execute(
            "select id, first_name, last_name, gender from shop_customer order by id"
        ).fetchall()
        if not customers:
            raise StoreError("shop_customer is empty: the simulator needs customers to write orders")
        self.customer_ids = [c[0] for c in customers]
        self.first_names = {
            g: sorted({c[1] for c in customers if c[3] == g}) for g in sorted({c[3] for c in customers})
        }
        self.last_names = sorted({c[2] for c in customers})
        # Orders still moving through their statuses, oldest first: where the changes go.
        self.recent: dict[int, _RecentOrder] = {}
        self.recent_ids: deque[int] = deque(maxlen=RECENT_ORDERS)
        rows = conn.execute(
            "select o.id, o.status, coalesce(array_agg(l.id order by l.id)"
            " filter (where l.id is not null), '{}')"
            " from (select id, status from shop_order where status <> all(%s)"
            "       order by id desc limit %s) o"
            " left join shop_orderline l on l.order_id = o.id group by o.id, o.status order by o.id",
            (["delivered", "cancelled"], RECENT_ORDERS),
        ).fetchall()
        for order_id, status, line_ids in rows:
            self._remember(order_id, _RecentOrder(status, list(line_ids)))
        self.order_ids = IdBlocks(conn, "shop_order")
        self.line_ids = IdBlocks(conn, "shop_orderline")
        self.new_customer_ids = IdBlocks(conn, "shop_customer")

    def reserve(self, orders: int) -> None:
        """Ids for up to `orders` new orders with all their lines and customers."""
        self.order_ids.reserve(orders)
        self.line_ids.reserve(orders * LINE_COUNTS[-1])
        self.new_customer_ids.reserve(orders)

    def next_writes(self) -> list[Write]:
        """One new order, then the changes to recent orders that come with it."""
        rng = self.rng
        writes: list[Write] = [self._new_order()]
        if rng.random() < P_STATUS_CHANGE:
            order_id = self._pick(lambda o: o.status in NEXT_STATUS)
            if order_id is not None:
                writes.append(self._set_status(order_id, NEXT_STATUS[self.recent[order_id].status]))
        if rng.random() < P_CANCEL:
            order_id = self._pick(lambda o: o.status in CANCELLABLE)
            if order_id is not None:
                writes.append(self._set_status(order_id, "cancelled"))
        if rng.random() < P_LINE_DELETE:
            # A customer removing an item before paying; the order keeps at least one line.
            order_id = self._pick(lambda o: o.status == "pending" and len(o.line_ids) > 1)
            if order_id is not None:
                lines = self.recent[order_id].line_ids
                writes.append(LineDelete(lines.pop(rng.randrange(len(lines)))))
        return writes

    def _new_order(self) -> NewOrder:
        rng = self.rng
        new_customer = None
        if rng.random() < P_NEW_CUSTOMER:
            gender = rng.choice(sorted(self.first_names))
            customer_id = self.new_customer_ids.take()
            new_customer = (
                customer_id,
                rng.choice(self.first_names[gender]),
                rng.choice(self.last_names),
                gender,
            )
            self.customer_ids.append(customer_id)
        else:
            customer_id = rng.choice(self.customer_ids)
        city_id, province_id = rng.choice(self.catalogue.cities)
        count = rng.choices(LINE_COUNTS, LINE_WEIGHTS)[0]
        lines = []
        for product_id, price in rng.sample(self.catalogue.products, count):
            lines.append((self.line_ids.take(), product_id, rng.randint(1, MAX_QUANTITY), price))
        order = NewOrder(self.order_ids.take(), customer_id, province_id, city_id, lines, new_customer)
        self._remember(order.order_id, _RecentOrder("pending", [line[0] for line in lines]))
        return order

    def _remember(self, order_id: int, order: _RecentOrder) -> None:
        if len(self.recent_ids) == self.recent_ids.maxlen:
            self.recent.pop(self.recent_ids[0], None)
        self.recent_ids.append(order_id)
        self.recent[order_id] = order

    def _pick(self, wanted: Callable[[_RecentOrder], bool], tries: int = 5) -> int | None:
        """A random recent order that `wanted` accepts, or None after a few misses."""
        for _ in range(tries):
            if not self.recent_ids:
                return None
            order_id = self.recent_ids[self.rng.randrange(len(self.recent_ids))]
            order = self.recent.get(order_id)
            if order is not None and wanted(order):
                return order_id
        return None

    def _set_status(self, order_id: int, status: str) -> StatusChange:
        order = self.recent[order_id]
        order.status = status
        if status not in NEXT_STATUS:  # delivered or cancelled: no more changes
            del self.recent[order_id]
        return StatusChange(order_id, status)


# --- Writing ----------------------------------------------------------------------------------

INSERT_CUSTOMER = "insert into shop_customer (id, first_name, last_name, gender) values (%s, %s, %s, %s)"
# One statement per order: the header and its lines (FKs are checked at the end of the statement).
INSERT_ORDER = """with o as (
    insert into shop_order (id, customer_id, province_id, city_id) values (%s, %s, %s, %s)
)
insert into shop_orderline (id, order_id, product_id, quantity, unit_price, amount)
select l.id, %s, l.product_id, l.quantity, l.unit_price, l.quantity * l.unit_price
from unnest(%s::bigint[], %s::int[], %s::int[], %s::bigint[]) as l(id, product_id, quantity, unit_price)"""
UPDATE_STATUS = "update shop_order set status = %s, updated_at = now() where id = %s"
DELETE_LINE = "delete from shop_orderline where id = %s"

# Binary parameters (%b): psycopg packs arrays of thousands of numbers without quoting each one.
INSERT_CUSTOMERS = """insert into shop_customer (id, first_name, last_name, gender)
select * from unnest(%b::bigint[], %b::text[], %b::text[], %b::text[])"""
INSERT_ORDERS = """insert into shop_order (id, customer_id, province_id, city_id)
select * from unnest(%b::bigint[], %b::bigint[], %b::int[], %b::int[])"""
INSERT_LINES = """insert into shop_orderline (id, order_id, product_id, quantity, unit_price, amount)
select l.id, l.order_id, l.product_id, l.quantity, l.unit_price, l.quantity * l.unit_price
from unnest(%b::bigint[], %b::bigint[], %b::int[], %b::int[], %b::bigint[])
    as l(id, order_id, product_id, quantity, unit_price)"""
UPDATE_STATUSES = """update shop_order o set status = u.status, updated_at = now()
from unnest(%b::bigint[], %b::text[]) as u(id, status) where o.id = u.id"""
DELETE_LINES = "delete from shop_orderline where id = any(%b::bigint[])"


def _write_each(cur: psycopg.Cursor, writes: list[Write]) -> int:
    """Each write its own transaction (explicit BEGIN/COMMIT: a pipeline's implicit one spans to Sync)."""
    for w in writes:
        cur.execute("begin")
        if isinstance(w, NewOrder):
            if w.new_customer:
                cur.execute(INSERT_CUSTOMER, w.new_customer)
            cur.execute(
                INSERT_ORDER,
                (
                    w.order_id,
                    w.customer_id,
                    w.province_id,
                    w.city_id,
                    w.order_id,
                    *(list(column) for column in zip(*w.lines, strict=True)),
                ),
            )
        elif isinstance(w, StatusChange):
            cur.execute(UPDATE_STATUS, (w.status, w.order_id))
        else:
            cur.execute(DELETE_LINE, (w.line_id,))
        cur.execute("commit")
    return len(writes)


def _write_grouped(cur: psycopg.Cursor, writes: list[Write]) -> int:
    """All writes in one transaction, one statement per table."""
    orders = [w for w in writes if isinstance(w, NewOrder)]
    customers = [o.new_customer for o in orders if o.new_customer]
    lines = [(line[0], o.order_id, *line[1:]) for o in orders for line in o.lines]
    # An order changed twice in one tick takes its last status.
    statuses = {w.order_id: w.status for w in writes if isinstance(w, StatusChange)}
    deletes = [w.line_id for w in writes if isinstance(w, LineDelete)]
    cur.execute("begin")
    if customers:
        cur.execute(INSERT_CUSTOMERS, [list(c) for c in zip(*customers, strict=True)])
    if orders:
        cur.execute(
            INSERT_ORDERS,
            (
                [o.order_id for o in orders],
                [o.customer_id for o in orders],
                [o.province_id for o in orders],
                [o.city_id for o in orders],
            ),
        )
        cur.execute(INSERT_LINES, [list(c) for c in zip(*lines, strict=True)])
    if statuses:
        cur.execute(UPDATE_STATUSES, (list(statuses), list(statuses.values())))
    if deletes:
        cur.execute(DELETE_LINES, (deletes,))
    cur.execute("commit")
    return 1


def _count(stats: SimulationStats, writes: list[Write]) -> None:
    for w in writes:
        if isinstance(w, NewOrder):
            stats.orders += 1
            stats.lines += len(w.lines)
            stats.customers += w.new_customer is not None
        elif isinstance(w, StatusChange):
            if w.status == "cancelled":
                stats.cancellations += 1
            else:
                stats.updates += 1
        else:
            stats.line_deletes += 1


def run_simulator(
    store_url: str,
    rate: float,
    duration: float,
    *,
    seed: int | None = None,
    dataset_dir: Path | None = None,
    stop_event: threading.Event | None = None,
    transactions: str = "auto",
    on_progress: Callable[[SimulationStats], None] | None = None,
    progress_every: float = 5.0,
) -> SimulationStats:
    """Write `rate` orders per second (with their changes) for `duration` seconds (0: until stopped).

    Stops at the end of `duration` or when `stop_event` is set, after finishing the current tick.
    Raises StoreError when the store cannot be reached, psycopg errors when a write fails.
    """
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    if duration < 0:
        raise ValueError(f"duration must be 0 (until stopped) or positive, got {duration}")
    if transactions not in ("auto", "order", "tick"):
        raise ValueError(f"transactions must be 'order', 'tick' or 'auto', got {transactions!r}")
    if dataset_dir is None:
        from apparel.config import load_settings

        dataset_dir = load_settings().dataset_dir
    catalogue = load_catalogue(dataset_dir)
    stop_event = stop_event or threading.Event()
    if transactions == "auto" and rate > ORDER_TRANSACTIONS_MAX_RATE:
        transactions = "tick"
    stats = SimulationStats(rate=rate, transactions_mode=transactions)
    per_tick = rate * TICK_SECONDS
    max_batch = max(1, min(int(per_tick * MAX_TICKS_PER_WRITE), MAX_ORDERS_PER_WRITE))
    catching_up = max(1.0, per_tick * CATCH_UP_TICKS)

    with connect_store(store_url, autocommit=True, application_name="apparel-simulate") as conn:
        shop = Shop(conn, catalogue, seed)
        cur = conn.cursor()
        start = time.monotonic()
        next_progress = start + progress_every
        tick = 0
        while True:
            now = time.monotonic()
            elapsed = now - start
            finished = stop_event.is_set() or (duration and elapsed >= duration)
            due_total = int(rate * (min(elapsed, duration) if duration else elapsed))
            due = min(due_total - stats.orders, max_batch)
            if due > 0:
                shop.reserve(due)
                writes = [w for _ in range(due) for w in shop.next_writes()]
                grouped = transactions == "tick" or (transactions == "auto" and due > catching_up)
                with conn.pipeline():
                    stats.transactions += (_write_grouped if grouped else _write_each)(cur, writes)
                _count(stats, writes)
            if finished:
                break
            if on_progress and now >= next_progress:
                stats.seconds = now - start
                on_progress(stats)
                next_progress += progress_every
            tick += 1
            # The steady clock: tick k starts at start + k x TICK, however long the last one took.
            stop_event.wait(max(0.0, start + tick * TICK_SECONDS - time.monotonic()))
        stats.seconds = time.monotonic() - start
    log.debug("simulator: %s", stats.summary())
    return stats
