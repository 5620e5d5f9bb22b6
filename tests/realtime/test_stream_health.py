"""Faults that are not about a row, on real servers: a missing privilege, a dropped or retyped shop
column, a slot over its WAL budget and one the server invalidated (lost). The stream must stop
applying where it was (no dead letter, its position kept), say why in its status (the stack's
health), and go on by itself or by the command it names."""

from __future__ import annotations

import secrets
import subprocess
import threading
import uuid
from urllib.parse import urlparse

import psycopg
import pytest

from apparel.embedded_pg import EmbeddedServer, free_port
from apparel.store import MIRROR_SCHEMA
from apparel.stream import StreamError, stream_status
from tests.realtime import stream_support
from tests.realtime.stream_support import StreamEnv, data_dir_for_server, make_stream_env, wait_for

stream_env = stream_support.stream_env


def status(env: StreamEnv, **kwargs):
    return stream_status(env.store_url, env.warehouse_url, env.slot, **kwargs)


def dead_letters(env: StreamEnv) -> int:
    return env.warehouse(f"select count(*) from {MIRROR_SCHEMA}._dead_letters")[0][0]


def paid(env: StreamEnv) -> int:
    return env.warehouse(f"select count(*) from {MIRROR_SCHEMA}.shop_order where status = 'paid'")[0][0]


def test_missing_privilege_stops_applying_turns_red_and_resumes_after_the_grant(
    stream_env: StreamEnv, pg_admin_url: str
):
    env = stream_env
    env.run()  # mirror and bookkeeping made by the owner
    role, password = f"r_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    url = urlparse(env.warehouse_url)
    as_role = StreamEnv(
        env.store_url, f"postgresql://{role}:{password}@{url.hostname}:{url.port}{url.path}", env.slot
    )
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f"create role {role} login password '{password}'")
    try:
        with psycopg.connect(env.warehouse_url, autocommit=True) as wh:
            wh.execute(f"grant usage on schema {MIRROR_SCHEMA} to {role}")
            wh.execute(
                f"grant select, insert, update, delete on all tables in schema {MIRROR_SCHEMA} to {role}"
            )
            wh.execute(f"grant usage on all sequences in schema {MIRROR_SCHEMA} to {role}")
            wh.execute(f"revoke update on {MIRROR_SCHEMA}.shop_order from {role}")
        position = env.state_lsn()
        env.store("update shop_order set status = 'paid', updated_at = now() where id <= 20")

        # A catch-up run (make run) stops with the reason.
        with pytest.raises(StreamError, match=r"permission denied for table shop_order \(SQLSTATE 42501\)"):
            as_role.run()
        # The long-running stream keeps its position, makes no dead letter, and is red until the grant.
        stop = threading.Event()
        thread, result = as_role.thread(stop)
        try:
            red = wait_for(lambda: status(env).warnings, "the stream's health to turn red")
            assert "stopped applying at" in red[0] and "permission denied for table shop_order" in red[0]
            assert env.state_lsn() == position and paid(env) == 0 and dead_letters(env) == 0
            # `apparel stream status` (what the stack's health check reads) says so, exit 1.
            cli = env.cli("status", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            out, _ = cli.communicate(timeout=60)
            assert cli.returncode == 1 and "permission denied for table shop_order" in out, out
            with psycopg.connect(env.warehouse_url, autocommit=True) as wh:
                wh.execute(f"grant update on {MIRROR_SCHEMA}.shop_order to {role}")
            wait_for(lambda: paid(env) == 20, "the stream to apply the batch after the grant", timeout=60)
            wait_for(lambda: not status(env).warnings, "the health to turn green again")
        finally:
            stop.set()
            thread.join(60)
        assert result and not isinstance(result[0], BaseException), result
        assert dead_letters(env) == 0
        env.assert_mirrored()
    finally:
        with psycopg.connect(env.warehouse_url, autocommit=True) as wh:
            wh.execute(f"drop owned by {role}")
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            admin.execute(f"drop role if exists {role}")


def test_dropped_or_retyped_column_stops_with_what_to_do(stream_env: StreamEnv):
    env = stream_env
    env.store("alter table shop_customer add column nickname text")
    env.run()
    position = env.state_lsn()
    env.store(
        "alter table shop_customer drop column nickname",
        "update shop_customer set gender = 'Male', updated_at = now() where id = 3",
    )
    with pytest.raises(StreamError) as stopped:
        env.run()
    message = str(stopped.value)
    assert "column nickname of store table shop_customer was dropped or renamed" in message
    assert f"alter table {MIRROR_SCHEMA}.shop_customer drop column nickname" in message
    assert env.state_lsn() == position and dead_letters(env) == 0
    assert "dropped or renamed" in status(env).warnings[0]
    # Done as it says: the stream goes on from where it stopped, and its health is green again.
    with psycopg.connect(env.warehouse_url, autocommit=True) as wh:
        wh.execute(f"alter table {MIRROR_SCHEMA}.shop_customer drop column nickname")
    assert env.run().transactions == 1
    assert not status(env).warnings
    env.assert_mirrored()

    env.store(
        "alter table shop_order alter column city_id type bigint",
        "update shop_order set city_id = 102, updated_at = now() where id = 4",
    )
    with pytest.raises(
        StreamError, match="column city_id of store table shop_order changed type from integer"
    ):
        env.run()
    with psycopg.connect(env.warehouse_url, autocommit=True) as wh:
        wh.execute(f"alter table {MIRROR_SCHEMA}.shop_order alter column city_id type bigint")
    assert env.run().transactions == 1
    env.assert_mirrored()


def test_slot_over_its_wal_budget_then_lost_is_recopied_without_losing_a_delete(pg_admin_url: str):
    """The store on a server whose slots may hold 1 MB of WAL: a slot nobody reads goes over the
    stream's budget (red), then the server invalidates it at a checkpoint (lost, red); the next
    start copies again, merging, and the order deleted meanwhile is a tombstone in the mirror."""
    server = EmbeddedServer(
        data_dir_for_server("wal-cap"), free_port(), secrets.token_urlsafe(18), slot_wal_keep_mb=1
    )
    server.start()
    try:
        with make_stream_env(server.url("postgres"), pg_admin_url) as env:
            env.run()
            assert status(env).wal_keep_mb == 1
            env.store(
                "delete from shop_order where id = 10",
                # WAL nobody reads: 40 MB of it.
                "create table filler as select g, repeat(md5(g::text), 32) as pad"
                " from generate_series(1, 30000) g",
            )
            over = status(env, wal_warn_mb=10, inactive_warn_s=0)
            assert over.slot_exists and not over.slot_active
            assert any("holds back" in w and "STREAM_WAL_WARN_MB=10" in w for w in over.warnings), over
            assert any("no stream has read slot" in w for w in over.warnings), over

            def lost() -> bool:
                env.store("select pg_switch_wal()", "checkpoint")
                return status(env).wal_status == "lost"

            wait_for(lost, "the server to invalidate the slot", timeout=60)
            cli = env.cli("status", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            out, _ = cli.communicate(timeout=60)
            assert cli.returncode == 1 and f"slot {env.slot} is lost" in out, out

            stats = env.run()
            assert stats.caught_up and stats.initial_rows > 0
            assert stats.initial_deleted == 1 + 2, stats  # order 10 and its two lines
            env.assert_mirrored()
            tombstone = env.warehouse(
                f"select _deleted_at is not null from {MIRROR_SCHEMA}.shop_order where id = 10"
            )
            assert tombstone == [(True,)]
            assert status(env).wal_status == "reserved" and not status(env).warnings
    finally:
        server.destroy()
