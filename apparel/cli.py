"""`apparel`: the project's command line (used by the Makefile, the DAGs' operators and people)."""

from __future__ import annotations

import argparse
import logging
import sys
from decimal import Decimal
from pathlib import Path

from rich.console import Console
from rich.table import Table

from apparel.config import load_settings, redact_url

# Wide enough for the tables when output goes to a file or CI log rather than a terminal.
console = Console(width=None if sys.stdout.isatty() else 160)


def _server(settings):
    from apparel.embedded_pg import EmbeddedServer, slot_wal_keep_mb

    return EmbeddedServer(
        settings.state_dir / "pgdata", settings.pg_port, slot_wal_keep_mb=slot_wal_keep_mb(settings)
    )


def cmd_db(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.action == "url":
        # Without the password, which stays in .env: psql asks for it (or reads PGPASSWORD, ~/.pgpass).
        print(settings.warehouse_url if args.with_password else redact_url(settings.warehouse_url, mask=""))
        return 0
    if not settings.embedded:
        # An existing server was configured: we start and stop nothing, but make sure the database answers.
        if args.action == "start":
            from apparel.embedded_pg import wait_until_ready

            wait_until_ready(settings.warehouse_url, timeout=10)
            console.print("using the configured warehouse (WAREHOUSE_URL); nothing started")
        else:
            console.print("WAREHOUSE_URL is set: the warehouse is not managed by this project")
        return 0
    server = _server(settings)
    if args.action == "start":
        from apparel.roles import start_embedded

        server = start_embedded(settings)
        settings = load_settings()
        console.print(f"warehouse running: {redact_url(settings.warehouse_url)}  (data in {server.data_dir})")
    elif args.action == "stop":
        server.stop()
        console.print("warehouse stopped")
    elif args.action == "status":
        running = server.is_running()
        where = f"running on {redact_url(settings.warehouse_url)}" if running else "stopped"
        console.print(f"embedded warehouse {where}")
        return 0 if running else 3
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    """The shop's database: create and seed it, show its tables, or rebuild it."""
    from apparel.readers import SourceError
    from apparel.store import StoreError, ensure_store, reset_store, store_status

    settings = load_settings()
    dataset_dir = Path(args.dataset_dir) if args.dataset_dir else settings.dataset_dir
    # A configured STORE_URL is someone else's server: we create tables there, never databases. The
    # embedded server's store database is made by `apparel db start` (owned by the shop's role).
    create_database = not settings.get("STORE_URL") and not settings.embedded
    try:
        if args.action == "init":
            seeded = ensure_store(settings.store_url, dataset_dir, create_database=create_database)
            console.print(
                f"store seeded with {seeded:,} rows from {dataset_dir}"
                if seeded
                else "store already has data: nothing seeded"
            )
        elif args.action == "reset":
            from apparel.stream import DEFAULT_SLOT, drop_slot

            seeded = reset_store(settings.store_url, dataset_dir, create_database=create_database)
            console.print(f"store rebuilt: {seeded:,} rows seeded from {dataset_dir}")
            # Dropped tables are not in the replication stream: the mirror would keep the old rows
            # live. Without its slot, the stream's next start copies the tables again, merging, and
            # tombstones what the reset removed.
            slot = settings.get("STREAM_SLOT", DEFAULT_SLOT)
            drop_slot(settings.stream_store_url, slot)
            console.print(
                f"dropped the stream's replication slot {slot}: its next start copies the shop's tables"
                " into raw_store again, merging (rows the reset removed become tombstones)"
            )
        console.print(f"store: {redact_url(settings.store_url)}")
        table = Table()
        for column, justify in [("table", "left"), ("rows", "right"), ("max id", "right")]:
            table.add_column(column, justify=justify)
        for status in store_status(settings.store_url):
            table.add_row(status.table, f"{status.rows:,}", _cell(status.max_id))
        console.print(table)
    except (StoreError, SourceError) as e:
        console.print(f"[red]{e}[/red]")
        return 1
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """Write realistic shop orders into the store until the duration ends or Ctrl-C / SIGTERM."""
    import signal
    import threading

    from apparel.simulate import run_simulator
    from apparel.store import StoreError

    settings = load_settings()
    rate = args.rate if args.rate is not None else float(settings.get("SIMULATE_RATE", "5"))
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    console.print(
        f"simulating {rate:,g} orders/s into {redact_url(settings.store_url)}"
        + (f" for {args.duration:g}s" if args.duration else " until Ctrl-C")
    )
    try:
        stats = run_simulator(
            settings.store_url,
            rate,
            args.duration,
            seed=args.seed,
            dataset_dir=Path(args.dataset_dir) if args.dataset_dir else settings.dataset_dir,
            stop_event=stop,
            transactions=args.transactions,
            on_progress=lambda s: console.print(f"  {s.seconds:6.0f}s  {s.summary()}"),
        )
    except StoreError as e:
        console.print(f"[red]{e}[/red]")
        return 1
    console.print(f"simulate ({stats.transactions_mode} transactions): {stats.summary()}")
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    """The CDC stream (store -> raw_store) until SIGTERM / Ctrl-C, or its status."""
    import psycopg

    from apparel import stream

    settings = load_settings()
    try:
        return _stream(args, settings, stream)
    except (psycopg.OperationalError, stream.StreamError, RuntimeError) as e:
        console.print(f"[red]stream: {e}[/red]")
        return 2


def _stream(args: argparse.Namespace, settings, stream) -> int:
    slot = args.slot or settings.get("STREAM_SLOT", stream.DEFAULT_SLOT)
    if args.action == "status":
        status = stream.configured_status(settings, slot)
        for line in stream.format_status(status):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        return 1 if status.warnings else 0
    if args.action == "replay":
        from apparel.dead_letters import replay

        result = replay(settings.stream_warehouse_url, slot)
        console.print(f"dead letters of slot {slot}: {result}", markup=False, highlight=False, soft_wrap=True)
        for line in result.failed:
            console.print(f"  still refused: {line}", markup=False, highlight=False, soft_wrap=True)
        return 1 if result.failed else 0
    from contextlib import nullcontext

    from apparel.airflow_notify import notifier_from_settings

    # A catch-up run (`make run`) builds the marts itself right after: no event for Airflow.
    notifier = None if args.until_caught_up else notifier_from_settings(settings)
    # httpx logs each request at INFO: a line every few seconds of a busy shop. Failures are ours to log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with notifier or nullcontext():
        stats = stream.run_stream(
            settings.stream_store_url,
            settings.stream_warehouse_url,
            slot=slot,
            publication=args.publication or settings.get("STREAM_PUBLICATION", stream.DEFAULT_PUBLICATION),
            until_caught_up=args.until_caught_up,
            batch_ms=int(settings.get("STREAM_BATCH_MS", str(stream.DEFAULT_BATCH_MS))),
            batch_changes=int(settings.get("STREAM_BATCH_CHANGES", str(stream.DEFAULT_BATCH_CHANGES))),
            notifier=notifier,
        )
    console.print(
        f"stream: {stats.changes:,} changes in {stats.transactions:,} store transactions, "
        f"{stats.batches:,} batches, {stats.initial_rows:,} rows copied initially, "
        f"{stats.dead_letters:,} dead letters, {stats.reconnects} reconnects; at {stats.lsn}"
    )
    if args.until_caught_up:
        # The slot stays (the next start resumes from it) and nobody reads it until then: say so.
        status = stream.configured_status(settings, slot)
        console.print(
            f"kept replication slot {slot} on the store, inactive until `make up` or `apparel stream`"
            f" runs; it holds back the store's WAL {stream.wal_budget(status)}. Drop it if you stop using"
            f" the stream: select pg_drop_replication_slot('{slot}')",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from apparel.generate import generate

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"generating scale {args.scale}", total=None)

        def report(file_name: str, rows: int) -> None:
            progress.update(task, description=f"{file_name}: {rows:,} rows")

        counts = generate(Path(args.out), scale=args.scale, seed=args.seed, progress=report)
    for name, rows in counts.items():
        console.print(f"  {name:<26} {rows:>12,} rows")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    """Load sources without Airflow (the DAG calls the same function)."""
    from apparel.loader import LoadFailed, check_foreign_keys, load_source
    from apparel.sources import SOURCES, get_source

    settings = load_settings()
    dataset_dir = Path(args.dataset_dir) if args.dataset_dir else settings.dataset_dir
    sources = [get_source(n) for n in args.sources] if args.sources else list(SOURCES)
    failed = 0
    for source in sources:
        try:
            result = load_source(settings.warehouse_url, source, dataset_dir, force=args.force)
            console.print(f"{source.file}: {result.status} {result.rows:,} rows in {result.seconds:.2f}s")
        except LoadFailed as e:
            failed += 1
            console.print(f"[red]{e}[/red]")
    for orphans in check_foreign_keys(settings.warehouse_url):
        console.print(f"[yellow]warning: {orphans}[/yellow]")
    return 1 if failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    """The raw tables with their rows, size and last load."""
    from apparel.report import raw_tables

    settings = load_settings()
    table = Table(title=f"raw tables in {redact_url(settings.warehouse_url)}")
    for column, justify in [
        ("table", "left"),
        ("rows", "right"),
        ("bytes", "right"),
        ("last load", "left"),
        ("seconds", "right"),
        ("status", "left"),
    ]:
        table.add_column(column, justify=justify)
    for row in raw_tables(settings.warehouse_url):
        table.add_row(
            row.table, f"{row.rows:,}", f"{row.bytes:,}", row.loaded_at, f"{row.seconds:.2f}", row.status
        )
    console.print(table)
    return 0


def cmd_dbt(args: argparse.Namespace) -> int:
    from apparel.dbt_runner import run_dbt

    dbt_args = args.dbt_args[1:] if args.dbt_args[:1] == ["--"] else args.dbt_args
    return run_dbt(dbt_args, check=False).returncode


def cmd_manifest(args: argparse.Namespace) -> int:
    from apparel.dbt_runner import write_render_files

    write_render_files()
    return 0


# What `apparel marts` shows of each mart (all contract columns of the first; the second is wide).
MART_PREVIEWS = {
    "dm_revenue_by_months": (
        "month_start, month_name, total_orders, total_customers, total_quantity, revenue, avg_order_value,"
        " revenue_mom_growth_pct",
        "month_start",
    ),
    "dm_perfomance_product_by_cities": (
        "province_name, city_name, product_name, size, product_category_name, total_orders, total_quantity,"
        " revenue, revenue_share_in_city_pct, revenue_rank_in_city",
        "province_name, city_name, revenue_rank_in_city",
    ),
}


def cmd_marts(args: argparse.Namespace) -> int:
    """The first rows of both marts, as the end of `make run` shows them."""
    import psycopg
    from psycopg import sql

    settings = load_settings()
    with psycopg.connect(settings.warehouse_url) as conn:
        for mart, (columns, order) in MART_PREVIEWS.items():
            table_id = sql.Identifier("marts", mart)
            total = conn.execute(sql.SQL("select count(*) from {}").format(table_id)).fetchone()[0]
            cur = conn.execute(
                sql.SQL("select {} from {} order by {} limit %s").format(
                    sql.SQL(columns), table_id, sql.SQL(order)
                ),
                (args.limit,),
            )
            table = Table(title=f"marts.{mart} (first {min(args.limit, total)} of {total:,} rows)")
            for column in cur.description:
                table.add_column(column.name, overflow="fold")
            for row in cur.fetchall():
                table.add_row(*[_cell(v) for v in row])
            console.print(table)
    return 0


def _cell(value: object) -> str:
    """Money and counts with thousands separators; None as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, Decimal):
        return f"{value:,.2f}"
    return str(value)


def cmd_airflow(args: argparse.Namespace) -> int:
    """The Airflow CLI with the project's configuration (DAGs folder, metadata, caches)."""
    import os

    from apparel.airflow_env import AIRFLOW, airflow_env

    airflow_args = args.airflow_args[1:] if args.airflow_args[:1] == ["--"] else args.airflow_args
    os.execve(AIRFLOW, [str(AIRFLOW), *airflow_args], airflow_env())


def cmd_stack(args: argparse.Namespace) -> int:
    from apparel.stack import run_command

    return run_command(args)


def cmd_dags_test(args: argparse.Namespace) -> int:
    from apparel.dag_test import dags_test

    return dags_test(args.dag_id, args.conf)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="apparel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("db", help="the embedded warehouse server")
    p.add_argument("action", choices=["start", "stop", "status", "url"])
    p.add_argument(
        "--with-password", action="store_true", help="url: with the password (left out by default)"
    )
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("store", help="the shop's database (STORE_URL): init, status, reset")
    p.add_argument(
        "action",
        choices=["init", "status", "reset"],
        help="init: create the database and tables, seed them from the dataset when empty; "
        "status: rows and max id per table; reset: drop the tables and seed again (development only)",
    )
    p.add_argument("--dataset-dir", help="default: DATASET_DIR")
    p.set_defaults(func=cmd_store)

    p = sub.add_parser("simulate", help="write realistic shop orders into the store at a steady rate")
    p.add_argument("--rate", type=float, help="orders per second (default: SIMULATE_RATE, 5)")
    p.add_argument("--duration", type=float, default=0, help="seconds; 0 (default) runs until Ctrl-C")
    p.add_argument("--seed", type=int, help="the same seed on the same store writes the same rows")
    p.add_argument(
        "--transactions",
        choices=["auto", "order", "tick"],
        default="auto",
        help="order: one transaction per order or change, as the shop writes; tick: one per 20 ms tick "
        "(thousands of orders/s); auto (default): per order up to 200 orders/s (a tick that fell behind "
        "in one transaction), per tick above",
    )
    p.add_argument("--dataset-dir", help="where products and cities are read (default: DATASET_DIR)")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "stream", help="mirror the store into raw_store by logical replication (CDC); `stream status`"
    )
    p.add_argument(
        "action",
        nargs="?",
        choices=["run", "status", "replay"],
        default="run",
        help="run (default): stream until stopped; status: lag, WAL, health; replay: apply the dead"
        " letters again after a fix",
    )
    p.add_argument(
        "--until-caught-up",
        action="store_true",
        help="exit once everything written to the store before the start is in the warehouse",
    )
    p.add_argument("--slot", help="replication slot (default: STREAM_SLOT, apparel_cdc)")
    p.add_argument("--publication", help="publication (default: STREAM_PUBLICATION, apparel_cdc)")
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser("generate", help="write the seven extracts with the deterministic generator")
    p.add_argument("--scale", type=int, default=1, help="1 = the real size (~7,000 orders)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default="dataset")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("load", help="load extracts into raw.* without Airflow")
    p.add_argument("sources", nargs="*", help="source names (default: all)")
    p.add_argument("--force", action="store_true", help="load even when the file is unchanged")
    p.add_argument("--dataset-dir", help="default: DATASET_DIR")
    p.set_defaults(func=cmd_load)

    p = sub.add_parser("report", help="print the raw tables with rows, bytes and load seconds")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("dbt", help="run dbt against the configured warehouse: apparel dbt -- build")
    p.add_argument("dbt_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_dbt)

    p = sub.add_parser(
        "manifest", help="dbt parse, and the `dbt ls` of each dbt DAG's selection that Cosmos renders it from"
    )
    p.set_defaults(func=cmd_manifest)

    p = sub.add_parser("marts", help="print the first rows of both marts")
    p.add_argument("--limit", type=int, default=12)
    p.set_defaults(func=cmd_marts)

    p = sub.add_parser(
        "airflow", help="the Airflow CLI with the project's settings: apparel airflow -- dags list"
    )
    p.add_argument("airflow_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_airflow)

    from apparel.stack import add_arguments as add_stack_arguments

    p = sub.add_parser("stack", help="the whole stack: up, down, status, logs")
    add_stack_arguments(p)
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("dags-test", help="run a DAG with `airflow dags test`, printing its progress")
    p.add_argument("dag_id")
    p.add_argument("--conf", help="JSON of DAG params, e.g. '{\"force\": true}'")
    p.set_defaults(func=cmd_dags_test)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
