"""`make run` end to end, as a user runs it, on a state folder and a port of its own.

The developer's warehouse (STATE_DIR/pgdata on PG_PORT, 5433 by default) is never touched: the run
gets its own STATE_DIR (embedded server, Airflow's SQLite metadata, dbt manifest, logs) and a free
PG_PORT, and every setting `make run` reads is given in its environment, which wins over the
checkout's `.env` (apparel/config.py; the Makefile reads STATE_DIR with `?=`). ENV_FILE names an
empty settings file of the run's own, so that neither reads the checkout's `.env` at all (nor does
`make` create one). Afterwards the server it started is stopped and its state deleted.

The test checks that the tables `make run` prints (the raw tables, then the first rows of both marts)
are what the warehouse it built holds.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from apparel.config import PROJECT_ROOT, load_settings, with_database
from apparel.embedded_pg import EmbeddedServer, free_port
from apparel.envfile import read_env_file
from apparel.roles import SUPERUSER_PASSWORD
from apparel.sources import SOURCES
from tests.conftest import DATASET_DIR, isolated_environment

pytestmark = pytest.mark.slow

# Inherited variables that would reach the run's Airflow, dbt, libpq or make other than `.env` says.
# The marts `make run` previews (apparel marts): columns shown, and the order the first rows follow.
MARTS = {
    "dm_revenue_by_months": (
        [
            "month_start",
            "month_name",
            "total_orders",
            "total_customers",
            "total_quantity",
            "revenue",
            "avg_order_value",
            "revenue_mom_growth_pct",
        ],
        ["month_start"],
    ),
    "dm_perfomance_product_by_cities": (
        [
            "province_name",
            "city_name",
            "product_name",
            "size",
            "product_category_name",
            "total_orders",
            "total_quantity",
            "revenue",
            "revenue_share_in_city_pct",
            "revenue_rank_in_city",
        ],
        ["province_name", "city_name", "revenue_rank_in_city"],
    ),
}
PREVIEW_ROWS = 12


@dataclass
class Run:
    url: str  # the warehouse database it built
    store_url: str
    port: int
    state_dir: Path
    stdout: str
    returncode: int
    checkout_env_unchanged: bool  # the checkout's `.env` (or its absence) as before the run
    secrets: dict[str, str]  # the settings file after the run: the generated passwords
    env: dict[str, str]  # the environment it ran in, for more make targets on the same state


@pytest.fixture(scope="module")
def make_run() -> Iterator[Run]:
    # Beside the suite's own test server (tests/conftest.py): run as root, the server runs as another
    # user, who can reach the state folder but not pytest's private temporary folders.
    state_dir = load_settings().state_dir / "test-make-run" / f"run-{uuid.uuid4().hex[:10]}"
    port = free_port()
    settings_file = state_dir / "settings.env"
    env = isolated_environment()
    env.update(
        {
            "ENV_FILE": str(settings_file),
            "STATE_DIR": str(state_dir),
            "PG_PORT": str(port),
            "WAREHOUSE_URL": "",  # the embedded server on PG_PORT
            "STORE_URL": "",  # the `store` database next to it
            "DATASET_DIR": str(DATASET_DIR),
            "STREAM_SLOT": "apparel_cdc",
            "STREAM_PUBLICATION": "apparel_cdc",
            "STREAM_BATCH_MS": "200",
            "STREAM_BATCH_CHANGES": "5000",
        }
    )
    # The environment must already be built (`make test` builds it first): `make run` would rebuild it.
    stale = subprocess.run(["make", "-q", ".venv/.installed-stamp"], cwd=PROJECT_ROOT, env=env)
    assert stale.returncode == 0, "the .venv is stale: run `make venv` first"
    server = EmbeddedServer(state_dir / "pgdata", port)
    checkout_env = PROJECT_ROOT / ".env"
    checkout_env_before = checkout_env.read_bytes() if checkout_env.exists() else None
    state_dir.mkdir(parents=True)
    try:
        settings_file.write_text("")
        started = time.monotonic()
        proc = subprocess.Popen(
            ["make", "--no-print-directory", "run"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, _ = proc.communicate(timeout=1500)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, _ = proc.communicate()
        print(f"make run: {time.monotonic() - started:.0f} s, exit {proc.returncode}")
        # The superuser's password, generated into the settings file by `make run` (apparel db start).
        secrets = read_env_file(settings_file)
        server = EmbeddedServer(state_dir / "pgdata", port, secrets.get(SUPERUSER_PASSWORD, ""))
        yield Run(
            url=server.url("warehouse"),
            store_url=server.url("store"),
            port=port,
            state_dir=state_dir,
            stdout=stdout,
            returncode=proc.returncode,
            checkout_env_unchanged=(checkout_env.read_bytes() if checkout_env.exists() else None)
            == checkout_env_before,
            secrets=secrets,
            env=env,
        )
    finally:
        server.destroy()
        shutil.rmtree(state_dir, ignore_errors=True)
        with contextlib.suppress(OSError):  # the parent, once no other run uses it
            state_dir.parent.rmdir()


def table_after(stdout: str, title: str) -> tuple[str, list[list[str]]]:
    """The title line starting with `title` and the body rows (cells) of the table under it."""
    lines = stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith(title)), None)
    assert start is not None, f"no table {title!r} in the output:\n{stdout[-5000:]}"
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("└"):
            break
        if line.startswith("│"):
            rows.append([cell.strip() for cell in line.strip().strip("│").split("│")])
    return lines[start].strip(), rows


def cell(value: object) -> str:
    """A value as the printed tables show it: thousands separators, money to 2 places, None empty."""
    if value is None:
        return ""
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, Decimal):
        return f"{value:,.2f}"
    return str(value)


def test_make_run_builds_and_prints_the_raw_tables_and_both_marts(make_run: Run) -> None:
    run = make_run
    assert run.returncode == 0, run.stdout[-5000:]
    assert f"connect: psql postgresql://apparel_etl@127.0.0.1:{run.port}/warehouse " in run.stdout
    # The warehouse it built is the server in the run's own state folder, on the run's port.
    with psycopg.connect(with_database(run.url, "postgres")) as conn:
        data_dir = conn.execute("show data_directory").fetchone()[0]
    assert Path(data_dir).resolve() == (run.state_dir / "pgdata").resolve()
    assert run.checkout_env_unchanged
    # Airflow ran on the run's own metadata, dbt from the run's own manifest.
    assert (run.state_dir / "airflow" / "airflow.db").is_file()
    assert (run.state_dir / "dbt" / "target" / "manifest.json").is_file()
    assert "ingest_dataset: success" in run.stdout and "transform: success" in run.stdout

    # The raw tables: rows, size, last load, its seconds and status, as the warehouse holds them.
    title, rows = table_after(run.stdout, "raw tables in ")
    assert title == f"raw tables in postgresql://apparel_etl:***@127.0.0.1:{run.port}/warehouse"
    with psycopg.connect(run.url) as conn:
        expected = []
        for source in SOURCES:
            count, size = conn.execute(
                f"select count(*), pg_total_relation_size('{source.qualified_table}') from "
                f"{source.qualified_table}"
            ).fetchone()
            loaded_at, seconds, load_bytes = conn.execute(
                "select finished_at, seconds, bytes from raw._load_log"
                " where source = %s and status = 'loaded' order by load_id desc limit 1",
                (source.name,),
            ).fetchone()
            expected.append((source, count, {size, load_bytes}, loaded_at, seconds))
    assert [r[0] for r in rows] == [s.qualified_table for s in SOURCES]
    for row, (source, count, sizes, loaded_at, seconds) in zip(rows, expected, strict=True):
        assert row[1] == f"{count:,}", source.name
        # The size is the table's when `apparel report` ran: as the load measured it, or as it is
        # now if autovacuum ran in between (it adds free space and visibility maps, and can also
        # truncate the table: 778,240 bytes of raw.orders at the report were 712,704 later).
        assert row[2] in {f"{size:,}" for size in sizes}, (source.name, row[2], sizes)
        # Seconds as the report rounds them: the logged numeric(10, 3) as a float (0.015 shows 0.01).
        shown = [loaded_at.strftime("%Y-%m-%d %H:%M:%S"), f"{float(seconds):.2f}", "loaded"]
        assert row[3:] == shown, source.name
    printed_rows = {row[0]: row[1] for row in rows}
    assert printed_rows["raw.orders"] == "7,100" and printed_rows["raw.order_details"] == "18,258"

    # The stream's catch-up mirrored the shop's store (seeded from the same extracts) into raw_store.
    for table in ("shop_customer", "shop_order", "shop_orderline"):
        with psycopg.connect(run.store_url) as store, psycopg.connect(run.url) as warehouse:
            in_store = store.execute(f"select count(*) from {table}").fetchone()[0]
            mirrored = warehouse.execute(f"select count(*) from raw_store.{table}").fetchone()[0]
        assert in_store == mirrored > 0, table
    # The slot it keeps on the store, inactive until the stream runs again, is named with its WAL cap
    # (the embedded server's max_slot_wal_keep_size, PG_SLOT_WAL_KEEP_MB).
    with psycopg.connect(run.store_url) as store:
        cap = store.execute("show max_slot_wal_keep_size").fetchone()[0]
        assert not store.execute(
            "select active from pg_replication_slots where slot_name = 'apparel_cdc'"
        ).fetchone()[0]
    assert cap == "4GB"
    assert "kept replication slot apparel_cdc on the store" in run.stdout
    assert "up to 4,096 MB (the store's max_slot_wal_keep_size)" in run.stdout

    # Both marts: the first rows in their order, each a row of the mart, and the mart's row count.
    with psycopg.connect(run.url) as conn:
        for mart, (columns, order) in MARTS.items():
            total = conn.execute(f"select count(*) from marts.{mart}").fetchone()[0]
            title, printed = table_after(run.stdout, f"marts.{mart} ")
            assert title == f"marts.{mart} (first {min(PREVIEW_ROWS, total)} of {total:,} rows)"
            all_rows = {
                tuple(cell(v) for v in r)
                for r in conn.execute(f"select {', '.join(columns)} from marts.{mart}").fetchall()
            }
            first_keys = [
                tuple(cell(v) for v in r)
                for r in conn.execute(
                    f"select {', '.join(order)} from marts.{mart} order by {', '.join(order)} limit %s",
                    (PREVIEW_ROWS,),
                ).fetchall()
            ]
            assert len(printed) == len(first_keys), mart
            for row in printed:
                assert tuple(row) in all_rows, (mart, row)
            key_at = [columns.index(c) for c in order]
            # Rows tied on the order (equal ranks in a city) may come in either order.
            assert sorted(tuple(row[i] for i in key_at) for row in printed) == sorted(first_keys), mart
    assert re.search(r"marts\.dm_revenue_by_months \(first 12 of 12 rows\)", run.stdout)


def test_make_run_prints_no_password(make_run: Run) -> None:
    """Every password and secret `make run` generated stays in the settings file (mode 600)."""
    generated = {k: v for k, v in make_run.secrets.items() if "PASSWORD" in k}
    assert len(generated) >= 7, generated.keys()  # the superuser's and each role's
    assert [k for k, v in generated.items() if v in make_run.stdout] == []
    assert stat.S_IMODE((make_run.state_dir / "settings.env").stat().st_mode) == 0o600


def test_make_superset_prints_where_the_login_is_not_the_password(make_run: Run) -> None:
    """`make superset` on the warehouse `make run` built: it starts, and prints no password."""
    env = {**make_run.env, "SUPERSET_PORT": str(free_port())}
    keep = ["-o", ".venv/.installed-stamp", "-o", ".venv-superset/.installed-stamp"]

    def make(target: str) -> subprocess.CompletedProcess:
        cmd = ["make", "--no-print-directory", *keep, target]
        return subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)

    try:
        started = make("superset")
        output = started.stdout + started.stderr
        assert started.returncode == 0, output[-3000:]
        assert "password: SUPERSET_ADMIN_PASSWORD in .env" in output
        secrets = read_env_file(make_run.state_dir / "settings.env")
        leaked = [k for k, v in secrets.items() if k.endswith(("PASSWORD", "KEY", "SECRET")) and v in output]
        assert leaked == []
    finally:
        make("superset-stop")
