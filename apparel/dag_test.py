"""Run a DAG with `airflow dags test` and show its progress in a few readable lines.

Airflow's own output (several hundred wide log lines a run) goes to a log file
in the state folder; the console gets each task as it starts, our library's
messages, errors, and the run's final state.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

from rich.console import Console

from apparel.airflow_env import AIRFLOW, airflow_env
from apparel.config import load_settings

TIMESTAMPED = re.compile(r"^\d{4}-\d\d-\d\dT")
LINE = re.compile(r"^\S+Z \[(?P<level>\w+)\s*\] (?P<msg>.*?)\s+\[(?P<logger>[\w.]+)\]")
EXCEPTION = re.compile(r"^[\w.]*(Error|Exception|Failed): ")
TASK_START = re.compile(r"\[DAG TEST\] starting task_id=(\S+)")
FINISHED = re.compile(r"DagRun Finished: .*?run_duration=([\d.]+), state=(\w+)")
SHOWN_LOGGERS = ("apparel", "cosmos")
# Cosmos says a lot at info level for every task (cloning, partial parse): only its warnings are shown.
QUIET_LOGGERS = ("cosmos",)
HIDDEN_LOGGERS = ("apparel.ingest.summary",)


def dags_test(dag_id: str, conf: str | None = None) -> int:
    console = Console(width=None if sys.stdout.isatty() else 160)
    settings = load_settings()
    log_file = settings.state_dir / "logs" / f"{dag_id}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(AIRFLOW), "dags", "test", dag_id] + (["-c", conf] if conf else [])
    console.print(f"[bold]airflow dags test {dag_id}[/bold]  (full log: {log_file})")
    started = time.monotonic()
    state = "unknown"
    in_exception = False
    popen_args = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True, "bufsize": 1}
    with (
        log_file.open("w") as out,
        subprocess.Popen(cmd, env=airflow_env(settings), **popen_args) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if in_exception and not TIMESTAMPED.match(line):
                # The lines after an exception's first line carry the rest of its message (dbt's errors).
                console.print(f"      {line.rstrip()}", style="red", markup=False, highlight=False)
                continue
            in_exception = False
            if m := TASK_START.search(line):
                console.print(f"  [cyan]▸ {m.group(1)}[/cyan]  {time.monotonic() - started:6.1f}s")
            elif m := FINISHED.search(line):
                state = m.group(2)
            elif (
                (m := LINE.match(line))
                and m.group("logger").startswith(SHOWN_LOGGERS)
                and m.group("logger") not in HIDDEN_LOGGERS
                and not (m.group("logger").startswith(QUIET_LOGGERS) and m.group("level") == "info")
            ):
                style = {"warning": "yellow", "error": "red"}.get(m.group("level"), "")
                console.print(f"      {m.group('msg')}", style=style, markup=False, highlight=False)
            elif EXCEPTION.match(line):
                in_exception = True
                console.print(f"      {line.rstrip()}", style="red", markup=False, highlight=False)
    ok = proc.returncode == 0 and state == "success"
    colour = "green" if ok else "red"
    console.print(f"[{colour}]{dag_id}: {state} in {time.monotonic() - started:.1f}s[/{colour}]")
    return 0 if ok else 1
