"""The stream under faults, on real servers and processes: SIGKILL at random moments under load and
inside a batch's warehouse transaction, the warehouse server and the store server restarted, a slot
far behind. Each ends with store and warehouse compared row by row, and most with the count of store
transactions applied compared with those written."""

from __future__ import annotations

import random
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from apparel.embedded_pg import EmbeddedServer, free_port
from apparel.store import MIRROR_SCHEMA, ensure_mirror
from apparel.stream import drop_slot
from tests.realtime import stream_support
from tests.realtime.stream_support import (
    StreamEnv,
    assert_bookkeeping,
    data_dir_for_server,
    make_stream_env,
    run_writer,
    wait_for,
)

stream_env = stream_support.stream_env


def applied_transactions(env: StreamEnv) -> int:
    """Store transactions the stream applied after its initial copy (batches with transactions > 0)."""
    return env.warehouse(
        f"select coalesce(sum(transactions), 0) from {MIRROR_SCHEMA}._stream_batches where slot_name = %s",
        (env.slot,),
    )[0][0]


def test_sigkill_at_random_moments_under_load(stream_env: StreamEnv, tmp_path: Path):
    """Each kill lands while batches are being applied: the process has committed a batch of the
    writer's transactions and goes on, and it dies 0-300 ms later (decoding, applying, committing,
    confirming). Between kills the stream must have moved on; at the end nothing is lost or doubled."""
    env = stream_env
    env.run()  # the initial copy; from here on every store transaction must arrive exactly once
    before = applied_transactions(env)
    rng = random.Random(4)
    stop = threading.Event()
    writer, sim = run_writer(env, rate=150, seconds=0, stop=stop, seed=7)
    applied, position = before, env.state_lsn()
    moments = []
    try:
        for kill in range(5):
            last = env.last_batch_id()
            log = tmp_path / f"stream-{kill}.log"
            with log.open("w") as out:
                proc = env.cli(stdout=out, stderr=subprocess.STDOUT)
            try:
                wait_for(
                    lambda last=last: env.batches_after(last),
                    "a batch committed by the new stream process",
                    proc=proc,
                    log=log,
                )
                delay = rng.uniform(0.0, 0.3)
                time.sleep(delay)
                assert proc.poll() is None, f"the stream died on its own:\n{log.read_text()}"
                proc.send_signal(signal.SIGKILL)
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
            env.wait_released()
            moments.append(f"{env.batches_after(last)} batch(es), {delay * 1000:.0f} ms")
            assert_bookkeeping(env.warehouse_url, env.slot)
            now_applied, now_position = applied_transactions(env), env.state_lsn()
            assert now_applied > applied and now_position > position, f"no progress before kill {kill + 1}"
            applied, position = now_applied, now_position
    finally:
        stop.set()
        writer.join(30)
    print("killed after", "; ".join(moments))
    written = sim[0].transactions
    assert env.run().caught_up  # what the last kill left
    env.assert_mirrored()
    assert applied_transactions(env) - before == written, "store transactions lost or applied twice"


def kill_while_waiting_on_lock(
    env: StreamEnv, table: str, log: Path, what: str, writes: Callable[[], None] | None = None
) -> None:
    """Start the stream process while `table` of the mirror is locked, make the shop's `writes`, and
    SIGKILL the process once its warehouse transaction waits on the lock; then release the lock and
    wait until the dead stream's sessions and slot are gone."""
    with psycopg.connect(env.warehouse_url) as lock:
        lock.execute(f"lock table {MIRROR_SCHEMA}.{table} in share mode")
        with log.open("w") as out:
            proc = env.cli(stdout=out, stderr=subprocess.STDOUT)
        try:
            if writes:
                writes()
            wait_for(lambda: env.stream_sessions(waiting_on_lock=True), what, proc=proc, log=log)
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        lock.rollback()
    env.wait_released()


@pytest.mark.parametrize("locked", ["shop_order", "_stream_state"])
def test_sigkill_inside_the_batch_transaction(stream_env: StreamEnv, tmp_path: Path, locked: str):
    """SIGKILL while a batch's warehouse transaction is held by a lock: at its data (shop_order) or
    at its position (_stream_state). Data and position commit together or not at all: the kill leaves
    no trace of the batch, and the next start applies it exactly once."""
    env = stream_env
    env.run()
    before = applied_transactions(env)
    fingerprint = env.mirror_fingerprint()
    log = tmp_path / "stream.log"
    kill_while_waiting_on_lock(
        env,
        locked,
        log,
        f"the batch to wait for the lock on {locked}",
        writes=lambda: env.store(
            "update shop_order set status = 'paid', updated_at = now() where id <= 40",
            "insert into shop_orderline (order_id, product_id, quantity, unit_price, amount)"
            " values (3, 5, 2, 1000, 2000)",
        ),
    )
    assert env.mirror_fingerprint() == fingerprint, "the killed batch left part of itself in the warehouse"
    stats = env.run()
    assert stats.transactions == 2, stats
    env.assert_mirrored()
    assert applied_transactions(env) - before == 2, "store transactions lost or applied twice"


def test_warehouse_restarted_under_load(pg_admin_url: str):
    """The warehouse on its own server, stopped and started while the shop writes and the stream runs."""
    server = EmbeddedServer(data_dir_for_server("wh-restart"), free_port(), secrets.token_urlsafe(18))
    server.start()
    try:
        with make_stream_env(pg_admin_url, server.url("postgres")) as env:
            env.run()
            before = applied_transactions(env)
            stop_stream, stop_writer = threading.Event(), threading.Event()
            last = env.last_batch_id()
            thread, result = env.thread(stop_stream)
            writer, sim = run_writer(env, rate=150, seconds=0, stop=stop_writer, seed=11)
            wait_for(lambda: env.batches_after(last), "a batch under load")
            server.stop()
            # The next batch fails: the stream ends its session (and lets go of the slot) to retry.
            wait_for(lambda: not env.slot_active(), "the stream to notice the warehouse is gone")
            server.start()
            wait_for(
                lambda: env.warehouse(
                    f"select count(*) from {MIRROR_SCHEMA}._stream_batches where slot_name = %s"
                    " and transactions > 0 and committed_at > pg_postmaster_start_time()",
                    (env.slot,),
                )[0][0],
                "a batch applied after the warehouse came back",
            )
            stop_writer.set()
            writer.join(30)
            written = sim[0].transactions
            stop_stream.set()
            thread.join(60)
            assert result and not isinstance(result[0], BaseException), result
            assert result[0].reconnects >= 1
            env.run()  # whatever the last second left
            env.assert_mirrored()
            assert applied_transactions(env) - before == written
    finally:
        server.destroy()


def paid(env: StreamEnv) -> int:
    return env.warehouse(f"select count(*) from {MIRROR_SCHEMA}.shop_order where status = 'paid'")[0][0]


def shipped(env: StreamEnv) -> int:
    return env.warehouse(f"select count(*) from {MIRROR_SCHEMA}.shop_order where status = 'shipped'")[0][0]


def test_store_restarted_while_streaming(pg_admin_url: str):
    """The shop's server goes away under the stream and comes back: it reconnects and resumes."""
    server = EmbeddedServer(data_dir_for_server("store-restart"), free_port(), secrets.token_urlsafe(18))
    server.start()
    try:
        with make_stream_env(server.url("postgres"), pg_admin_url) as env:
            env.run()
            stop = threading.Event()
            thread, result = env.thread(stop)
            env.store("update shop_order set status = 'paid', updated_at = now() where id <= 100")
            wait_for(lambda: paid(env) == 100, "the stream to apply the first change")
            server.stop()
            # The walsender is gone: the stream ends its session (its warehouse connection too) to retry.
            wait_for(lambda: env.stream_sessions() == 0, "the stream to notice the store is gone")
            server.start()
            env.store("update shop_order set status = 'shipped', updated_at = now() where id <= 50")
            env.store("delete from shop_orderline where order_id = 7")
            wait_for(lambda: shipped(env) == 50, "the stream to resume after the store restart")
            stop.set()
            thread.join(60)
            assert result and not isinstance(result[0], BaseException), result
            assert result[0].reconnects >= 1
            env.assert_mirrored()
    finally:
        server.destroy()


def slot_position(env: StreamEnv) -> tuple[int, int, str]:
    """The slot's confirmed position, the WAL written since (bytes), and the server's wal_status."""
    with psycopg.connect(env.store_url) as conn:
        return conn.execute(
            "select (confirmed_flush_lsn - '0/0')::bigint,"
            " pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, wal_status"
            " from pg_replication_slots where slot_name = %s",
            (env.slot,),
        ).fetchone()


def held_transactions(env: StreamEnv) -> int:
    """Store transactions the slot holds for the stream: its pending commits, decoded without consuming."""
    with psycopg.connect(env.store_url) as conn:
        return conn.execute(
            "select count(*) from pg_logical_slot_peek_binary_changes(%s, null, null,"
            " 'proto_version', '1', 'publication_names', %s) where get_byte(data, 0) = 67",  # 'C'ommit
            (env.slot, env.slot),
        ).fetchone()[0]


def test_slot_far_behind_catches_up(stream_env: StreamEnv):
    env = stream_env
    env.run()
    before = applied_transactions(env)
    position = env.state_lsn()
    confirmed_before = slot_position(env)[0]
    assert confirmed_before >= position, "the slot is confirmed up to the warehouse's position"
    stop = threading.Event()
    # Grouped transactions: many changes quickly while no stream reads the slot.
    writer, sim = run_writer(env, rate=1500, seconds=3, stop=stop, seed=3)
    writer.join(60)
    written = sim[0]
    # The slot holds back all of it: not confirmed a byte further, every written transaction pending.
    confirmed, behind, wal_status = slot_position(env)
    assert confirmed == confirmed_before and env.state_lsn() == position
    assert wal_status == "reserved" and behind > 0
    assert held_transactions(env) == written.transactions
    assert env.warehouse(f"select count(*) from {MIRROR_SCHEMA}.shop_order")[0][0] == 300
    started = time.monotonic()
    stats = env.run()
    seconds = time.monotonic() - started
    print(
        f"slot behind by {behind / 1024 / 1024:.1f} MB of WAL, {written.transactions:,} transactions;"
        f" catch-up: {stats.changes:,} changes in {seconds:.2f} s = {stats.changes / seconds:,.0f} changes/s"
    )
    assert stats.caught_up and stats.transactions == written.transactions
    # Every new order and line is a change of its own (status changes of one tick are grouped).
    assert stats.changes >= written.orders + written.lines + written.customers
    env.assert_mirrored()
    assert applied_transactions(env) - before == written.transactions
    assert slot_position(env)[0] >= env.state_lsn() > position, "the catch-up is confirmed to the store"


def test_killed_during_initial_copy_then_restarted(stream_env: StreamEnv, tmp_path: Path):
    """SIGKILL with the copy's rows written but its transaction not committed (held by a lock on the
    state row's table): the slot exists, the warehouse has nothing; the next start copies again."""
    env = stream_env
    with psycopg.connect(env.warehouse_url) as conn:
        ensure_mirror(conn)
    log = tmp_path / "stream.log"
    kill_while_waiting_on_lock(
        env, "_stream_state", log, "the initial copy to wait for the lock on _stream_state"
    )
    assert not env.warehouse(f"select 1 from {MIRROR_SCHEMA}._stream_state")
    assert env.warehouse(f"select count(*) from {MIRROR_SCHEMA}.shop_orderline")[0][0] == 0
    with psycopg.connect(env.store_url) as conn:
        assert conn.execute("select 1 from pg_replication_slots where slot_name = %s", (env.slot,)).fetchone()
    stats = env.run()
    assert stats.caught_up and stats.initial_rows == 200 + 300 + 600
    env.assert_mirrored()


def test_killed_during_a_merging_recopy_then_restarted(stream_env: StreamEnv, tmp_path: Path):
    """SIGKILL during the copy that merges into a mirror with rows (its slot was dropped), its rows
    merged but not committed: the mirror is as before, and the next start merges again, so that the
    shop and the warehouse agree row by row and the delete made while no slot recorded it is a
    tombstone."""
    env = stream_env
    env.run()
    drop_slot(env.store_url, env.slot)
    env.store(
        "delete from shop_order where id = 10",
        "update shop_order set status = 'paid', updated_at = now() where id = 11",
    )
    fingerprint = env.mirror_fingerprint()
    kill_while_waiting_on_lock(
        env,
        "_stream_state",
        tmp_path / "stream.log",
        "the merging copy to wait for the lock on _stream_state",
    )
    assert env.mirror_fingerprint() == fingerprint, "the killed copy left part of itself in the warehouse"
    stats = env.run()
    assert (stats.initial_updated, stats.initial_deleted) == (1, 3), stats  # order 11; order 10 and 2 lines
    env.assert_mirrored()
    assert env.warehouse(f"select _deleted_at is not null from {MIRROR_SCHEMA}.shop_order where id = 10") == [
        (True,)
    ]


def test_two_streams_on_one_slot_take_turns(stream_env: StreamEnv, tmp_path: Path):
    """Two stream processes started at once on one slot and warehouse: one streams, the other waits
    (the advisory lock) and takes over when the first is killed; nothing is lost or applied twice."""
    env = stream_env
    env.run()
    before = applied_transactions(env)
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    procs = []
    for log in logs:
        with log.open("w") as out:
            procs.append(env.cli(stdout=out, stderr=subprocess.STDOUT))
    try:
        env.store("update shop_order set status = 'paid', updated_at = now() where id <= 10")
        wait_for(lambda: paid(env) == 10, "one of the streams to apply the change")
        waiting = wait_for(
            lambda: [i for i, log in enumerate(logs) if "another stream on slot" in log.read_text()],
            "the other stream to wait",
        )
        (second,) = waiting
        first = 1 - second
        assert procs[second].poll() is None and "streaming from slot" not in logs[second].read_text()
        procs[first].send_signal(signal.SIGKILL)
        procs[first].wait()
        env.store("update shop_order set status = 'shipped', updated_at = now() where id <= 5")
        wait_for(lambda: shipped(env) == 5, "the waiting stream to take over", timeout=60)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(60)
    env.assert_mirrored()
    assert applied_transactions(env) - before == 2, "store transactions lost or applied twice"
    assert env.warehouse(f"select count(*) from {MIRROR_SCHEMA}._stream_errors") == [(0,)]
