"""Ingestion benchmark: our COPY loader against `psql \\copy` and `pandas.DataFrame.to_sql`.

`make bench-ingest SCALE=N` generates (or reuses) the scale N extracts in `bench-data/scale-N/` and
loads every source three ways into a throw-away database, then prints rows/s and MB/s side by side:

* ours:   `load_source(..., force=True)` in a child process of its own, which reports its elapsed
          seconds and its peak RSS (VmHWM), so the memory figure is the loader's alone;
* \\copy:  the same data as CSV (the CSV extracts themselves; the other formats converted once,
          untimed) run through one `psql` invocation: create the table with the same column types,
          `\\copy` it in, add the primary key afterwards as our loader does. The physical limit;
* to_sql: pandas reads the original file and writes it with `to_sql(method="multi", chunksize=1000)`,
          what a typical project does; capped at `--tosql-max-rows` rows per source.

A second section, "format throughput", judges the formats on equal terms: the real extracts'
Excel and JSON sources are reference tables of a few hundred rows at every scale, so their rows/s
measures only the per-load overhead. The scale's first `--format-rows` `order_details` rows are
written once (untimed, into `bench-data/scale-N/formats/`) as each of the four formats, laid out as
the real extracts are (xlsx: one sheet, header in row 1; Parquet: pandas `to_parquet`; JSON: pandas'
default "columns" orient; CSV), and each file is loaded by our loader and by pandas + to_sql; the
CSV also by `\\copy`. The "every format vs to_sql" goal is judged on this section.

To keep the order of the runs from deciding the result, an untimed `\\copy` of the largest CSV
first makes the new cluster create its WAL segments, and a CHECKPOINT precedes every timed run.
The results also go to `bench-data/scale-N/bench-result.json`; a later run at another scale
compares its peak RSS with the scale 10 run's.

The database is never the user's warehouse database: an embedded server of its own in
`STATE_DIR/bench-pg` (destroyed afterwards unless `--keep`), or, when WAREHOUSE_URL is set, a
database `apparel_bench` on that server (dropped afterwards unless `--keep`). `--database` and
`--data-dir` choose another database name and extracts folder, so that runs sharing a server or a
checkout (the test suite's) do not use, or drop, each other's.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from apparel.config import PROJECT_ROOT, Settings, load_settings, redact_url, with_database
from apparel.embedded_pg import EmbeddedServer, bin_dir, free_port
from apparel.sources import RAW_SCHEMA, SOURCES, Format, Source, get_source

# Not __name__: under `python -m` that is "__main__".
log = logging.getLogger("apparel.bench_ingest")

BENCH_DATABASE = "apparel_bench"
COPY_SCHEMA = "bench_copy"
TOSQL_SCHEMA = "bench_tosql"
WARMUP_SCHEMA = "bench_warmup"
DEFAULT_SEED = 42
DEFAULT_TOSQL_MAX_ROWS = 200_000
MB = 1024 * 1024
GOAL_COPY_RATIO = 0.7
GOAL_TOSQL_SPEEDUP = 10.0
GOAL_RSS_GROWTH = 2.0
RESULT_FILE = "bench-result.json"
SMALL_FORMAT_ROWS = 10_000
# The format throughput section: the big source's rows, rewritten as every format.
FORMAT_SOURCE = "order_details"
FORMATS_DIR = "formats"
FORMATS_MANIFEST = "manifest.json"
FORMAT_SHEET = "Sheet1"
DEFAULT_FORMAT_ROWS = 200_000
XLSX_MAX_DATA_ROWS = 1_048_575  # an xlsx sheet holds 1,048,576 rows, one of them the header
FORMAT_SUFFIXES = {Format.EXCEL: "xlsx", Format.PARQUET: "parquet", Format.JSON: "json", Format.CSV: "csv"}
OVERHEAD_MARK = "\u2020"  # dagger: a to_sql ratio of a tiny source, per-load overhead rather than throughput

# The child that runs our loader: only the loader's own imports, so its memory is the loader's.
# Peak RSS is VmHWM, not ru_maxrss: on Linux a child's ru_maxrss starts at the parent's peak (the
# kernel carries the old address space's high-water mark over exec), which would report this
# process's pandas instead of the loader. ru_maxrss (KiB) is the fallback where /proc is missing.
CHILD_SCRIPT = """
import json, resource, sys, time
from pathlib import Path
from dataclasses import replace
from apparel.loader import load_source
from apparel.sources import Format, get_source

def peak_kib():
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

url, name, data_dir, fmt, file, sheet = sys.argv[1:7]
source = replace(get_source(name), format=Format(fmt), file=file, sheet=sheet or None)
baseline = peak_kib()
started = time.perf_counter()
result = load_source(url, source, Path(data_dir), force=True)
seconds = time.perf_counter() - started
report = {"rows": result.rows, "seconds": seconds, "peak_rss_kb": peak_kib(), "baseline_rss_kb": baseline}
print(json.dumps(report))
"""


@dataclass
class Timing:
    rows: int
    bytes: float
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else math.inf

    @property
    def mb_per_s(self) -> float:
        return self.bytes / MB / self.seconds if self.seconds > 0 else math.inf


@dataclass
class FormatResult:
    """One format of the format throughput section: the same rows, another file."""

    format: Format
    file: str
    rows: int
    file_bytes: int
    ours: Timing
    peak_rss_kb: int
    baseline_rss_kb: int
    tosql: Timing | None = None

    @property
    def tosql_sampled(self) -> bool:
        return self.tosql is not None and self.tosql.rows < self.rows


@dataclass
class FormatSection:
    rows: int
    folder: Path
    results: list[FormatResult]
    copy: Timing  # psql \copy of the CSV file


@dataclass
class SourceResult:
    source: Source
    rows: int
    file_bytes: int
    ours: Timing
    peak_rss_kb: int
    baseline_rss_kb: int
    copy: Timing
    tosql: Timing | None = None

    @property
    def tosql_sampled(self) -> bool:
        return self.tosql is not None and self.tosql.rows < self.rows


def total(timings: list[Timing]) -> Timing:
    return Timing(
        sum(t.rows for t in timings), sum(t.bytes for t in timings), sum(t.seconds for t in timings)
    )


# --- data ------------------------------------------------------------------------------------------


def data_dir_for(scale: int, seed: int) -> Path:
    name = f"scale-{scale}" if seed == DEFAULT_SEED else f"scale-{scale}-seed-{seed}"
    return PROJECT_ROOT / "bench-data" / name


def ensure_data(scale: int, seed: int, out: Path | None = None) -> Path:
    """The scale's extracts in `out` (default: `data_dir_for`); generated only when a file is missing
    (generation is deterministic)."""
    from apparel.generate import FILES, generate

    out = out or data_dir_for(scale, seed)
    if all((out / f).is_file() for f in FILES):
        log.info("reusing the scale %d extracts in %s", scale, out)
    else:
        log.info("generating the scale %d extracts into %s", scale, out)
        generate(out, scale=scale, seed=seed)
    return out


def format_source(fmt: Format) -> Source:
    """`order_details` as if its extract were in `fmt`: same table, columns and key, another file."""
    base = get_source(FORMAT_SOURCE)
    return replace(
        base,
        format=fmt,
        file=f"{base.name}.{FORMAT_SUFFIXES[fmt]}",
        sheet=FORMAT_SHEET if fmt == Format.EXCEL else None,
    )


def ensure_format_files(data_dir: Path, max_rows: int) -> tuple[Path, int]:
    """The first `max_rows` rows of the scale's `order_details` in each format (untimed).

    Written once into `data_dir/formats/` and reused while the manifest (the original's size and
    mtime, `max_rows`) still matches; returns the folder and the rows each file holds.
    """
    import pandas as pd

    original = data_dir / get_source(FORMAT_SOURCE).file
    out = data_dir / FORMATS_DIR
    manifest = out / FORMATS_MANIFEST
    stat = original.stat()
    stamp = {
        "source": original.name,
        "bytes": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "max_rows": max_rows,
    }
    files = [out / format_source(fmt).file for fmt in Format]
    try:
        recorded = json.loads(manifest.read_text())
        if recorded["stamp"] == stamp and all(f.is_file() for f in files):
            log.info("reusing the format files in %s (%d rows each)", out, recorded["rows"])
            return out, int(recorded["rows"])
    except (OSError, ValueError, KeyError, TypeError):
        pass

    log.info("writing the first %d %s rows as every format into %s", max_rows, FORMAT_SOURCE, out)
    out.mkdir(parents=True, exist_ok=True)
    manifest.unlink(missing_ok=True)
    frame = pd.read_csv(original, nrows=max_rows)
    for fmt in Format:
        target = out / format_source(fmt).file
        tmp = target.with_name(target.name + ".tmp")
        started = time.perf_counter()
        if fmt == Format.EXCEL:
            _write_big_xlsx(tmp, frame)
        elif fmt == Format.PARQUET:
            frame.to_parquet(tmp, index=False)
        elif fmt == Format.JSON:  # pandas' default orient, "columns", as the real extracts
            tmp.write_bytes(frame.to_json().encode("utf-8"))
        else:
            frame.to_csv(tmp, index=False)
        os.replace(tmp, target)
        log.info(
            "  %s: %.1f MB in %.1f s", target.name, target.stat().st_size / MB, time.perf_counter() - started
        )
    manifest.write_text(json.dumps({"stamp": stamp, "rows": len(frame)}, indent=2) + "\n")
    return out, len(frame)


def _write_big_xlsx(path: Path, frame) -> None:
    """One plain sheet, header in row 1, as the real Excel extracts; constant_memory streams the rows."""
    import xlsxwriter

    workbook = xlsxwriter.Workbook(str(path), {"constant_memory": True})
    try:
        worksheet = workbook.add_worksheet(FORMAT_SHEET)
        worksheet.write_row(0, 0, list(frame.columns))
        # itertuples yields Python scalars, which xlsxwriter writes as numbers.
        for r, row in enumerate(frame.itertuples(index=False, name=None), start=1):
            worksheet.write_row(r, 0, row)
    finally:
        workbook.close()


# --- database --------------------------------------------------------------------------------------


def _bench_server(settings: Settings, folder: str) -> EmbeddedServer:
    """The bench cluster; a kept one (`--keep`) that still runs is reused on its port."""
    from apparel.roles import SUPERUSER_PASSWORD, ensure_role_secrets

    # The same superuser password as the warehouse's (from .env), so a kept cluster is reached again.
    password = ensure_role_secrets().get(SUPERUSER_PASSWORD)
    data_dir = settings.state_dir / folder
    pid_file = data_dir / "postmaster.pid"
    if pid_file.exists():
        lines = pid_file.read_text().splitlines()
        if len(lines) > 3 and lines[3].strip().isdigit():
            server = EmbeddedServer(data_dir, int(lines[3]), password)
            if server.is_running():
                return server
    return EmbeddedServer(data_dir, free_port(), password)


@contextmanager
def bench_database(
    settings: Settings,
    keep: bool,
    *,
    folder: str = "bench-pg",
    database: str = BENCH_DATABASE,
    schemas: tuple[str, ...] = (COPY_SCHEMA, TOSQL_SCHEMA),
) -> Iterator[str]:
    """Yield the URL of an empty benchmark database (with `schemas`); clean up afterwards unless `keep`.

    Never the user's warehouse database: an embedded server in STATE_DIR/<folder> (each benchmark its
    own, so one cannot stop the other's midway), or `database` on the WAREHOUSE_URL server.
    """
    drop = sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(database))
    server: EmbeddedServer | None = None
    if settings.embedded:
        server = _bench_server(settings, folder)
        log.info("starting the bench PostgreSQL in %s on port %d", server.data_dir, server.port)
        server.start()
        admin_url = server.url("postgres")
    else:
        admin_url = settings.warehouse_url
        log.info("using database %s on the WAREHOUSE_URL server", database)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(drop)
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(database)))
    url = with_database(admin_url, database)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            for schema in schemas:
                conn.execute(sql.SQL("create schema {}").format(sql.Identifier(schema)))
        yield url
    finally:
        if keep:
            log.info("kept: psql %s", redact_url(url, mask=""))
        elif server is not None:
            log.info("destroying the bench PostgreSQL in %s", server.data_dir)
            server.destroy()
        else:
            log.info("dropping database %s", database)
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(drop)


def checkpoint(url: str) -> None:
    """Flush dirty buffers before a timed load, so one method does not pay for the previous one's writes."""
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("checkpoint")
    except psycopg.errors.InsufficientPrivilege:
        pass


# --- the three methods -----------------------------------------------------------------------------


def run_ours(url: str, source: Source, data_dir: Path) -> dict[str, Any]:
    """`load_source` in a child process; returns its JSON report (rows, seconds, peak_rss_kb, ...).

    The child rebuilds `source` from its registry name plus format, file and sheet, so a registry
    source with another format and file (the format throughput section) loads into the same table.
    """
    args = [url, source.name, str(data_dir), source.format.value, source.file, source.sheet or ""]
    proc = subprocess.run(
        [sys.executable, "-c", CHILD_SCRIPT, *args],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"our loader failed on {source.name}:\n{proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def read_with_pandas(source: Source, path: Path, max_rows: int | None = None):
    """The original file as a typical project reads it (CSV: only the first `max_rows` rows)."""
    import pandas as pd

    if source.format == Format.CSV:
        return pd.read_csv(path, nrows=max_rows)
    if source.format == Format.EXCEL:
        frame = pd.read_excel(path, sheet_name=source.sheet, engine="calamine")
    elif source.format == Format.PARQUET:
        frame = pd.read_parquet(path)
    else:
        frame = pd.read_json(path)
    return frame if max_rows is None else frame.head(max_rows)


def copy_csv_for(source: Source, data_dir: Path, tmp_dir: Path) -> tuple[Path, list[str]]:
    """The source as a CSV with a header for `\\copy`, and its columns in file order (untimed)."""
    import csv

    path = data_dir / source.file
    if source.format == Format.CSV:
        with path.open(newline="", encoding="utf-8-sig") as f:
            return path, [c.strip() for c in next(csv.reader(f))]
    frame = read_with_pandas(source, path)[source.column_names]
    for column in source.columns:  # spreadsheets store integers as floats: 12.0 -> 12
        if column.pg_type in ("integer", "bigint") and frame[column.name].dtype.kind == "f":
            frame[column.name] = frame[column.name].astype("Int64")
    out = tmp_dir / f"{source.table}.csv"
    frame.to_csv(out, index=False)
    return out, source.column_names


def run_copy(
    url: str, source: Source, csv_path: Path, columns: list[str], schema: str = COPY_SCHEMA
) -> float:
    """One psql run: create the table, \\copy the CSV in, add the primary key. Returns its seconds."""

    def ident(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    table = f"{ident(schema)}.{ident(source.table)}"
    definition = ", ".join(
        f"{ident(c.name)} {c.pg_type}{' not null' if c.name == source.primary_key else ''}"
        for c in source.columns
    )
    file_literal = "'" + str(csv_path).replace("'", "''") + "'"
    commands = [
        f"drop table if exists {table}",
        f"create table {table} ({definition})",
        f"\\copy {table} ({', '.join(map(ident, columns))}) from {file_literal}"
        " with (format csv, header true)",
        f"alter table {table} add primary key ({ident(source.primary_key)})",
    ]
    args = [str(bin_dir() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url]
    for command in commands:
        args += ["-c", command]
    started = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"psql \\copy failed on {source.name}:\n{proc.stderr.strip()}")
    return seconds


def _tosql_engine(url: str):
    from sqlalchemy import create_engine

    engine = create_engine(_sqlalchemy_url(url))
    with engine.connect():  # open the pooled connection before the first timing
        pass
    return engine


def run_tosql(engine, source: Source, data_dir: Path, max_rows: int | None) -> tuple[int, float]:
    """pandas reads the file and writes it with to_sql; returns (rows written, seconds incl. the read)."""
    started = time.perf_counter()
    frame = read_with_pandas(source, data_dir / source.file, max_rows)
    frame.to_sql(
        source.table,
        engine,
        schema=TOSQL_SCHEMA,
        if_exists="replace",
        index=False,
        method="multi",
        chunksize=1000,
    )
    return len(frame), time.perf_counter() - started


def warm_up(url: str, data_dir: Path) -> None:
    """One untimed \\copy of the largest CSV, then drop it.

    A new cluster has to create (and zero-fill) its WAL segments on the first big write; later
    writes recycle them. Without this, whichever method runs first on the big sources pays for it.
    """
    source = max(
        (s for s in SOURCES if s.format == Format.CSV), key=lambda s: (data_dir / s.file).stat().st_size
    )
    log.info("warm-up: untimed \\copy of %s", source.file)
    path, columns = copy_csv_for(source, data_dir, data_dir)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("create schema {}").format(sql.Identifier(WARMUP_SCHEMA)))
    run_copy(url, source, path, columns, schema=WARMUP_SCHEMA)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("drop schema {} cascade").format(sql.Identifier(WARMUP_SCHEMA)))


def _count(url: str, schema: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        query = sql.SQL("select count(*) from {}").format(sql.Identifier(schema, table))
        return conn.execute(query).fetchone()[0]


def _sqlalchemy_url(url: str) -> str:
    return "postgresql+psycopg://" + url.split("://", 1)[1]


def run_benchmark(
    url: str, data_dir: Path, tosql_max_rows: int | None, skip_tosql: bool
) -> list[SourceResult]:
    results: list[SourceResult] = []
    engine = None if skip_tosql else _tosql_engine(url)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
            warm_up(url, data_dir)
            for source in SOURCES:
                file_bytes = (data_dir / source.file).stat().st_size

                checkpoint(url)
                log.info("%s: our loader", source.name)
                report = run_ours(url, source, data_dir)
                rows = report["rows"]
                result = SourceResult(
                    source,
                    rows,
                    file_bytes,
                    ours=Timing(rows, file_bytes, report["seconds"]),
                    peak_rss_kb=report["peak_rss_kb"],
                    baseline_rss_kb=report["baseline_rss_kb"],
                    copy=Timing(rows, file_bytes, math.nan),
                )

                csv_path, columns = copy_csv_for(source, data_dir, Path(tmp))
                checkpoint(url)
                log.info("%s: psql \\copy", source.name)
                result.copy.seconds = run_copy(url, source, csv_path, columns)
                copied = _count(url, COPY_SCHEMA, source.table)
                if copied != rows:
                    raise RuntimeError(f"{source.name}: \\copy loaded {copied} rows, our loader {rows}")

                if engine is not None:
                    checkpoint(url)
                    log.info("%s: pandas to_sql", source.name)
                    sample, seconds = run_tosql(engine, source, data_dir, tosql_max_rows)
                    result.tosql = Timing(sample, file_bytes * sample / rows, seconds)
                results.append(result)
    finally:
        if engine is not None:
            engine.dispose()
    return results


def run_tosql_format(
    engine, source: Source, folder: Path, file_rows: int, max_rows: int | None
) -> tuple[int, float]:
    """Like `run_tosql`, for a format file: (rows written, seconds).

    CSV reads only the first `max_rows` rows; the other formats have to read the whole file, so when
    to_sql is capped their read time is prorated to the rows written (the write is timed as is).
    """
    started = time.perf_counter()
    frame = read_with_pandas(source, folder / source.file, max_rows)
    read_seconds = time.perf_counter() - started
    if source.format != Format.CSV and len(frame) < file_rows:
        read_seconds *= len(frame) / file_rows
    started = time.perf_counter()
    frame.to_sql(
        source.table,
        engine,
        schema=TOSQL_SCHEMA,
        if_exists="replace",
        index=False,
        method="multi",
        chunksize=1000,
    )
    return len(frame), read_seconds + time.perf_counter() - started


def _table_fingerprint(url: str, source: Source) -> tuple[int, str]:
    """Row count and an md5 over the registry columns in key order: every format must load the same data."""
    columns = sql.SQL(", ").join(map(sql.Identifier, source.column_names))
    query = sql.SQL("select count(*), md5(string_agg(row({c})::text, ',' order by {k})) from {t}").format(
        c=columns, k=sql.Identifier(source.primary_key), t=sql.Identifier(RAW_SCHEMA, source.table)
    )
    with psycopg.connect(url) as conn:
        count, digest = conn.execute(query).fetchone()
    return count, digest


def run_format_benchmark(
    url: str, folder: Path, rows: int, tosql_max_rows: int | None, skip_tosql: bool
) -> FormatSection:
    """Each format file through our loader (into raw.order_details) and to_sql; the CSV also through \\copy.

    Runs after `run_benchmark`, so the cluster's WAL segments exist already. Every format has to load
    the same data: the loaded table's md5 is compared across the formats.
    """
    engine = None if skip_tosql else _tosql_engine(url)
    results: list[FormatResult] = []
    fingerprints: dict[Format, tuple[int, str]] = {}
    try:
        for fmt in Format:
            source = format_source(fmt)
            file_bytes = (folder / source.file).stat().st_size

            # A first load, as \copy's is: a load into the existing table would merge into it instead.
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("drop table if exists {}").format(sql.Identifier(RAW_SCHEMA, source.table))
                )
            checkpoint(url)
            log.info("format %s: our loader on %s", fmt.value, source.file)
            report = run_ours(url, source, folder)
            if report["rows"] != rows:
                raise RuntimeError(f"{source.file}: our loader loaded {report['rows']} rows, expected {rows}")
            fingerprints[fmt] = _table_fingerprint(url, source)
            result = FormatResult(
                fmt,
                source.file,
                rows,
                file_bytes,
                ours=Timing(rows, file_bytes, report["seconds"]),
                peak_rss_kb=report["peak_rss_kb"],
                baseline_rss_kb=report["baseline_rss_kb"],
            )
            if engine is not None:
                checkpoint(url)
                log.info("format %s: pandas to_sql", fmt.value)
                sample, seconds = run_tosql_format(engine, source, folder, rows, tosql_max_rows)
                result.tosql = Timing(sample, file_bytes * sample / rows, seconds)
            results.append(result)
    finally:
        if engine is not None:
            engine.dispose()
    if len(set(fingerprints.values())) > 1:
        detail = ", ".join(f"{fmt.value}: {n} rows md5 {d}" for fmt, (n, d) in fingerprints.items())
        raise RuntimeError(f"the format files did not load the same data ({detail})")

    csv_source = format_source(Format.CSV)
    csv_path = folder / csv_source.file
    checkpoint(url)
    log.info("format csv: psql \\copy")
    seconds = run_copy(url, csv_source, csv_path, csv_source.column_names)
    copied = _count(url, COPY_SCHEMA, csv_source.table)
    if copied != rows:
        raise RuntimeError(f"{csv_source.file}: \\copy loaded {copied} rows, expected {rows}")
    return FormatSection(rows, folder, results, Timing(rows, csv_path.stat().st_size, seconds))


# --- report ----------------------------------------------------------------------------------------


def _num(value: float) -> str:
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def _speedup(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f}x" if value >= 10 else f"{value:.1f}x"


@dataclass
class Summary:
    copy_ratio_csv: float
    speedups: dict[str, float]  # format throughput section: format -> ours rows/s over to_sql rows/s
    extract_speedups: dict[str, float]  # the same over the real extracts, by format (not judged)
    peak_rss_mb: float  # the real extracts' loads
    ours_total: Timing


def _speedups_by_format(results: list[SourceResult]) -> dict[str, float]:
    speedups: dict[str, float] = {}
    for fmt in Format:
        of_format = [r for r in results if r.source.format == fmt and r.tosql is not None]
        if of_format:
            ours = total([r.ours for r in of_format]).rows_per_s
            speedups[fmt.value] = ours / total([r.tosql for r in of_format]).rows_per_s
    return speedups


def summarise(results: list[SourceResult], formats: FormatSection) -> Summary:
    csv_results = [r for r in results if r.source.format == Format.CSV]
    copy_ratio = total([r.copy for r in csv_results]).seconds / total([r.ours for r in csv_results]).seconds
    speedups = {
        r.format.value: r.ours.rows_per_s / r.tosql.rows_per_s for r in formats.results if r.tosql is not None
    }
    peak = max(r.peak_rss_kb for r in results) / 1024
    return Summary(copy_ratio, speedups, _speedups_by_format(results), peak, total([r.ours for r in results]))


def _small_formats(results: list[SourceResult]) -> list[Format]:
    """Formats whose real extracts are tiny (the reference tables never grow)."""
    return [
        fmt
        for fmt in Format
        if 0 < sum(r.rows for r in results if r.source.format == fmt) < SMALL_FORMAT_ROWS
    ]


def render(
    results: list[SourceResult],
    formats: FormatSection,
    summary: Summary,
    scale: int,
    seed: int,
    tosql_max_rows: int | None,
) -> None:
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 160)
    _render_sources(console, results, summary, scale, seed, tosql_max_rows)
    print()
    _render_formats(console, formats, tosql_max_rows)
    print()

    ok = "OK" if summary.copy_ratio_csv >= GOAL_COPY_RATIO else "MISSED"
    print(f"CSV vs \\copy: {summary.copy_ratio_csv:.2f} (goal >= {GOAL_COPY_RATIO}) {ok}")
    if summary.speedups:
        slowest = min(summary.speedups, key=summary.speedups.__getitem__)
        value = summary.speedups[slowest]
        ok = "OK" if value >= GOAL_TOSQL_SPEEDUP else "MISSED"
        each = ", ".join(f"{fmt} {_speedup(v)}" for fmt, v in summary.speedups.items())
        print(
            f"every format vs to_sql ({formats.rows:,} {FORMAT_SOURCE} rows per format):"
            f" slowest {_speedup(value)} ({slowest}; {each}) (goal >= {GOAL_TOSQL_SPEEDUP:.0f}x) {ok}"
        )
        each = ", ".join(f"{fmt} {_speedup(v)}" for fmt, v in summary.extract_speedups.items())
        print(f"  real extracts by format, not judged: {each}")
        if note := _small_format_note(results):
            print(note)
    else:
        print("every format vs to_sql: skipped (--skip-tosql)")
    print(f"peak RSS: {summary.peak_rss_mb:,.0f} MB{_rss_comparison(scale, seed, summary.peak_rss_mb)}")


def _render_sources(
    console, results: list[SourceResult], summary: Summary, scale: int, seed: int, tosql_max_rows: int | None
) -> None:
    from rich.table import Table

    table = Table(title=f"ingest benchmark, scale {scale} (seed {seed})", title_justify="left")
    for header in ("source", "format", "rows", "MB"):
        table.add_column(header, justify="left" if header in ("source", "format") else "right")
    for method in ("ours", "\\copy", "to_sql"):
        table.add_column(f"{method}\nrows/s", justify="right")
        table.add_column(f"{method}\nMB/s", justify="right")
    for header in ("ours/\n\\copy", "ours/\nto_sql", "ours peak\nRSS MB"):
        table.add_column(header, justify="right")
    small = _small_formats(results)

    def row(label: str, fmt: str, rows: int, nbytes: float, ours: Timing, copy: Timing, tosql, star, rss):
        to_rows = _num(tosql.rows_per_s) + star if tosql else "-"
        to_mb = _num(tosql.mb_per_s) + star if tosql else "-"
        vs_tosql = ours.rows_per_s / tosql.rows_per_s if tosql else math.nan
        mark = OVERHEAD_MARK if tosql and fmt in small else ""
        table.add_row(
            label,
            fmt,
            f"{rows:,}",
            _num(nbytes / MB),
            _num(ours.rows_per_s),
            _num(ours.mb_per_s),
            _num(copy.rows_per_s),
            _num(copy.mb_per_s),
            to_rows,
            to_mb,
            _ratio(ours.rows_per_s / copy.rows_per_s),
            _speedup(vs_tosql) + mark,
            f"{rss:,.0f}",
            end_section=label == results[-1].source.name,
        )

    for r in results:
        star = "*" if r.tosql_sampled else ""
        row(
            r.source.name,
            r.source.format.value,
            r.rows,
            r.file_bytes,
            r.ours,
            r.copy,
            r.tosql,
            star,
            r.peak_rss_kb / 1024,
        )
    tosqls = [r.tosql for r in results if r.tosql is not None]
    any_sampled = any(r.tosql_sampled for r in results)
    row(
        "TOTAL",
        "",
        sum(r.rows for r in results),
        sum(r.file_bytes for r in results),
        summary.ours_total,
        total([r.copy for r in results]),
        total(tosqls) if tosqls else None,
        "*" if any_sampled else "",
        summary.peak_rss_mb,
    )
    console.print(table)

    notes = [
        "ours: load_source(force=True) in a child process; \\copy: one psql run (create table, \\copy,"
        " add primary key); to_sql: pandas read + to_sql(method='multi', chunksize=1000)."
    ]
    if any_sampled:
        notes.append(f"* to_sql timed on the first {tosql_max_rows:,} rows (MB/s on that share of the file).")
    if tosqls and small:
        notes.append(
            f"{OVERHEAD_MARK} overhead-dominated: the {', '.join(small)} extracts have under"
            f" {SMALL_FORMAT_ROWS:,} rows, so this ratio compares per-load fixed costs, not throughput;"
            " the to_sql goal is judged on the format throughput section."
        )
    for note in notes:
        print(note)


def _render_formats(console, formats: FormatSection, tosql_max_rows: int | None) -> None:
    from rich.table import Table

    table = Table(
        title=f"format throughput: the first {formats.rows:,} {FORMAT_SOURCE} rows as each format",
        title_justify="left",
    )
    table.add_column("format", justify="left")
    table.add_column("file", justify="left")
    for header in (
        "rows",
        "MB",
        "ours\nrows/s",
        "ours\nMB/s",
        "\\copy\nrows/s",
        "to_sql\nrows/s",
        "ours/\n\\copy",
        "ours/\nto_sql",
        "ours peak\nRSS MB",
    ):
        table.add_column(header, justify="right")
    copy = formats.copy
    for r in formats.results:
        star = "*" if r.tosql_sampled else ""
        table.add_row(
            r.format.value,
            r.file,
            f"{r.rows:,}",
            _num(r.file_bytes / MB),
            _num(r.ours.rows_per_s),
            _num(r.ours.mb_per_s),
            _num(copy.rows_per_s) if r.format == Format.CSV else "",
            _num(r.tosql.rows_per_s) + star if r.tosql else "-",
            _ratio(r.ours.rows_per_s / copy.rows_per_s),
            _speedup(r.ours.rows_per_s / r.tosql.rows_per_s) if r.tosql else "-",
            f"{r.peak_rss_kb / 1024:,.0f}",
        )
    console.print(table)
    notes = [
        f"The same rows written once (untimed) per format into {_display_path(formats.folder)}; loaded into"
        f" raw.{FORMAT_SOURCE} by ours and into a table of its own by to_sql (pandas read of that file);"
        " \\copy: the CSV file. ours/\\copy: against the CSV's \\copy, whatever the format."
    ]
    if any(r.tosql_sampled for r in formats.results):
        notes.append(
            f"* to_sql timed on the first {tosql_max_rows:,} rows; for the formats pandas reads whole,"
            " the read time is prorated to that share."
        )
    for note in notes:
        print(note)


def _display_path(path: Path) -> str:
    try:
        return str(path.relative_to(PROJECT_ROOT)) + "/"
    except ValueError:
        return str(path) + "/"


def _small_format_note(results: list[SourceResult]) -> str:
    """Formats with tiny sources (the reference tables never grow): their rows/s is per-load overhead."""
    small = _small_formats(results)
    loads = [r for r in results if r.source.format in small and r.tosql is not None]
    if not loads:
        return ""

    def per_load_ms(timings: list[Timing]) -> str:
        return f"{1000 * sum(t.seconds for t in timings) / len(timings):.0f} ms"

    return (
        f"  note: {', '.join(small)} have under {SMALL_FORMAT_ROWS:,} rows in this run,"
        f" so their rows/s is mostly per-load overhead: ours {per_load_ms([r.ours for r in loads])} per load,"
        f" \\copy {per_load_ms([r.copy for r in loads])}, to_sql {per_load_ms([r.tosql for r in loads])}"
    )


def _rss_comparison(scale: int, seed: int, peak_mb: float) -> str:
    """Compare with the scale 10 run's peak, when one was recorded (the goal: within 2x up to scale 1000)."""
    if scale == 10:
        return f" (goal: within {GOAL_RSS_GROWTH:.0f}x of this at scale 1000)"
    reference = data_dir_for(10, seed) / RESULT_FILE
    try:
        base = json.loads(reference.read_text())["peak_rss_mb"]
    except (OSError, ValueError, KeyError):
        return f" (goal: within {GOAL_RSS_GROWTH:.0f}x of scale 10; no scale 10 result recorded yet)"
    growth = peak_mb / base
    ok = "OK" if growth <= GOAL_RSS_GROWTH else "MISSED"
    return f" ({growth:.2f}x of scale 10's {base:,.0f} MB; goal <= {GOAL_RSS_GROWTH:.0f}x) {ok}"


def _fmt_summary_number(value: float, digits: int) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def summary_line(scale: int, summary: Summary) -> str:
    """The last line; min_tosql_speedup is the format throughput section's slowest format."""
    speedup = min(summary.speedups.values()) if summary.speedups else math.nan
    return (
        f"bench-ingest: scale={scale} rows={summary.ours_total.rows}"
        f" ours_rows_per_s={summary.ours_total.rows_per_s:.0f}"
        f" copy_ratio_csv={summary.copy_ratio_csv:.2f}"
        f" min_tosql_speedup={_fmt_summary_number(speedup, 1)}"
        f" peak_rss_mb={summary.peak_rss_mb:.0f}"
    )


def _save(
    data_dir: Path,
    scale: int,
    seed: int,
    results: list[SourceResult],
    formats: FormatSection,
    summary: Summary,
) -> None:
    record = {
        "scale": scale,
        "seed": seed,
        "peak_rss_mb": summary.peak_rss_mb,
        "copy_ratio_csv": summary.copy_ratio_csv,
        "tosql_speedups": summary.speedups,
        "extract_tosql_speedups": summary.extract_speedups,
        "sources": {
            r.source.name: {
                "rows": r.rows,
                "bytes": r.file_bytes,
                "ours_seconds": r.ours.seconds,
                "copy_seconds": r.copy.seconds,
                "tosql_rows": r.tosql.rows if r.tosql else None,
                "tosql_seconds": r.tosql.seconds if r.tosql else None,
                "peak_rss_kb": r.peak_rss_kb,
                "baseline_rss_kb": r.baseline_rss_kb,
            }
            for r in results
        },
        "formats": {
            "source": FORMAT_SOURCE,
            "rows": formats.rows,
            "copy_csv_seconds": formats.copy.seconds,
            "by_format": {
                r.format.value: {
                    "file": r.file,
                    "bytes": r.file_bytes,
                    "ours_seconds": r.ours.seconds,
                    "tosql_rows": r.tosql.rows if r.tosql else None,
                    "tosql_seconds": r.tosql.seconds if r.tosql else None,
                    "peak_rss_kb": r.peak_rss_kb,
                    "baseline_rss_kb": r.baseline_rss_kb,
                }
                for r in formats.results
            },
        },
    }
    (data_dir / RESULT_FILE).write_text(json.dumps(record, indent=2) + "\n")


# --- entry point -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m apparel.bench_ingest",
        description="Compare our loader with psql \\copy and pandas to_sql on generated extracts.",
    )
    parser.add_argument("--scale", type=int, default=10, help="generator scale (default 10)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="generator seed (default 42)")
    parser.add_argument(
        "--tosql-max-rows",
        type=int,
        default=DEFAULT_TOSQL_MAX_ROWS,
        help="time to_sql on at most this many rows per source (default 200,000; 0: no cap)",
    )
    parser.add_argument(
        "--format-rows",
        type=int,
        default=DEFAULT_FORMAT_ROWS,
        help=f"format throughput section: the first this many {FORMAT_SOURCE} rows as every format"
        f" (default 200,000; at most {XLSX_MAX_DATA_ROWS:,}, an xlsx sheet's limit)",
    )
    parser.add_argument("--skip-tosql", action="store_true", help="leave out the to_sql baseline")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="folder of the scale's extracts, format files and result (default: bench-data/scale-N/)",
    )
    parser.add_argument(
        "--database",
        default=BENCH_DATABASE,
        help=f"name of the bench database on the WAREHOUSE_URL server (default {BENCH_DATABASE})",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the bench server / database afterwards for a look"
    )
    args = parser.parse_args(argv)
    if args.scale < 1:
        parser.error("--scale must be >= 1")
    if args.tosql_max_rows < 0:
        parser.error("--tosql-max-rows must be >= 0")
    if not 1 <= args.format_rows <= XLSX_MAX_DATA_ROWS:
        parser.error(f"--format-rows must be between 1 and {XLSX_MAX_DATA_ROWS:,}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    settings = load_settings()
    data_dir = ensure_data(args.scale, args.seed, args.data_dir)
    format_dir, format_rows = ensure_format_files(data_dir, args.format_rows)
    max_rows = args.tosql_max_rows or None
    with bench_database(settings, args.keep, database=args.database) as url:
        results = run_benchmark(url, data_dir, max_rows, args.skip_tosql)
        formats = run_format_benchmark(url, format_dir, format_rows, max_rows, args.skip_tosql)
    for r in results:
        log.debug("%s: our loader's RSS after imports %d KiB", r.source.name, r.baseline_rss_kb)
    summary = summarise(results, formats)
    render(results, formats, summary, args.scale, args.seed, max_rows)
    _save(data_dir, args.scale, args.seed, results, formats, summary)
    print(summary_line(args.scale, summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
