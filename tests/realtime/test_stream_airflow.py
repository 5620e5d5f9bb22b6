"""The stream tells a real Airflow api-server that raw_store changed (asset events, debounced), and keeps
streaming when Airflow is down."""

from __future__ import annotations

import json
import logging
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import psycopg
import pytest

from apparel.airflow_env import AIRFLOW
from apparel.airflow_env import airflow_env as project_airflow_env
from apparel.airflow_notify import SHOP_MIRROR_URI, AssetNotifier, notifier_from_settings
from apparel.config import Settings
from apparel.embedded_pg import free_port
from tests.realtime import stream_support
from tests.realtime.stream_support import StreamEnv, run_writer, wait_for

pytestmark = pytest.mark.slow
stream_env = stream_support.stream_env

STREAM_USER = "apparel_stream"


@dataclass
class Airflow:
    url: str
    stream_password: str
    admin_token: str

    def get(self, path: str, **params) -> dict:
        response = httpx.get(
            f"{self.url}{path}", params=params, headers={"Authorization": f"Bearer {self.admin_token}"}
        )
        response.raise_for_status()
        return response.json()

    def mirror_events(self) -> int:
        return self.get("/api/v2/assets/events", uri=SHOP_MIRROR_URI)["total_entries"]

    def queued_runs_of_fresh_marts(self) -> list[dict]:
        return self.get("/api/v2/dags/fresh_marts/assets/queuedEvents")["queued_events"]

    def notifier(self, **kwargs) -> AssetNotifier:
        return AssetNotifier(self.url, STREAM_USER, self.stream_password, **kwargs)


@pytest.fixture(scope="module")
def airflow_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Airflow]:
    """An api-server as `make up` runs it (simple auth manager: an admin, the stream's user as `op`), on
    its own SQLite metadata, with the project's DAGs serialized (so the shop mirror's asset exists)."""
    home = tmp_path_factory.mktemp("airflow-api")
    env = project_airflow_env(home=home)
    admin_password, stream_password = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({"admin": admin_password, STREAM_USER: stream_password}))
    port = free_port()
    env.update(
        {
            "AIRFLOW__COSMOS__CACHE_DIR": str(home / "cosmos"),
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"admin:admin,{STREAM_USER}:op",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__API__WORKERS": "1",
            # Asset events queue runs only for unpaused DAGs (as under `make up`).
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        }
    )
    for step in (["db", "migrate"], ["dags", "reserialize"]):
        subprocess.run([str(AIRFLOW), *step], env=env, check=True, capture_output=True, timeout=300)
    log = home / "api-server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(AIRFLOW), "api-server", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"{url}/api/v2/monitor/health", timeout=2).is_success
            except httpx.HTTPError:
                return False

        wait_for(healthy, "the api-server answering", timeout=120, proc=proc, log=log)
        token = httpx.post(f"{url}/auth/token", json={"username": "admin", "password": admin_password})
        token.raise_for_status()
        yield Airflow(url, stream_password, token.json()["access_token"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _order(env: StreamEnv) -> None:
    env.store(
        "insert into shop_order (customer_id, province_id, city_id, status, created_at, updated_at)"
        " select id, 5, 91, 'paid', now(), now() from shop_customer limit 1"
    )


def test_a_change_posts_one_event_and_an_idle_stream_none(stream_env: StreamEnv, airflow_api: Airflow):
    stop = threading.Event()
    with airflow_api.notifier(min_interval=1) as notifier:
        thread, out = stream_env.thread(stop, notifier=notifier)
        try:
            # The initial copy filled the mirror: that is a change too.
            wait_for(lambda: notifier.posted == 1, "the event of the initial copy")
            before = airflow_api.mirror_events()
            time.sleep(3)  # idle: nothing changes, nothing is posted
            assert (notifier.posted, airflow_api.mirror_events()) == (1, before)
            _order(stream_env)
            wait_for(lambda: airflow_api.mirror_events() == before + 1, "the event of the order")
            time.sleep(2)  # and only one
            assert airflow_api.mirror_events() == before + 1 and notifier.failed == 0
        finally:
            stop.set()
            thread.join(timeout=30)
    assert not isinstance(out[0], BaseException), out
    # Airflow queued one run of fresh_marts for the shop mirror (its DAG is scheduled on it).
    assert [e["dag_id"] for e in airflow_api.queued_runs_of_fresh_marts()] == ["fresh_marts"]


def test_a_burst_of_changes_makes_few_events_and_one_queued_run(stream_env: StreamEnv, airflow_api: Airflow):
    stop, writer_stop = threading.Event(), threading.Event()
    with airflow_api.notifier(min_interval=2) as notifier:
        thread, out = stream_env.thread(stop, notifier=notifier, batch_ms=50)
        try:
            wait_for(lambda: notifier.posted == 1, "the event of the initial copy")
            batches_before = stream_env.last_batch_id()
            writer, _ = run_writer(stream_env, rate=200, seconds=5, stop=writer_stop)
            writer.join(timeout=60)
            wait_for(lambda: stream_env.state_lsn() and not notifier._pending.is_set(), "the burst applied")
            time.sleep(2.5)  # the trailing event of the burst
        finally:
            stop.set()
            thread.join(timeout=30)
    assert not isinstance(out[0], BaseException), out
    batches = stream_env.batches_after(batches_before)
    burst_events = notifier.posted - 1
    # One event per 2 s at most (5 s of writing, plus the first and the trailing one), for many batches.
    assert batches > 10 and 1 <= burst_events <= 5, (batches, burst_events)
    # However many events: one queued run of fresh_marts (Airflow keeps one per DAG and asset, and with
    # max_active_runs=1 starts it only once the active run ends), never a queue of runs.
    assert len(airflow_api.queued_runs_of_fresh_marts()) == 1


def test_airflow_down_leaves_the_stream_running(stream_env: StreamEnv, caplog: pytest.LogCaptureFixture):
    stop = threading.Event()
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with (
        caplog.at_level(logging.WARNING, logger="apparel.airflow_notify"),
        AssetNotifier(nobody, STREAM_USER, "unused", min_interval=0.2) as notifier,
    ):
        thread, out = stream_env.thread(stop, notifier=notifier)
        try:
            wait_for(lambda: notifier.failed >= 1, "the first failed post")
            for _ in range(3):
                _order(stream_env)
                time.sleep(0.3)
            wait_for(lambda: _mirrored(stream_env), "the orders mirrored while Airflow is down")
            assert thread.is_alive() and notifier.failed >= 2
        finally:
            stop.set()
            thread.join(timeout=30)
    assert not isinstance(out[0], BaseException), out
    # Logged, but once per minute, not once per failure.
    warnings = [r for r in caplog.records if "could not tell Airflow" in r.getMessage()]
    assert len(warnings) == 1


def _mirrored(env: StreamEnv) -> bool:
    with psycopg.connect(env.store_url) as conn:
        in_store = conn.execute("select count(*) from shop_order").fetchone()[0]
    return (
        env.warehouse("select count(*) from raw_store.shop_order where _deleted_at is null")[0][0] == in_store
    )


def test_no_airflow_url_no_notifier() -> None:
    # `make run` and the tests' streams: no Airflow to tell, so nothing is posted and nothing logged.
    assert notifier_from_settings(Settings({})) is None
    assert (
        notifier_from_settings(Settings({"STREAM_AIRFLOW_URL": "http://x", "STREAM_NOTIFY_AIRFLOW": "0"}))
        is None
    )
    with pytest.raises(RuntimeError, match="STREAM_AIRFLOW_PASSWORD"):
        notifier_from_settings(Settings({"STREAM_AIRFLOW_URL": "http://x"}))
