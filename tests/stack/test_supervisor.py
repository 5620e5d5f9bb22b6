"""supervisord as `make up` runs it (apparel.stack's configuration, commands and status), on two real
services, the CDC stream and the shop simulator, against the test server: the stream killed with
SIGKILL while orders flow comes back by itself, the simulator keeps running, `status` counts the
restart, and nothing is lost or doubled (store and warehouse compared row by row)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from apparel import stack
from apparel.config import PROJECT_ROOT
from apparel.store import MIRROR_SCHEMA
from tests.conftest import DATASET_DIR, isolated_environment
from tests.realtime import stream_support
from tests.realtime.stream_support import StreamEnv, wait_for

stream_env = stream_support.stream_env

SERVICES = ["stream", "simulator"]


def test_a_service_killed_with_sigkill_comes_back_and_the_other_keeps_running(
    stream_env: StreamEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = stream_env
    env.run()  # the initial copy, so that the service's first start only streams
    env_file = tmp_path / "settings.env"
    env_file.write_text("# empty on purpose: the test sets every setting in the environment\n")
    settings = {
        "ENV_FILE": str(env_file),
        "STATE_DIR": str(tmp_path / "state"),
        "DATASET_DIR": str(DATASET_DIR),
        "STORE_URL": env.store_url,
        "WAREHOUSE_URL": env.warehouse_url,
        "STREAM_SLOT": env.slot,
        "STREAM_PUBLICATION": env.slot,
        "SIMULATE_RATE": "20",
        # No Airflow in this stack: the stream has no one to tell about its changes.
        "STREAM_NOTIFY_AIRFLOW": "0",
    }
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    st = stack.stack_settings()
    stack_id = uuid.uuid4().hex
    supervisor = stack.start_supervisor(
        st, SERVICES, {**isolated_environment(), **settings, stack.STACK_ID_VAR: stack_id}
    )
    st.record_file.write_text(f'{{"stack_id": "{stack_id}", "services": ["stream", "simulator"]}}\n')
    try:

        def running() -> dict | None:
            info = stack.process_info(st)
            ok = len(info) == 2 and all(i["state"] == "RUNNING" for i in info.values())
            return info if ok and all(stack.service_tree(st, s) for s in SERVICES) else None

        before = wait_for(running, "both services RUNNING", timeout=60, proc=supervisor)
        wait_for(lambda: stack.stream_health(st)[0], "the stream to be healthy", timeout=60)
        applied = env.last_batch_id()
        wait_for(lambda: env.batches_after(applied), "orders to flow through the stream", timeout=60)

        old = before["stream"]["pid"]
        os.kill(old, signal.SIGKILL)
        killed = time.monotonic()

        def restarted() -> bool:
            tree = stack.service_tree(st, "stream")
            return bool(tree) and tree[0].pid != old and stack.stream_health(st)[0]

        wait_for(restarted, "the stream to run again and be healthy", timeout=60, proc=supervisor)
        back = time.monotonic() - killed
        # supervisord calls it RUNNING once it has stayed up START_SECONDS.
        after = wait_for(
            lambda: (i := running()) and i["stream"]["pid"] != old and i,
            "supervisord to report the stream RUNNING again",
            timeout=60,
            proc=supervisor,
        )
        applied = env.last_batch_id()
        wait_for(lambda: env.batches_after(applied), "orders to flow again", timeout=60)
        assert after["stream"]["restarts"] == 1
        assert after["simulator"]["pid"] == before["simulator"]["pid"] and after["simulator"]["restarts"] == 0

        status = subprocess.run(
            [sys.executable, "-m", "apparel.stack", "status"],
            env={**isolated_environment(), **settings},
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        cells = [[c.strip() for c in line.split("│")[1:-1]] for line in status.stdout.splitlines()]
        rows = {row[0]: row for row in cells if row}
        # service, state, uptime, restarts
        assert rows["stream"][1:4:2] == ["RUNNING", "1"], status.stdout
        assert rows["simulator"][1:4:2] == ["RUNNING", "0"], status.stdout
        supervisord_mb = psutil.Process(supervisor.pid).memory_info().rss / 2**20
        print(f"stream running and healthy again {back:.1f} s after SIGKILL")
        print(f"supervisord RSS {supervisord_mb:.0f} MB\n{status.stdout}")
    finally:
        stack.down()
    assert supervisor.wait(10) is not None and not stack.stack_processes(stack_id)
    # What the last moments left, then the shop and the warehouse row by row.
    env.run()
    env.assert_mirrored()
    assert env.warehouse(f"select count(*) from {MIRROR_SCHEMA}._dead_letters") == [(0,)]
