"""The stream under faults, on real servers and processes: SIGKILL at random moments under load, the
warehouse server restarted under load, a slot far behind. Each ends with store and warehouse
compared row by row, and the count of store transactions applied compared with those written."""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time

import psycopg

from apparel.embedded_pg import EmbeddedServer, free_port
from apparel.store import MIRROR_SCHEMA
from tests.realtime import stream_support
from tests.realtime.stream_support import StreamEnv, data_dir_for_server, make_stream_env, run_writer

stream_env = stream_support.stream_env


def applied_transactions(env: StreamEnv) -> int:
    """Store transactions the stream applied after its initial copy (batches with transactions > 0)."""
    return env.warehouse(
        f"select coalesce(sum(transactions), 0) from {MIRROR_SCHEMA}._stream_batches where slot_name = %s",
        (env.slot,),
    )[0][0]


def test_sigkill_at_random_moments_under_load(stream_env: StreamEnv):
    env = stream_env
    env.run()  # the initial copy; from here on every store transaction must arrive exactly once
    before = applied_transactions(env)
    rng = random.Random(4)
    stop = threading.Event()
    writer, sim = run_writer(env, rate=150, seconds=0, stop=stop, seed=7)
    kills = 0
    try:
        for _ in range(5):
            proc = env.cli(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.4, 1.6))
            assert proc.poll() is None, "the stream died on its own"
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
    finally:
        stop.set()
        writer.join(30)
    written = sim[0].transactions
    assert written > 200, "the writer was meant to run throughout"
    done = env.cli("--until-caught-up", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = done.communicate(timeout=120)
    assert done.returncode == 0, out
    assert kills == 5
    env.assert_mirrored()
    assert applied_transactions(env) - before == written, "store transactions lost or applied twice"


def test_warehouse_restarted_under_load(pg_admin_url: str):
    """The warehouse on its own server, stopped and started while the shop writes and the stream runs."""
    server = EmbeddedServer(data_dir_for_server("wh-restart"), free_port())
    server.start()
    try:
        with make_stream_env(pg_admin_url, server.url("postgres")) as env:
            env.run()
            before = applied_transactions(env)
            stop_stream, stop_writer = threading.Event(), threading.Event()
            thread, result = env.thread(stop_stream)
            writer, sim = run_writer(env, rate=150, seconds=0, stop=stop_writer, seed=11)
            time.sleep(1.0)
            server.stop()
            time.sleep(1.0)
            server.start()
            time.sleep(1.5)
            stop_writer.set()
            writer.join(30)
            written = sim[0].transactions
            time.sleep(0.5)
            stop_stream.set()
            thread.join(60)
            assert result and not isinstance(result[0], BaseException), result
            assert result[0].reconnects >= 1
            env.run()  # whatever the last second left
            env.assert_mirrored()
            assert applied_transactions(env) - before == written
    finally:
        server.destroy()


def test_store_restarted_while_streaming(pg_admin_url: str):
    """The shop's server goes away under the stream and comes back: it reconnects and resumes."""
    server = EmbeddedServer(data_dir_for_server("store-restart"), free_port())
    server.start()
    try:
        with make_stream_env(server.url("postgres"), pg_admin_url) as env:
            env.run()
            stop = threading.Event()
            thread, result = env.thread(stop)
            env.store("update shop_order set status = 'paid', updated_at = now() where id <= 100")
            time.sleep(0.5)
            server.stop()
            time.sleep(1.0)
            server.start()
            env.store("update shop_order set status = 'shipped', updated_at = now() where id <= 50")
            env.store("delete from shop_orderline where order_id = 7")
            deadline = time.monotonic() + 30
            while (
                env.warehouse(f"select count(*) from {MIRROR_SCHEMA}.shop_order where status = 'shipped'")[0][
                    0
                ]
                < 50
            ):
                assert time.monotonic() < deadline, "the stream did not resume after the store restart"
                time.sleep(0.1)
            stop.set()
            thread.join(60)
            assert result and not isinstance(result[0], BaseException), result
            assert result[0].reconnects >= 1
            env.assert_mirrored()
    finally:
        server.destroy()


def test_slot_far_behind_catches_up(stream_env: StreamEnv):
    env = stream_env
    env.run()
    before = applied_transactions(env)
    stop = threading.Event()
    # Grouped transactions: many changes quickly while no stream reads the slot.
    writer, sim = run_writer(env, rate=1500, seconds=3, stop=stop, seed=3)
    writer.join(60)
    behind = env.warehouse(f"select count(*) from {MIRROR_SCHEMA}.shop_order")[0][0]
    assert behind == 300, "nothing arrives while the stream is stopped"
    started = time.monotonic()
    stats = env.run()
    seconds = time.monotonic() - started
    print(
        f"catch-up: {stats.changes:,} changes in {seconds:.2f} s = {stats.changes / seconds:,.0f} changes/s"
    )
    assert stats.caught_up and stats.changes > 10_000
    env.assert_mirrored()
    assert applied_transactions(env) - before == sim[0].transactions


def test_killed_during_initial_copy_then_restarted(stream_env: StreamEnv):
    """SIGKILL once the slot exists but before the copy is committed: the next start copies again."""
    env = stream_env
    env.store(
        "insert into shop_orderline (order_id, product_id, quantity, unit_price, amount)"
        " select 1 + g % 300, 1, 1, 1000, 1000 from generate_series(1, 100000) g"
    )
    proc = env.cli(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    with psycopg.connect(env.store_url, autocommit=True) as conn:
        while not conn.execute(
            "select 1 from pg_replication_slots where slot_name = %s", (env.slot,)
        ).fetchone():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not env.warehouse(f"select 1 from {MIRROR_SCHEMA}._stream_state"), "killed too late"
    stats = env.run()
    assert stats.caught_up and stats.initial_rows == 200 + 300 + 600 + 100_000
    env.assert_mirrored()
