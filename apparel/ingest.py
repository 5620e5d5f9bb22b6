"""The ingest DAG's tasks, generated from the source registry.

Kept out of the DAG file so that file stays a few lines and parses fast:
nothing here touches the database or the files until a task runs.
"""

from __future__ import annotations

import logging
import time

from airflow.sdk import Asset, Param, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from apparel.config import load_settings
from apparel.sources import SOURCES, Source

log = logging.getLogger(__name__)
# The end-of-run table goes to its own logger: Airflow's task log shows it, `apparel dags-test` does not
# repeat it on the console, where `apparel report` prints it as a table.
summary_log = logging.getLogger(f"{__name__}.summary")

PROGRESS_EVERY_SECONDS = 5.0


def raw_asset(source: Source) -> Asset:
    return Asset(name=source.qualified_table, uri=source.asset_uri)


RAW_ASSETS: list[Asset] = [raw_asset(s) for s in SOURCES]
# The raw layer as a whole: updated once per ingest run, after every load has finished, when at least
# one table changed. `transform` is scheduled on it, so dbt never starts on a half-ingested warehouse
# (as it would on the first table's event) and runs once per ingest, not once per table.
RAW_LAYER = Asset(name="raw", uri="postgres://warehouse/raw")


def ingest_params() -> dict[str, Param]:
    return {
        "force": Param(
            False, type="boolean", description="Load files even when their checksum is unchanged."
        ),
        "dataset_dir": Param(
            None,
            type=["null", "string"],
            description="Folder of the extracts (default: DATASET_DIR); it must lie under DATASET_DIR "
            "or a folder of DATASET_ALLOWED_DIRS.",
        ),
    }


def _progress_logger(source: Source, total: int):
    """Log a line every few seconds during a long COPY: bytes sent and the share of the file."""
    last = [time.monotonic()]

    def report(sent: int) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_SECONDS:
            last[0] = now
            share = f" ({100 * sent / total:.0f}% of the file)" if source.format == "csv" and total else ""
            log.info("%s: %.1f MB sent to COPY%s", source.file, sent / 1e6, share)

    return report


def run_load(source_name: str, force: bool, dataset_dir: str | None, run_id: str | None) -> dict:
    """Load one source; a skip (unchanged file) emits no asset event, a bad file fails the task."""
    from apparel.dataset_dirs import UnsafePath, checked_dataset_dir, checked_extract
    from apparel.loader import load_source
    from apparel.sources import get_source

    settings = load_settings()
    source = get_source(source_name)
    try:
        folder = checked_dataset_dir(settings, dataset_dir)
        path = checked_extract(folder, source.file)
    except UnsafePath as e:
        raise AirflowFailException(str(e)) from None  # no retry: the same parameter fails again
    size = path.stat().st_size if path.exists() else 0
    result = load_source(
        settings.warehouse_url,
        source,
        folder,
        force=force,
        run_id=run_id,
        on_progress=_progress_logger(source, size),
    )
    if result.status == "skipped":
        raise AirflowSkipException(
            f"{source.file} is unchanged since its last load; run with force=true to reload"
        )
    for warning in result.warnings:
        log.warning("%s: %s", source.file, warning)
    log.info(
        "%s: %s rows into %s in %.2f s (%.0f rows/s)",
        source.file,
        f"{result.rows:,}",
        source.qualified_table,
        result.seconds,
        result.rows / max(result.seconds, 1e-9),
    )
    return {"rows": result.rows, "bytes": result.bytes, "seconds": round(result.seconds, 3)}


# Seconds between the two looks at a file's size and mtime before `watch_dataset` counts it (a file
# still being copied into DATASET_DIR moves in between). DATASET_STABLE_SECONDS changes it.
DEFAULT_STABLE_SECONDS = 10


def find_changed_extracts() -> list[str]:
    """For `watch_dataset`: the sources whose file changed and is not being written any more; skips
    the run (no trigger) when there is none."""
    from apparel.loader import changed_sources

    settings = load_settings()
    stable = float(settings.get("DATASET_STABLE_SECONDS", str(DEFAULT_STABLE_SECONDS)))
    changed = changed_sources(settings.warehouse_url, settings.dataset_dir, stable_seconds=stable)
    if not changed:
        raise AirflowSkipException(f"no new or changed extract in {settings.dataset_dir}")
    log.info("new or changed extracts: %s", ", ".join(changed))
    return changed


def finish_ingest(run_id: str | None, dataset_dir: str | None = None) -> None:
    """Check foreign keys across the raw tables, print the summary, fail if any load of this run failed
    (a refused `dataset_dir` too: its loads failed before they could log anything)."""
    from apparel.dataset_dirs import UnsafePath, checked_dataset_dir
    from apparel.loader import check_foreign_keys
    from apparel.report import failed_loads, loads_in_run, raw_tables

    settings = load_settings()
    try:
        checked_dataset_dir(settings, dataset_dir)
    except UnsafePath as e:
        raise AirflowFailException(str(e)) from None
    for orphans in check_foreign_keys(settings.warehouse_url):
        log.warning("orphans: %s", orphans)
    for row in raw_tables(settings.warehouse_url):
        summary_log.info(
            "%-26s %12s rows %14s bytes  last load %s (%.2f s, %s)",
            row.table,
            f"{row.rows:,}",
            f"{row.bytes:,}",
            row.loaded_at,
            row.seconds,
            row.status,
        )
    failures = failed_loads(settings.warehouse_url, run_id) if run_id else []
    if failures:
        raise RuntimeError("loads failed in this run:\n" + "\n".join(failures))
    if run_id and not loads_in_run(settings.warehouse_url, run_id):
        raise AirflowSkipException("no table changed in this run: the raw layer's asset is not updated")


def build_ingest_tasks() -> None:
    """Create one load task per registry source, all feeding the final foreign-key check."""
    loads = []
    for source in SOURCES:

        @task(task_id=f"load_{source.name}", outlets=[raw_asset(source)], doc_md=source.description)
        def load(source_name: str = source.name, params=None, run_id=None) -> dict:
            return run_load(source_name, bool(params["force"]), params["dataset_dir"], run_id)

        loads.append(load())

    # all_done: the check runs and reports even when some loads failed, then fails the run for them.
    @task(task_id="check_foreign_keys", trigger_rule="all_done", outlets=[RAW_LAYER])
    def check(params=None, run_id=None) -> None:
        finish_ingest(run_id, params["dataset_dir"])

    loads >> check()
