"""Transformation benchmark: `dbt build` from scratch, then two incremental steps of a fixed size, per scale.

`make bench-transform SCALES="10 100 1000"` runs, for each scale N (extracts generated or reused in
`bench-data/scale-N/`, a fresh warehouse and shop database each):

0. set-up (untimed): the extracts loaded by our loader, a shop database seeded from the same folder
   (`apparel.store.ensure_store`) and mirrored into `raw_store` by the CDC stream (until caught up);
1. the full build: `dbt build --exclude tag:whole_history` from scratch, what `transform` builds
   (every seed, model, snapshot and test but the business marts); then, timed apart, the business
   marts as the `business_marts` DAG builds them after each `transform` (`--select tag:whole_history`):
   they rank, pair and group the whole history, so their time is not a step's;
2. step (a), extracts: NEW_ORDERS new orders with their lines (1% of scale 10's orders, the SAME
   absolute change at every scale) appended to copies of `orders.csv` and `order_details.csv`, both
   reloaded by the loader (which merges by key: only the new rows are written), then the timed
   `dbt build --select source:raw.orders+ source:raw.order_details+` (tests included; each step
   excludes the business marts, as `transform` does);
3. step (b), a shop minute: the simulator writes SHOP_RATE orders/s for SHOP_SECONDS s into the shop
   (seeded: the same orders, status changes, cancellations, line deletes and new customers at every
   scale), the stream catches up, then the timed `dbt build --select source:raw_store+`.

The full build and each step start once the set-up's bulk writes (and step (a)'s reload, for step
(b)) are older than the project's `source_lookback` (1 minute): the base models read the source rows
that arrived that long before each run again, so a build run sooner would leave the whole initial
copy for the next step to read again, once, which a steady-state run does not (the wait is logged).
A step's tests read the rows written since the last build from scratch (the project's
`test_window`, 2 days in production, set to that time): a run two days after the weekly full
refresh tests the rows of the last two days, not the whole history, and a step right after a build
from scratch would otherwise test every row. During the full build and the full refreshes the
stream runs in a thread, as it runs beside dbt in production, reading the WAL dbt writes (it has no
shop changes to apply then); without it the slot would hold 40 GB and more of WAL at scale 1000.

After each step the result is checked against a full refresh on the same database: the fact (every
column but `loaded_at`) and the brief's marts are copied, `dbt run --full-refresh` rebuilds every
model `transform` builds (untimed as a step), and the copies are compared with the rebuilt tables (a
hash over each row, and on a mismatch the rows in one and not the other): "equal" or "DIFFERENT (n rows)".

It prints one table (scale, full build, steps (a) and (b) with their ratio to the full build, equal?),
the goals (a step at the largest scale within 2x of the same step at the smallest scale, and within 5%
of the full build at the largest scale), and per scale where the time goes: dbt's start-up and
wrap-up, the nodes by phase, the slowest nodes. Node times come from `run_results.json` and overlap
(dbt runs several threads), so a phase's figure is the time its nodes ran, not a share of the wall
clock. At scale 100 (or the largest scale <= 100 run) it also times the reload of an `order_details.csv`
with 1% of its lines' quantities changed, by our loader (a merge into the loaded table) against
`psql \\copy` of the whole file into an empty table; `make bench-ingest` compares first loads.

The builds run in this process through dbt's Python API (dbtRunner), as a long-lived worker runs
dbt, so they leave out importing dbt, which every `dbt` command line pays: that is timed once and
printed. Figures only: nothing is asserted.

The databases are never the user's: an embedded server in `STATE_DIR/bench-transform-pg` (its own
folder, so `make bench-ingest` cannot stop it midway; destroyed after each scale unless `--keep`),
or, when WAREHOUSE_URL is set, databases `apparel_bench_transform` and `apparel_bench_transform_store`
on that server (it needs `wal_level=logical`; dropped with their replication slot unless `--keep`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from math import ceil
from pathlib import Path

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg import sql

from apparel.bench_ingest import bench_database, checkpoint, ensure_data, run_copy
from apparel.config import load_settings, with_database
from apparel.dbt_runner import (
    DBT_PROJECT_DIR,
    STREAMED_SOURCE,
    WHOLE_HISTORY_TAG,
    dbt_env,
    downstream_of_sources,
)
from apparel.loader import load_source
from apparel.sources import SOURCES, get_source
from apparel.stream import drop_slot
from apparel.transform import BUSINESS_MARTS

# Not __name__: under `python -m` that is "__main__".
log = logging.getLogger("apparel.bench_transform")

BENCH_DATABASE = "apparel_bench_transform"
STORE_DATABASE = "apparel_bench_transform_store"
SLOT = PUBLICATION = "apparel_bench_transform"  # not the real stream's (apparel_cdc) on a shared server
CHECK_SCHEMA = "bench_check"
COPY_SCHEMA = "bench_copy"
DEFAULT_SCALES = (10, 100, 1000)
DEFAULT_SEED = 42
# Step (a): 1% of scale 10's 70,691 orders (seed 42), the same absolute change at every scale.
NEW_ORDERS = 707
# New extract ids start this far above the extracts' highest: the shop's sequences (seeded just
# above them) hand the simulator's orders and lines the ids in between, so the two never collide.
ID_GAP = 1_000_000
# Step (b): a shop minute, the same at every scale (seeded simulator, per-order transactions).
SHOP_RATE = 50.0  # orders per second
SHOP_SECONDS = 10.0
SHOP_SEED = 7
# The reload comparison: this share of order_details' lines get a new quantity.
CHANGED_LINES_SHARE = 0.01
RELOAD_MAX_SCALE = 100
# Goals, per step: at the largest scale within GOAL_GROWTH x of the smallest scale's,
# and at most GOAL_SHARE of the full build.
GOAL_GROWTH = 2.0
GOAL_SHARE = 0.05
FACT = "fct_transactions"
# What `transform` builds: everything but the business marts, which `business_marts` rebuilds from the
# whole history after it (timed apart, once per scale).
TRANSFORM_EXCLUDE = [f"tag:{WHOLE_HISTORY_TAG}"]
TOP_NODES = 8
HEARTBEAT_SECONDS = 60.0
_INTERVAL = re.compile(r"^\s*(\d+)\s*(second|minute|hour)s?\s*$")
_INTERVAL_SECONDS = {"second": 1, "minute": 60, "hour": 3600}

# Phases of a build, in DAG order; a node's phase comes from its type and what it builds or tests.
PHASES = (
    "seeds",
    "staging base tables",
    "staging views",
    "snapshot",
    "dimensions",
    FACT,
    "marts",
    "business marts",
    "tests: staging",
    "tests: dimensions and snapshot",
    f"tests: {FACT}",
    "tests: reconciliations",
    "tests: marts",
    "unit tests",
    "other",
)


@dataclass
class NodeTiming:
    unique_id: str
    phase: str
    seconds: float


@dataclass
class BuildTiming:
    seconds: float  # wall clock of the whole `dbt build` (dbt start-up included)
    dbt_elapsed: float  # dbt's own elapsed time for running the nodes (run_results.json)
    fact_seconds: float  # fct_transactions' own execution time (0 when not selected)
    fact_rows: int  # rows the fact model wrote (INSERT / MERGE count)
    nodes: list[NodeTiming]

    def phase_seconds(self) -> dict[str, float]:
        totals = dict.fromkeys(PHASES, 0.0)
        for node in self.nodes:
            totals[node.phase] += node.seconds
        return totals


@dataclass
class Comparison:
    """The incremental result against a full refresh: differing rows per table (0: equal)."""

    differing: dict[str, int] = field(default_factory=dict)
    refresh_seconds: float = 0.0

    @property
    def equal(self) -> bool:
        return not any(self.differing.values())

    def __str__(self) -> str:
        if self.equal:
            return "equal"
        return f"DIFFERENT ({sum(self.differing.values()):,} rows)"

    def details(self) -> str:
        return ", ".join(f"{table} {n:,}" for table, n in self.differing.items() if n)


@dataclass
class Reload:
    """Our loader's reload of a 1%-changed order_details.csv against `\\copy` of it into an empty table."""

    rows: int
    changed: int
    updated: int
    ours_seconds: float
    copy_seconds: float


@dataclass
class ScaleResult:
    scale: int
    fact_rows: int
    full: BuildTiming
    business: BuildTiming  # the business marts, rebuilt after the full build (not in the steps)
    step_a: BuildTiming
    step_b: BuildTiming
    check_a: Comparison
    check_b: Comparison
    select_a: list[str]
    select_b: list[str]
    new_lines: int
    shop: str  # what the simulator wrote
    reload: Reload | None = None


# --- phases ----------------------------------------------------------------------------------------


def _model_phase(name: str) -> str:
    if name.startswith("base_"):
        return "staging base tables"
    if name.startswith("stg_"):
        return "staging views"
    if name.startswith("dim_"):
        return "dimensions"
    if name == FACT:
        return FACT
    if name in BUSINESS_MARTS:
        return "business marts"
    if name.startswith("dm_"):
        return "marts"
    return "other"


def node_phase(unique_id: str, manifest_nodes: dict) -> str:
    """The phase of a run_results node (unique ids: `<type>.<project>.<name>[.<hash>]`)."""
    kind, _, name = unique_id.split(".")[:3]
    if kind == "model":
        return _model_phase(name)
    if kind in ("snapshot", "seed"):
        return "snapshot" if kind == "snapshot" else "seeds"
    if kind == "unit_test":
        return "unit tests"
    if kind != "test":
        return "other"
    node = manifest_nodes.get(unique_id, {})
    attached = node.get("attached_node")
    if not attached:  # a singular test in tests/: the reconciliations
        return "tests: reconciliations"
    if not attached.startswith("model."):
        return "tests: dimensions and snapshot"
    tested = _model_phase(attached.split(".")[-1])
    return {
        "staging base tables": "tests: staging",
        "staging views": "tests: staging",
        FACT: f"tests: {FACT}",
        "marts": "tests: marts",
        "business marts": "tests: marts",
    }.get(tested, "tests: dimensions and snapshot")


# --- the extracts' changes -------------------------------------------------------------------------


def _read_csv(path: Path) -> pa.Table:
    # order_date stays text, so appended rows keep the extract's exact format.
    return pacsv.read_csv(
        path, convert_options=pacsv.ConvertOptions(column_types={"order_date": pa.string()})
    )


def _write_csv(path: Path, table: pa.Table, *, append: bool) -> None:
    with path.open("ab" if append else "wb") as f:
        pacsv.write_csv(table, f, pacsv.WriteOptions(include_header=not append, quoting_style="none"))


def add_new_orders(
    data_dir: Path, out_dir: Path, count: int = NEW_ORDERS, id_gap: int = ID_GAP
) -> tuple[int, int]:
    """Copy the two fact extracts to `out_dir` with `count` more orders appended, each a copy of one of
    the newest orders (same date, customer, city, lines) under new order and line ids, `id_gap` above
    the highest: new orders, dated like the latest ones, as a later export would add them. Returns
    (orders, lines) appended."""
    orders = _read_csv(data_dir / "orders.csv")
    details = _read_csv(data_dir / "order_details.csv")
    count = min(count, orders.num_rows)

    # The newest orders (the generator writes orders of every month in turn, so the file's last rows
    # span the whole year: copies of those would touch every month of history, not the latest).
    newest = pc.sort_indices(orders, sort_keys=[("order_date", "descending"), ("order_id", "descending")])
    templates = orders.take(np.sort(newest[:count].to_numpy()))  # in file order
    order_offset = pc.max(orders["order_id"]).as_py() + id_gap - pc.min(templates["order_id"]).as_py()
    new_orders = templates.set_column(0, "order_id", pc.add(templates["order_id"], order_offset))

    lines = details.filter(pc.is_in(details["order_id"], value_set=templates["order_id"]))
    first_line = pc.max(details["order_detail_id"]).as_py() + id_gap
    line_ids = pa.array(range(first_line, first_line + lines.num_rows), pa.int64())
    new_lines = lines.set_column(0, "order_detail_id", line_ids).set_column(
        1, "order_id", pc.add(lines["order_id"], order_offset)
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, extra in (("orders.csv", new_orders), ("order_details.csv", new_lines)):
        shutil.copyfile(data_dir / name, out_dir / name)
        _write_csv(out_dir / name, extra, append=True)
    return new_orders.num_rows, new_lines.num_rows


def change_quantities(data_dir: Path, out_dir: Path, share: float = CHANGED_LINES_SHARE) -> tuple[int, int]:
    """`order_details.csv` of `data_dir` written to `out_dir` with every 1/share-th line's quantity
    changed (and its amount with it). Returns (lines, lines changed)."""
    details = _read_csv(data_dir / "order_details.csv")
    step = max(1, round(1 / share))
    changed = pa.array(np.arange(details.num_rows) % step == 0)
    qty = details["qty"]
    new_qty = pc.if_else(changed, pc.add(pc.remainder(qty, 9), 1), qty)  # 1..9, never the old value
    names = details.column_names
    details = details.set_column(names.index("qty"), "qty", new_qty)
    details = details.set_column(
        names.index("unit_sales"), "unit_sales", pc.multiply(new_qty, details["item_price"])
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(out_dir / "order_details.csv", details, append=False)
    return details.num_rows, pc.sum(changed.cast(pa.int64())).as_py()


def load(url: str, data_dir: Path, names: list[str]) -> dict[str, object]:
    results = {}
    for name in names:
        started = time.perf_counter()
        results[name] = result = load_source(url, get_source(name), data_dir, force=True)
        log.info("loaded %s: %s rows in %.1f s", name, f"{result.rows:,}", time.perf_counter() - started)
    return results


# --- the shop --------------------------------------------------------------------------------------


def _drop_store(admin_url: str) -> None:
    """Drop the bench shop database and its replication slot (a slot pins its database)."""
    drop_slot(admin_url, SLOT)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(STORE_DATABASE))
        )


@contextmanager
def bench_store(url: str, keep: bool) -> Iterator[str]:
    """The URL of an empty shop database on the bench warehouse's server; dropped afterwards unless `keep`."""
    admin_url = with_database(url, "postgres")
    _drop_store(admin_url)
    try:
        yield with_database(url, STORE_DATABASE)
    finally:
        if not keep:
            _drop_store(admin_url)


def mirror(store_url: str, url: str) -> None:
    from apparel.stream import run_stream

    started = time.perf_counter()
    stats = run_stream(store_url, url, slot=SLOT, publication=PUBLICATION, until_caught_up=True)
    log.info(
        "stream caught up in %.1f s (initial copy %s rows, %s changes applied)",
        time.perf_counter() - started,
        f"{stats.initial_rows:,}",
        f"{stats.changes:,}",
    )


@contextmanager
def streaming(store_url: str, url: str) -> Iterator[None]:
    """The stream running in a thread meanwhile, as it runs beside dbt in production: it reads the
    WAL dbt writes as it goes, so the slot does not hold it (40 GB and more during a full build at
    scale 1000). No shop changes are pending when it runs: it applies nothing."""
    from apparel.stream import run_stream

    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_stream(store_url, url, slot=SLOT, publication=PUBLICATION, stop_event=stop)
        except BaseException as e:  # reported in the main thread
            errors.append(e)

    thread = threading.Thread(target=run, name="bench-stream", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    if errors:
        raise errors[0]


def release_wal(store_url: str, url: str) -> None:
    """Let the stream read past the WAL written since it last ran, so the server can recycle it."""
    log.info("stream: reading past the WAL written since (untimed)")
    mirror(store_url, url)
    checkpoint(url)


def source_lookback() -> float:
    """Seconds of the project's `source_lookback` var: the base models read the source rows that
    arrived that long before each run again (macros/incremental.sql)."""
    import yaml

    value = yaml.safe_load((DBT_PROJECT_DIR / "dbt_project.yml").read_text())["vars"]["source_lookback"]
    match = _INTERVAL.match(str(value))
    if not match:
        raise SystemExit(f"cannot read source_lookback {value!r} in dbt_project.yml")
    return int(match[1]) * _INTERVAL_SECONDS[match[2]]


def outlast_lookback(last_write: float, lookback: float, before: str) -> None:
    """Wait until the bulk source writes that ended at `last_write` (time.monotonic) are older than
    the lookback, so the step re-reads only its own change, as a run does in steady state."""
    wait = last_write + lookback + 1 - time.monotonic()
    if wait > 0:
        log.info("waiting %.0f s before %s: the source_lookback (%.0f s) would read the set-up's rows again",
                 wait, before, lookback)  # fmt: skip
        time.sleep(wait)


# --- dbt -------------------------------------------------------------------------------------------


def import_dbt() -> float:
    """Import dbt's Python API (untimed by the builds); returns the seconds it took."""
    started = time.perf_counter()
    import dbt.cli.main  # noqa: F401

    return time.perf_counter() - started


@contextmanager
def heartbeat(label: str) -> Iterator[None]:
    """A progress line every HEARTBEAT_SECONDS while a long dbt command runs quietly."""
    done = threading.Event()
    started = time.perf_counter()

    def beat() -> None:
        while not done.wait(HEARTBEAT_SECONDS):
            log.info("  %s: still running, %.0f s", label, time.perf_counter() - started)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def in_process_dbt(args: list[str], url: str, target: Path) -> bool:
    """`dbt <args>` in this process (dbtRunner), connected and targeted as apparel.dbt_runner.run_dbt."""
    from dbt.cli.main import dbtRunner

    os.environ.update(dbt_env(load_settings(), url))
    os.environ["DBT_TARGET_PATH"] = str(target)
    with heartbeat(f"dbt {' '.join(a for a in args if a != '--quiet')}"):
        return dbtRunner().invoke([*args, "--project-dir", str(DBT_PROJECT_DIR)]).success


def timed_build(
    url: str,
    target: Path,
    label: str,
    select: list[str] | None = None,
    exclude: list[str] | None = None,
    test_window: float | None = None,
) -> BuildTiming:
    """`dbt build` of `select` but `exclude`; with `test_window`, the tests read the rows written in
    that many seconds (the project's var, 2 days by default)."""
    args = [
        "--quiet",
        "build",
        *(["--select", *select] if select else []),
        *(["--exclude", *exclude] if exclude else []),
    ]
    if test_window is not None:
        args += ["--vars", json.dumps({"test_window": f"{ceil(test_window)} seconds"})]
        # Changed vars make dbt parse the whole project again: done here, untimed, as a scheduled run
        # with the project's own vars parses only what changed.
        if not in_process_dbt(["--quiet", "parse", *args[-2:]], url, target):
            raise SystemExit("dbt parse failed")
    log.info("dbt %s (%s)...", " ".join(args[1:]), label)
    started = time.perf_counter()
    ok = in_process_dbt(args, url, target)
    seconds = time.perf_counter() - started
    if not ok:
        raise SystemExit(f"dbt build ({label}) failed")
    run_results = json.loads((target / "run_results.json").read_text())
    manifest_nodes = json.loads((target / "manifest.json").read_text())["nodes"]
    results = run_results["results"]
    fact = next((r for r in results if r["unique_id"] == f"model.apparel.{FACT}"), None)
    timing = BuildTiming(
        seconds=seconds,
        dbt_elapsed=run_results["elapsed_time"],
        fact_seconds=fact["execution_time"] if fact else 0.0,
        fact_rows=(fact["adapter_response"].get("rows_affected", 0) or 0) if fact else 0,
        nodes=[
            NodeTiming(r["unique_id"], node_phase(r["unique_id"], manifest_nodes), r["execution_time"])
            for r in results
        ],
    )
    log.info(
        "dbt build (%s): %.1f s, %d nodes, %s %.1f s (%s rows written)",
        label,
        seconds,
        len(timing.nodes),
        FACT,
        timing.fact_seconds,
        f"{timing.fact_rows:,}",
    )
    return timing


# --- equal to a full refresh? ----------------------------------------------------------------------


def compared_tables(conn: psycopg.Connection) -> dict[str, list[str]]:
    """The fact and every mart table `transform` builds, with their columns but `loaded_at` (each
    build's own time)."""
    rows = conn.execute(
        "select c.table_schema || '.' || c.table_name,"
        " array_agg(c.column_name::text order by c.ordinal_position)"
        " from information_schema.columns c join information_schema.tables t"
        "   on t.table_schema = c.table_schema and t.table_name = c.table_name"
        " where t.table_type = 'BASE TABLE' and c.column_name <> 'loaded_at'"
        "   and ((c.table_schema = 'core' and c.table_name = %s)"
        "        or (c.table_schema = 'marts' and c.table_name <> all(%s)))"
        " group by 1 order by 1",
        (FACT, list(BUSINESS_MARTS)),
    ).fetchall()
    return dict(rows)


def _relation(qualified: str) -> sql.Identifier:
    return sql.Identifier(*qualified.split("."))


def _copy_name(qualified: str) -> sql.Identifier:
    return sql.Identifier(CHECK_SCHEMA, qualified.replace(".", "__"))


def _fingerprint(conn: psycopg.Connection, relation: sql.Composable, columns: list[str]) -> tuple:
    """Row count and an order-independent hash of the rows (the sum of each row's 64-bit hash)."""
    row = sql.SQL("row({})::text").format(sql.SQL(", ").join(map(sql.Identifier, columns)))
    return conn.execute(
        sql.SQL("select count(*), coalesce(sum(hashtextextended({}, 0)::numeric), 0) from {}").format(
            row, relation
        )
    ).fetchone()


def compare_with_full_refresh(url: str, store_url: str, target: Path) -> Comparison:
    """Copy the fact and the marts as the incremental runs left them, rebuild every model `transform`
    builds from scratch (`dbt run --full-refresh`, on the same database), and count the rows that
    differ per table."""
    comparison = Comparison()
    with psycopg.connect(url, autocommit=True) as conn:
        tables = compared_tables(conn)
        conn.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(CHECK_SCHEMA)))
        conn.execute(sql.SQL("create schema {}").format(sql.Identifier(CHECK_SCHEMA)))
        for table, columns in tables.items():
            conn.execute(
                sql.SQL("create unlogged table {} as select {} from {}").format(
                    _copy_name(table), sql.SQL(", ").join(map(sql.Identifier, columns)), _relation(table)
                )
            )
    log.info("full refresh to compare with (%d tables copied)...", len(tables))
    started = time.perf_counter()
    with streaming(store_url, url):
        ok = in_process_dbt(
            ["--quiet", "run", "--full-refresh", "--exclude", *TRANSFORM_EXCLUDE], url, target
        )
    if not ok:
        raise SystemExit("dbt run --full-refresh failed")
    comparison.refresh_seconds = time.perf_counter() - started
    with psycopg.connect(url, autocommit=True) as conn:
        rebuilt = compared_tables(conn)
        for table, columns in tables.items():
            if rebuilt.get(table) != columns:
                comparison.differing[table] = -1  # columns changed: cannot compare
                continue
            copy, fresh = _copy_name(table), _relation(table)
            if _fingerprint(conn, copy, columns) == _fingerprint(conn, fresh, columns):
                comparison.differing[table] = 0
                continue
            listed = sql.SQL(", ").join(map(sql.Identifier, columns))
            comparison.differing[table] = conn.execute(
                sql.SQL(
                    "select count(*) from ((select {c} from {a} except all select {c} from {b})"
                    " union all (select {c} from {b} except all select {c} from {a})) d"
                ).format(c=listed, a=copy, b=fresh)
            ).fetchone()[0]
        for table in rebuilt.keys() - tables.keys():
            comparison.differing[table] = -1  # a table only the full refresh made
        conn.execute(sql.SQL("drop schema {} cascade").format(sql.Identifier(CHECK_SCHEMA)))
    comparison.differing = {t: abs(n) for t, n in comparison.differing.items()}
    log.info(
        "full refresh in %.1f s; incremental result %s%s",
        comparison.refresh_seconds,
        comparison,
        f": {comparison.details()}" if not comparison.equal else "",
    )
    return comparison


# --- the reload comparison -------------------------------------------------------------------------


def time_reload(url: str, data_dir: Path, tmp_dir: Path) -> Reload:
    """Our loader's reload of `order_details.csv` with 1% of the quantities changed (a merge into the
    loaded raw table) against one `psql \\copy` of the whole file into an empty table."""
    changed_dir = tmp_dir / "changed"
    rows, changed = change_quantities(data_dir, changed_dir)
    source = get_source("order_details")
    checkpoint(url)
    log.info("reload of order_details.csv with %s of %s quantities changed: our loader", f"{changed:,}",
             f"{rows:,}")  # fmt: skip
    started = time.perf_counter()
    result = load_source(url, source, changed_dir, force=True)
    ours = time.perf_counter() - started
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(COPY_SCHEMA)))
    checkpoint(url)
    log.info("the same file: psql \\copy into an empty table")
    copy = run_copy(url, source, changed_dir / source.file, source.column_names, schema=COPY_SCHEMA)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("drop schema {} cascade").format(sql.Identifier(COPY_SCHEMA)))
    return Reload(rows, changed, result.updated, ours, copy)


# --- one scale -------------------------------------------------------------------------------------


def run_scale(scale: int, seed: int, keep: bool, reload: bool) -> ScaleResult:
    settings = load_settings()
    data_dir = ensure_data(scale, seed)
    with (
        tempfile.TemporaryDirectory(prefix="bench-transform-", dir=settings.state_dir) as tmp,
        bench_database(
            settings, keep, folder="bench-transform-pg", database=BENCH_DATABASE, schemas=()
        ) as url,
        bench_store(url, keep) as store_url,
    ):
        from apparel.simulate import run_simulator
        from apparel.store import ensure_store

        tmp_dir = Path(tmp)
        target = tmp_dir / "dbt-target"
        log.info("scale %d: loading the extracts", scale)
        load(url, data_dir, [s.name for s in SOURCES])
        log.info("scale %d: seeding the shop from the same extracts", scale)
        started = time.perf_counter()
        seeded = ensure_store(store_url, data_dir)
        log.info("seeded the shop: %s rows in %.1f s", f"{seeded:,}", time.perf_counter() - started)
        mirror(store_url, url)
        last_write = time.monotonic()
        # Parse once, untimed, so every timed build starts from the same (partially parsed) state.
        if not in_process_dbt(["--quiet", "parse"], url, target):
            raise SystemExit("dbt parse failed")
        lookback = source_lookback()
        outlast_lookback(last_write, lookback, "the full build")
        checkpoint(url)
        with streaming(store_url, url):
            full = timed_build(url, target, f"scale {scale}, from scratch", exclude=TRANSFORM_EXCLUDE)
            rebuilt = time.monotonic()  # every row of the steps' models written from scratch until then
            business = timed_build(
                url, target, f"scale {scale}, business marts", select=[f"tag:{WHOLE_HISTORY_TAG}"]
            )
        # The slot holds the WAL of every write on the server until the stream has read past it (tens
        # of GB of dbt's writes at scale 1000): let the stream move it on between the steps, untimed.
        release_wal(store_url, url)

        # Step (a): the extracts.
        outlast_lookback(last_write, lookback, "step (a)")
        later = tmp_dir / "later"
        new_orders, new_lines = add_new_orders(data_dir, later)
        log.info("step (a): appended %d orders with %d lines; reloading", new_orders, new_lines)
        reloaded = ["orders", "order_details"]
        load(url, later, reloaded)
        last_write = time.monotonic()
        select_a = downstream_of_sources(reloaded)
        checkpoint(url)
        step_a = timed_build(
            url, target, f"scale {scale}, step (a)", select_a, TRANSFORM_EXCLUDE, time.monotonic() - rebuilt
        )
        check_a = compare_with_full_refresh(url, store_url, target)
        rebuilt = time.monotonic()
        release_wal(store_url, url)

        # Step (b): a shop minute through the stream.
        outlast_lookback(last_write, lookback, "step (b)")
        log.info(
            "step (b): the shop at %.0f orders/s for %.0f s (seed %d)", SHOP_RATE, SHOP_SECONDS, SHOP_SEED
        )
        stats = run_simulator(
            store_url, SHOP_RATE, SHOP_SECONDS, seed=SHOP_SEED, dataset_dir=data_dir, transactions="order"
        )
        shop = stats.summary()
        log.info("shop: %s", shop)
        mirror(store_url, url)
        select_b = [f"source:{STREAMED_SOURCE}+"]
        checkpoint(url)
        step_b = timed_build(
            url, target, f"scale {scale}, step (b)", select_b, TRANSFORM_EXCLUDE, time.monotonic() - rebuilt
        )
        check_b = compare_with_full_refresh(url, store_url, target)

        with psycopg.connect(url) as conn:
            fact_rows = conn.execute(f"select count(*) from core.{FACT}").fetchone()[0]
        reload_result = time_reload(url, later, tmp_dir) if reload else None
    return ScaleResult(
        scale=scale,
        fact_rows=fact_rows,
        full=full,
        business=business,
        step_a=step_a,
        step_b=step_b,
        check_a=check_a,
        check_b=check_b,
        select_a=select_a,
        select_b=select_b,
        new_lines=new_lines,
        shop=shop,
        reload=reload_result,
    )


# --- report ----------------------------------------------------------------------------------------


def _node_label(unique_id: str) -> str:
    kind, _, name = unique_id.split(".")[:3]
    return f"{kind.replace('_', ' ')} {name}"


def render_table(results: list[ScaleResult]) -> list[str]:
    header = (
        f"{'scale':>6}{'fact rows':>13}{'full build':>12}{'step (a)':>10}{'(a)/full':>10}"
        f"{'step (b)':>10}{'(b)/full':>10}  equal? (a) / (b){'business marts':>17}"
    )
    lines = [header]
    for r in results:
        lines.append(
            f"{r.scale:>6}{r.full.fact_rows:>13,}{r.full.seconds:>10.1f} s{r.step_a.seconds:>8.1f} s"
            f"{r.step_a.seconds / r.full.seconds:>10.1%}{r.step_b.seconds:>8.1f} s"
            f"{r.step_b.seconds / r.full.seconds:>10.1%}  {str(r.check_a) + ' / ' + str(r.check_b):<16}"
            f"{r.business.seconds:>15.1f} s"
        )
    return lines


def render_goals(results: list[ScaleResult]) -> list[str]:
    small, large = min(results, key=lambda r: r.scale), max(results, key=lambda r: r.scale)
    lines = []
    for step, get in (("(a)", lambda r: r.step_a), ("(b)", lambda r: r.step_b)):
        big = get(large).seconds
        if large is small:
            growth = f"n/a (one scale run; the goal compares scale {large.scale} with a smaller one)"
        else:
            ratio = big / get(small).seconds
            verdict = "OK" if ratio <= GOAL_GROWTH else "MISSED"
            growth = (
                f"{verdict}: {big:.1f} s at scale {large.scale} = {ratio:.2f}x its "
                f"{get(small).seconds:.1f} s at scale {small.scale} (goal <= {GOAL_GROWTH:.0f}x)"
            )
        share = big / large.full.seconds
        verdict = "OK" if share <= GOAL_SHARE else "MISSED"
        lines += [
            f"step {step} growth: {growth}",
            f"step {step} share:  {verdict}: {big:.1f} s = {share:.1%} of the full build's "
            f"{large.full.seconds:.1f} s at scale {large.scale} (goal <= {GOAL_SHARE:.0%})",
        ]
    return lines


def render_where(r: ScaleResult) -> list[str]:
    runs = (("full", r.full), ("(a)", r.step_a), ("(b)", r.step_b))
    lines = [
        f"scale {r.scale}: where the time goes (seconds; node times overlap, dbt runs several threads)",
        f"  full build: dbt build --exclude {' '.join(TRANSFORM_EXCLUDE)} (what transform builds)",
        f"  step (a): {r.new_lines:,} new lines, dbt build --select {' '.join(r.select_a)}"
        f" --exclude {' '.join(TRANSFORM_EXCLUDE)}",
        f"  step (b): shop {r.shop}; dbt build --select {' '.join(r.select_b)}"
        f" --exclude {' '.join(TRANSFORM_EXCLUDE)}",
        "  the steps' tests read the rows written since the last build from scratch (test_window)",
        f"  business marts after the full build (the business_marts DAG, whole history):"
        f" {r.business.seconds:.1f} s",
        f"  full refreshes for the checks (untimed as steps): {r.check_a.refresh_seconds:.1f} s, "
        f"{r.check_b.refresh_seconds:.1f} s",
        f"{'':<40}" + "".join(f"{label:>10}" for label, _ in runs),
        f"{'  nodes run':<40}" + "".join(f"{len(run.nodes):>10}" for _, run in runs),
        f"{'  dbt set-up and wrap-up':<40}"
        + "".join(f"{run.seconds - run.dbt_elapsed:>10.1f}" for _, run in runs),
        f"{'  node execution (wall clock)':<40}" + "".join(f"{run.dbt_elapsed:>10.1f}" for _, run in runs),
    ]
    phases = [run.phase_seconds() for _, run in runs]
    counts = {phase: sum(node.phase == phase for node in r.full.nodes) for phase in PHASES}
    lines += [
        f"{f'    {phase} ({counts[phase]})':<40}" + "".join(f"{p[phase]:>10.1f}" for p in phases)
        for phase in PHASES
        if counts[phase]
    ]
    lines.append(f"{f'  {FACT} rows written':<40}" + "".join(f"{run.fact_rows:>10,}" for _, run in runs))
    for label, run in runs:
        lines.append(f"  slowest nodes, {label}:")
        slowest = sorted(run.nodes, key=lambda node: node.seconds, reverse=True)[:TOP_NODES]
        lines += [f"  {node.seconds:>8.2f} s  {_node_label(node.unique_id)}" for node in slowest]
    for label, check in (("(a)", r.check_a), ("(b)", r.check_b)):
        if not check.equal:
            lines.append(f"  step {label} differs from a full refresh: {check.details()}")
    return lines


def render_reload(scale: int, reload: Reload) -> list[str]:
    return [
        f"reload at scale {scale}: order_details.csv, {reload.rows:,} lines, {reload.changed:,} quantities "
        f"changed ({CHANGED_LINES_SHARE:.0%})",
        f"  our loader (merge into the loaded table, {reload.updated:,} rows updated):"
        f" {reload.ours_seconds:.1f} s",
        f"  psql \\copy of the whole file into an empty table (+ primary key): {reload.copy_seconds:.1f} s",
        f"  ours / \\copy: {reload.ours_seconds / reload.copy_seconds:.2f}x the time",
        "  first loads against \\copy and pandas.to_sql: make bench-ingest SCALE=N",
    ]


def render(results: list[ScaleResult], import_seconds: float) -> str:
    lines = [
        f"dbt build from scratch, then step (a): {NEW_ORDERS} new orders in the extracts, and step (b): "
        f"the shop at {SHOP_RATE:.0f} orders/s for {SHOP_SECONDS:.0f} s (seed {SHOP_SEED}) through the "
        "stream; the same change at every scale",
        "",
        *render_table(results),
        "",
        *render_goals(results),
        f"(dbt in-process; importing dbt took {import_seconds:.1f} s, which each `dbt` command line adds)",
    ]
    for r in results:
        lines += ["", *render_where(r)]
    for r in results:
        if r.reload:
            lines += ["", *render_reload(r.scale, r.reload)]
    return "\n".join(lines)


def run_benchmark(scales: list[int], seed: int, keep: bool) -> str:
    import_seconds = import_dbt()
    log.info("imported dbt in %.1f s", import_seconds)
    reload_scale = max((s for s in scales if s <= RELOAD_MAX_SCALE), default=None)
    results = []
    for scale in scales:
        started = time.perf_counter()
        results.append(run_scale(scale, seed, keep, reload=scale == reload_scale))
        log.info("scale %d done in %.1f min", scale, (time.perf_counter() - started) / 60)
        print("\n".join(["", *render_table(results[-1:]), "", *render_where(results[-1])]), flush=True)
    return render(results, import_seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_transform", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scales",
        type=int,
        nargs="+",
        default=list(DEFAULT_SCALES),
        help="generator scales, each run in turn (default 10 100 1000)",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="generator seed (default 42)")
    parser.add_argument("--keep", action="store_true", help="keep the bench databases / server afterwards")
    args = parser.parse_args(argv)
    if any(s < 1 for s in args.scales):
        parser.error("scales must be >= 1")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
    )
    print(run_benchmark(sorted(set(args.scales)), args.seed, args.keep), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
