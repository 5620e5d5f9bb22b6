"""The CDC stream on a real PostgreSQL: initial copy, upserts, tombstones, dead letters, status."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from apparel.store import MIRROR_SCHEMA
from apparel.stream import format_status, stream_status
from tests.realtime import stream_support
from tests.realtime.stream_support import StreamEnv, wait_for

stream_env = stream_support.stream_env


def test_initial_copy_then_changes_as_upserts_and_tombstones(stream_env: StreamEnv):
    env = stream_env
    stats = env.run()
    assert stats.caught_up
    assert stats.initial_rows == 200 + 300 + 600
    env.assert_mirrored()
    copied = env.warehouse(f"select count(*) from {MIRROR_SCHEMA}.shop_order where _lsn is not null")[0][0]
    assert copied == 300

    env.store(
        "insert into shop_order (customer_id, province_id, city_id) values (1, 2, 201)",
        "insert into shop_orderline (order_id, product_id, quantity, unit_price, amount)"
        " values (currval('shop_order_id_seq'), 7, 2, 150000, 300000)",
        "update shop_order set status = 'paid', updated_at = now() where id between 1 and 10",
        "update shop_order set status = 'shipped', updated_at = now() where id between 1 and 5",
        "delete from shop_orderline where order_id = 20",
        # Inserted and deleted within one batch: the warehouse keeps it as a tombstone.
        "insert into shop_customer (id, first_name, last_name, gender) overriding system value"
        " values (9001, 'Brief', 'Visitor', 'Male')",
        "delete from shop_customer where id = 9001",
    )
    stats = env.run()
    assert stats.changes > 0 and stats.initial_rows == 0
    env.assert_mirrored()
    statuses = dict(
        env.warehouse(f"select status, count(*) from {MIRROR_SCHEMA}.shop_order where id <= 10 group by 1")
    )
    assert statuses == {"paid": 5, "shipped": 5}
    tombstones = env.warehouse(
        f"select count(*), bool_and(_deleted_at = _store_committed_at), bool_and(product_id is not null)"
        f" from {MIRROR_SCHEMA}.shop_orderline where order_id = 20"
    )[0]
    assert tombstones == (2, True, True), "deleted lines are kept, with the store's delete time"
    brief = env.warehouse(
        f"select first_name, _deleted_at is not null from {MIRROR_SCHEMA}.shop_customer where id = 9001"
    )
    assert brief == [("Brief", True)]


def test_truncate_tombstones_the_live_rows_in_order(stream_env: StreamEnv):
    """A TRUNCATE in the store keeps the rows as tombstones; rows written after it in the same batch live."""
    env = stream_env
    env.run()
    lines = env.warehouse(f"select count(*) from {MIRROR_SCHEMA}.shop_orderline")[0][0]
    env.store(
        "truncate shop_orderline",
        "insert into shop_orderline (order_id, product_id, quantity, unit_price, amount)"
        " values (1, 7, 2, 150000, 300000)",
    )
    env.run()
    env.assert_mirrored()
    counts = env.warehouse(
        f"select count(*) filter (where _deleted_at is not null), count(*) filter (where _deleted_at is null)"
        f" from {MIRROR_SCHEMA}.shop_orderline"
    )[0]
    assert counts == (lines, 1)


def test_unchanged_toast_value_is_kept(stream_env: StreamEnv):
    """An update that leaves a TOASTed value alone sends it as 'unchanged': it must not become null."""
    env = stream_env
    env.run()
    big = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(6000))  # incompressible: stored out of line
    env.store(f"update shop_customer set last_name = '{big}' where id = 3")
    env.run()
    env.store("update shop_customer set gender = 'Male', updated_at = now() where id = 3")
    env.run()
    env.assert_mirrored()
    assert env.warehouse(f"select last_name from {MIRROR_SCHEMA}.shop_customer where id = 3")[0][0] == big


def test_dead_letters_only_for_data_a_new_column_followed_and_replay(stream_env: StreamEnv):
    """A row the warehouse refuses (a rule only the warehouse has: SQLSTATE 23514) is a dead letter
    and the rest goes on; a column added in the shop is added to the mirror (no dead letter); after
    the fix, `apparel stream replay` writes the letter, unless a later change of its row won."""
    env = stream_env
    env.run()
    with psycopg.connect(env.warehouse_url, autocommit=True) as conn:
        conn.execute(
            f"alter table {MIRROR_SCHEMA}.shop_orderline add constraint small_qty check (quantity < 100)"
        )
    env.store(
        "alter table shop_order add column coupon varchar(20)",
        # One transaction: two violating lines and a good one.
        "begin; insert into shop_orderline (id, order_id, product_id, quantity, unit_price, amount)"
        " overriding system value values (70001, 1, 1, 500, 1000, 500000),"
        " (70002, 1, 1, 2, 1000, 2000), (70004, 1, 1, 300, 1000, 300000); commit",
        "insert into shop_order (id, customer_id, province_id, city_id, coupon) overriding system value"
        " values (80001, 1, 1, 101, 'WELCOME10')",
        "insert into shop_order (id, customer_id, province_id, city_id) overriding system value"
        " values (80002, 1, 1, 101)",
        "insert into shop_orderline (id, order_id, product_id, quantity, unit_price, amount)"
        " overriding system value values (70003, 2, 1, 3, 1000, 3000)",
    )
    stats = env.run()
    assert stats.dead_letters == 2
    letters = env.warehouse(
        f"select table_name, operation, row_key, row_data, reason from {MIRROR_SCHEMA}._dead_letters"
        " order by row_key"
    )
    assert [(t, op, key) for t, op, key, _, _ in letters] == [
        ("shop_orderline", "insert", "70001"),
        ("shop_orderline", "insert", "70004"),
    ]
    assert letters[0][3]["quantity"] == "500" and "small_qty" in letters[0][4] and "23514" in letters[0][4]
    lines = env.warehouse(f"select id from {MIRROR_SCHEMA}.shop_orderline where id > 70000 order by id")
    assert lines == [(70002,), (70003,)], "the rest of the batch and later changes still arrive"
    # The new column, with the store's type, and its values.
    coupon_type = env.warehouse(
        "select format_type(atttypid, atttypmod) from pg_attribute"
        f" where attrelid = '{MIRROR_SCHEMA}.shop_order'::regclass and attname = 'coupon'"
    )
    assert coupon_type == [("character varying(20)",)]
    orders = env.warehouse(f"select id, coupon from {MIRROR_SCHEMA}.shop_order where id > 80000 order by id")
    assert orders == [(80001, "WELCOME10"), (80002, None)]
    env.store("update shop_order set coupon = 'SPRING' where id = 5")
    env.run()
    assert env.warehouse(f"select coupon from {MIRROR_SCHEMA}.shop_order where id = 5") == [("SPRING",)]

    # Line 70004 is changed in the shop meanwhile (to a quantity the warehouse takes): that later
    # change is applied and wins over its letter.
    env.store("update shop_orderline set quantity = 3, amount = 3000 where id = 70004")
    env.run()
    # Still refused while the rule stands: the letters stay.
    still = env.cli("replay", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = still.communicate(timeout=60)
    assert still.returncode == 1 and "0 applied, 1 superseded" in out and "small_qty" in out, out
    with psycopg.connect(env.warehouse_url, autocommit=True) as conn:
        conn.execute(f"alter table {MIRROR_SCHEMA}.shop_orderline drop constraint small_qty")
    fixed = env.cli("replay", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = fixed.communicate(timeout=60)
    assert fixed.returncode == 0 and "1 applied, 0 superseded" in out, out
    assert env.warehouse(f"select count(*) from {MIRROR_SCHEMA}._dead_letters") == [(0,)]
    env.assert_mirrored()


def test_interrupted_initial_copy_is_redone(stream_env: StreamEnv):
    """A slot without a warehouse state row is what a crash during the initial copy leaves."""
    env = stream_env
    env.store(f"select pg_create_logical_replication_slot('{env.slot}', 'pgoutput')")
    env.store("update shop_order set status = 'paid' where id = 1")
    stats = env.run()
    assert stats.initial_rows == 1100
    env.assert_mirrored()


def test_until_caught_up_cli_and_status(stream_env: StreamEnv):
    env = stream_env
    missing = subprocess.run(
        [sys.executable, "-m", "apparel.cli", "stream", "status"],
        env=env.cli_env(),
        capture_output=True,
        text=True,
    )
    assert missing.returncode != 0 and "does not exist" in missing.stdout

    done = env.cli("--until-caught-up", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = done.communicate(timeout=60)
    assert done.returncode == 0, out
    assert "caught up" in out
    env.assert_mirrored()

    # A running stream: status sees it active, with the last batch's lag and throughput.
    stop = threading.Event()
    thread, result = env.thread(stop)
    env.store("update shop_order set status = 'paid', updated_at = now() where id <= 50")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = stream_status(env.store_url, env.warehouse_url, env.slot)
        if status.slot_active and status.last_batch_lag_ms is not None:
            break
        time.sleep(0.1)
    assert status.slot_active and status.last_batch_lag_ms > 0
    assert status.changes_per_s > 0 and status.dead_letters == 0 and not status.warnings
    text = "\n".join(format_status(status))
    assert "active" in text and "lag" in text and "WAL held back" in text
    stop.set()
    thread.join(30)
    assert result and not isinstance(result[0], BaseException), result

    # The slot now lags behind the store's WAL (nobody reads it): a tiny threshold must warn.
    env.store("update shop_order set updated_at = now()")
    ok = subprocess.run(
        [sys.executable, "-m", "apparel.cli", "stream", "status"],
        env=env.cli_env(),
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stdout
    warned = subprocess.run(
        [sys.executable, "-m", "apparel.cli", "stream", "status"],
        env=env.cli_env(STREAM_WAL_WARN_MB="0.001"),
        capture_output=True,
        text=True,
    )
    assert warned.returncode == 1, warned.stdout
    assert "WARNING" in warned.stdout and "INACTIVE" in warned.stdout


@pytest.mark.parametrize("signum", ["SIGTERM"])
def test_sigterm_finishes_the_batch_and_exits(stream_env: StreamEnv, signum: str, tmp_path: Path):
    """The signal comes while a batch is being applied (its warehouse transaction held by a lock on
    `_stream_state`): the stream waits for that batch to commit, confirms it to the store, then exits 0."""
    env = stream_env
    log = tmp_path / "stream.log"
    with log.open("w") as out:
        proc = env.cli(stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: env.state_lsn(), "the initial copy", proc=proc, log=log)
        with psycopg.connect(env.warehouse_url) as lock:
            lock.execute(f"lock table {MIRROR_SCHEMA}._stream_state in share mode")
            env.store("update shop_order set status = 'paid', updated_at = now() where id <= 30")
            wait_for(
                lambda: env.stream_sessions(waiting_on_lock=True),
                "the batch to be applied",
                proc=proc,
                log=log,
            )
            proc.send_signal(getattr(signal, signum))
            wait_for(
                lambda: "finishing the current batch" in log.read_text(), "the signal", proc=proc, log=log
            )
            assert proc.poll() is None, "the stream exited with its batch not committed"
            lock.rollback()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = log.read_text()
    assert proc.returncode == 0, out
    assert "stream: 30 changes in 1 store transactions, 1 batches" in out
    env.assert_mirrored()
    # Confirmed before it exited: the store may forget the batch's changes.
    env.wait_released()
    with psycopg.connect(env.store_url) as conn:
        confirmed = conn.execute(
            "select (confirmed_flush_lsn - '0/0')::bigint from pg_replication_slots where slot_name = %s",
            (env.slot,),
        ).fetchone()[0]
    assert confirmed >= env.state_lsn()
