"""The stream copies the shop's tables again when its slot is gone: the copy merges into the mirror.

The user's case (issue 11): an order deleted in the shop, the slot dropped (as the README advises
when the stream is not used), the stream started again. The mirror must still know the order was
deleted (its tombstone), take what changed while no slot recorded the changes (new rows, changed
rows, rows deleted then), and leave every other row as it was (`_synced_at` is the watermark of
the incremental dbt models)."""

from __future__ import annotations

import logging
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import psycopg
import pytest

from apparel.store import MIRROR_SCHEMA, reset_store
from apparel.stream import drop_slot
from tests.conftest import DATASET_DIR, load_all
from tests.dbt.conftest import Dbt
from tests.realtime import stream_support
from tests.realtime.stream_support import StreamEnv, make_stream_env

stream_env = stream_support.stream_env

MIRRORS = ("shop_customer", "shop_order", "shop_orderline")
# The staging views of orders and lines, with whatever they are built from.
STAGED = ("+stg_orders", "+stg_order_details")


def bookkeeping(env: StreamEnv) -> dict[tuple[str, int], tuple]:
    """(table, id) -> (_synced_at, _batch_id, _lsn, _store_committed_at, _deleted_at) of every mirror row."""
    rows = {}
    for table in MIRRORS:
        for id_, *rest in env.warehouse(
            f"select id, _synced_at, _batch_id, _lsn::text, _store_committed_at, _deleted_at"
            f" from {MIRROR_SCHEMA}.{table}"
        ):
            rows[(table, id_)] = tuple(rest)
    return rows


def copy_batch(env: StreamEnv) -> tuple[int, str]:
    """The last initial copy's batch of the slot: (batch_id, lsn)."""
    return env.warehouse(
        f"select batch_id, lsn::text from {MIRROR_SCHEMA}._stream_batches"
        " where slot_name = %s and transactions = 0 order by batch_id desc limit 1",
        (env.slot,),
    )[0]


def store_now(env: StreamEnv) -> datetime:
    with psycopg.connect(env.store_url) as conn:
        return conn.execute("select clock_timestamp()").fetchone()[0]


def test_recopy_after_the_slot_is_dropped_merges(stream_env: StreamEnv, caplog: pytest.LogCaptureFixture):
    env = stream_env
    caplog.set_level(logging.INFO, logger="apparel.stream")
    first = env.run()
    assert first.initial_rows == 1100
    assert (first.initial_inserted, first.initial_updated, first.initial_deleted) == (1100, 0, 0)

    # Streamed: order 10 deleted (its lines 9 and 309 by the cascade), line 5 deleted, order 11 paid.
    env.store(
        "delete from shop_order where id = 10",
        "delete from shop_orderline where id = 5",
        "update shop_order set status = 'paid', updated_at = now() where id = 11",
    )
    streamed = env.run()
    assert streamed.changes == 5 and streamed.initial_rows == 0
    before = bookkeeping(env)
    tombstones = {k: v for k, v in before.items() if v[4] is not None}
    assert set(tombstones) == {
        ("shop_order", 10),
        ("shop_orderline", 9),
        ("shop_orderline", 309),
        ("shop_orderline", 5),
    }
    for synced_at, _, _, committed_at, deleted_at in tombstones.values():
        # A streamed delete carries its store commit time; _synced_at is the warehouse's commit.
        assert deleted_at == committed_at and synced_at >= deleted_at

    # The slot is dropped (the README's advice when the stream is stopped for good); meanwhile the
    # shop goes on: order 12 shipped, order 13 deleted with its lines 12 and 312, a new order with a
    # line, and line 5 written again with its old id.
    drop_slot(env.store_url, env.slot)
    env.store(
        "update shop_order set status = 'shipped', updated_at = now() where id = 12",
        "delete from shop_order where id = 13",
        "insert into shop_order (id, customer_id, province_id, city_id) overriding system value"
        " values (5001, 7, 3, 301)",
        "insert into shop_orderline (id, order_id, product_id, quantity, unit_price, amount)"
        " overriding system value values (9001, 5001, 4, 2, 150000, 300000),"
        " (5, 6, 1, 3, 100000, 300000)",
    )
    deleted_after = store_now(env)

    caplog.clear()
    again = env.run()
    assert again.caught_up
    # Snapshot: 200 customers, 300 - 2 + 1 orders, 600 - 2 - 2 + 1 lines (line 5 back).
    assert again.initial_rows == 200 + 299 + 597
    counts = (again.initial_inserted, again.initial_updated, again.initial_deleted, again.initial_unchanged)
    assert counts == (2, 2, 3, 1096 - 4), "inserted: order 5001 and its line; updated: order 12, line 5"
    copy_log = [r.getMessage() for r in caplog.records if r.getMessage().startswith("initial copy")]
    assert len(copy_log) == 1 and "2 inserted, 2 updated, 3 deleted, 1,092 unchanged" in copy_log[0]
    env.assert_mirrored()  # the live rows are exactly the shop's

    after = bookkeeping(env)
    batch_id, lsn = copy_batch(env)
    copy_synced = after[("shop_order", 12)][0]
    changed = {
        ("shop_order", 12): "updated",
        ("shop_orderline", 5): "restored",
        ("shop_order", 5001): "inserted",
        ("shop_orderline", 9001): "inserted",
        ("shop_order", 13): "deleted",
        ("shop_orderline", 12): "deleted",
        ("shop_orderline", 312): "deleted",
    }
    copy_time = after[("shop_order", 13)][4]
    assert deleted_after <= copy_time <= store_now(env)
    for key, what in changed.items():
        synced_at, batch, row_lsn, committed_at, deleted_at = after[key]
        assert (synced_at, batch, row_lsn) == (copy_synced, batch_id, lsn), (key, what)
        if what == "deleted":
            # Deleted at or before the snapshot: the copy's time is the best known delete time.
            assert deleted_at == committed_at == copy_time, key
        else:
            assert deleted_at is None and committed_at is None, key
    # Every other row, the tombstones of order 10 and of its lines included, is as it was.
    untouched = {k: v for k, v in after.items() if k not in changed}
    assert untouched == {k: v for k, v in before.items() if k not in changed}
    assert untouched[("shop_order", 10)] == before[("shop_order", 10)] and before[("shop_order", 10)][4]
    orders = dict(
        env.warehouse(f"select id, status from {MIRROR_SCHEMA}.shop_order where id in (11, 12, 5001)")
    )
    assert orders == {11: "paid", 12: "shipped", 5001: "pending"}

    # The stream goes on from the new slot.
    env.store("update shop_order set status = 'delivered', updated_at = now() where id = 12")
    assert env.run().changes == 1
    env.assert_mirrored()


def test_a_deleted_order_stays_out_of_staging_after_a_recopy(pg_admin_url: str, tmp_path: Path):
    """The same, with the shop seeded from the extracts (the same order ids) and seen through dbt:
    the extract rows of an order deleted in the shop (before the slot was dropped, or while it was
    gone) must not come back in stg_orders, nor its lines in stg_order_details."""
    with make_stream_env(pg_admin_url, pg_admin_url) as env:
        reset_store(env.store_url, DATASET_DIR, create_database=False)
        load_all(env.warehouse_url)
        env.run()
        # Orders both the extract and the shop have, with their lines in both: the first deleted
        # while the stream runs, the third while the slot is gone; the second changed.
        gone, changed, gone_later = (
            r[0]
            for r in env.warehouse(
                f"select id from {MIRROR_SCHEMA}.shop_order s join raw.orders o on o.order_id = s.id"
                " where exists (select from raw.order_details d where d.order_id = s.id)"
                " order by id limit 3"
            )
        )
        lines = [
            r[0]
            for r in env.warehouse(
                "select order_detail_id from raw.order_details where order_id = any(%s)",
                ([gone, gone_later],),
            )
        ]
        mirrored_lines = env.warehouse(
            f"select count(*) filter (where order_id = %s), count(*) filter (where order_id = %s)"
            f" from {MIRROR_SCHEMA}.shop_orderline",
            (gone, gone_later),
        )[0]
        assert lines and len(lines) == sum(mirrored_lines)
        dbt = Dbt(env.warehouse_url, tmp_path / "dbt-target")
        dbt("run", "--select", *STAGED)  # built before the scenario: the next run is incremental
        assert env.warehouse(
            "select count(*) from staging.stg_orders where order_id = any(%s)", ([gone, gone_later],)
        ) == [(2,)]
        env.store(
            f"delete from shop_order where id = {gone}",
            f"update shop_order set status = 'cancelled', updated_at = now() where id = {changed}",
        )
        env.run()
        drop_slot(env.store_url, env.slot)
        env.store(
            f"delete from shop_order where id = {gone_later}",
            "insert into shop_order (id, customer_id, province_id, city_id) overriding system value"
            " select max(id) + 1, 1, 1, 101 from shop_order",
        )
        with psycopg.connect(env.store_url) as conn:
            new_order = conn.execute("select max(id) from shop_order").fetchone()[0]
        restarted = env.cli("--until-caught-up", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out, _ = restarted.communicate(timeout=120)
        assert restarted.returncode == 0, out
        assert f"1 inserted, 0 updated, {1 + mirrored_lines[1]} deleted" in out, out
        env.assert_mirrored()

        # The incremental models pick the changes up by their _synced_at; a full rebuild agrees.
        for args in ((), ("--full-refresh",)):
            dbt("run", *args, "--select", *STAGED)
            staged = dict(
                env.warehouse(
                    "select order_id, order_status from staging.stg_orders where order_id = any(%s)",
                    ([gone, changed, gone_later, new_order],),
                )
            )
            assert staged == {changed: "cancelled", new_order: "pending"}, ("a deleted order came back", args)
            back = env.warehouse(
                "select order_detail_id from staging.stg_order_details where order_detail_id = any(%s)"
                " or order_id = any(%s)",
                (lines, [gone, gone_later]),
            )
            assert back == [], ("lines of a deleted order came back", args)


def test_store_reset_keeps_the_mirror_consistent(stream_env: StreamEnv):
    """`apparel store reset` drops the shop's tables, which logical replication does not carry: it
    drops the slot too, so that the stream's next start copies again, merging, and the rows the
    reset removed are tombstones, not live rows the shop no longer has."""
    env = stream_env
    env.run()
    env.store(
        "insert into shop_customer (id, first_name, last_name, gender) overriding system value"
        " values (5000, 'Only', 'Before', 'Male')"
    )
    env.run()
    reset = subprocess.run(
        [sys.executable, "-m", "apparel.cli", "store", "reset", "--dataset-dir", str(DATASET_DIR)],
        env=env.cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert reset.returncode == 0, reset.stdout + reset.stderr
    assert f"dropped the stream's replication slot {env.slot}" in reset.stdout
    env.run()
    env.assert_mirrored()
    assert env.warehouse(
        f"select _deleted_at is not null from {MIRROR_SCHEMA}.shop_customer where id = 5000"
    ) == [(True,)]
