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
from pathlib import Path

from rich.console import Console

from apparel.config import load_settings

LINE = re.compile(r"^\S+Z \[(?P<level>\w+)\s*\] (?P<msg>.*?)\s+\[(?P<logger>[\w.]+)\]")
EXCEPTION = re.compile(r"^[\w.]*(Error|Exception|Failed): ")
TASK_START = re.compile(r"\[DAG TEST\] starting task_id=(\S+)")
FINISHED = re.compile(r"DagRun Finished: .*?run_duration=([\d.]+), state=(\w+)")
SHOWN_LOGGERS = ("apparel", "cosmos")
HIDDEN_LOGGERS = ("apparel.ingest.summary",)


def dags_test(dag_id: str, conf: str | None = None) -> int:
    console = Console(width=None if sys.stdout.isatty() else 160)
    settings = load_settings()
    log_file = settings.state_dir / "logs" / f"{dag_id}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    airflow = Path(sys.executable).parent / "airflow"
    cmd = [str(airflow), "dags", "test", dag_id] + (["-c", conf] if conf else [])
    console.print(f"[bold]airflow dags test {dag_id}[/bold]  (full log: {log_file})")
    started = time.monotonic()
    state = "unknown"
    with (
        log_file.open("w") as out,
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if m := TASK_START.search(line):
                console.print(f"  [cyan]▸ {m.group(1)}[/cyan]  {time.monotonic() - started:6.1f}s")
            elif m := FINISHED.search(line):
                state = m.group(2)
            elif (
                (m := LINE.match(line))
                and m.group("logger").startswith(SHOWN_LOGGERS)
                and m.group("logger") not in HIDDEN_LOGGERS
            ):
                style = {"warning": "yellow", "error": "red"}.get(m.group("level"), "")
                console.print(f"      {m.group('msg')}", style=style, markup=False, highlight=False)
            elif EXCEPTION.match(line):
                console.print(f"      {line.rstrip()}", style="red", markup=False, highlight=False)
    ok = proc.returncode == 0 and state == "success"
    colour = "green" if ok else "red"
    console.print(f"[{colour}]{dag_id}: {state} in {time.monotonic() - started:.1f}s[/{colour}]")
    return 0 if ok else 1
