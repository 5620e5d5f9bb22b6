"""Stream benchmark: the simulator at several rates against a running `apparel stream`.

`make bench-stream` starts two PostgreSQL servers, the shop's (`store`, seeded from the dataset)
and the warehouse, because that is how the stream runs in production: the shop's server decodes
only its own WAL, the warehouse's writes go to another disk log and another process. (With one
server the walsender would also read, and throw away, every row the stream writes.) Then:

1. `apparel stream` runs as a subprocess (its log in STATE_DIR/bench-stream.log);
2. for each rate (default 100, 1,000 and 5,000 orders/s) the simulator writes for `--seconds`,
   then the benchmark waits until the stream has applied everything (a marker row written after
   the simulator must reach the warehouse) and prints the changes applied per second and the lag
   p50 / p95 / p99 of each store transaction (store commit to warehouse commit, from
   `raw_store._stream_batches.lag_ms`), and compares the store and the warehouse row by row;
3. catch-up: the stream is stopped, the simulator writes `--catch-up-seconds` at the top rate, the
   stream is started again and the changes per second of the catch-up are reported.

The last line is `stream bench: rate=<orders/s> applied=<changes/s> p95_ms=<n> lost=<n>
duplicated=<n> different=<n>` for the highest rate that held (p95 under 1 s, nothing lost,
duplicated or different). Figures only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from apparel.bench_ingest import bench_database
from apparel.config import load_settings
from apparel.store import MIRROR_SCHEMA, STORE_TABLES, ensure_store

log = logging.getLogger("apparel.bench_stream")

DEFAULT_RATES = (100, 1000, 5000)
GOAL_P95_MS = 1000.0
SLOT = "apparel_bench"


@dataclass
class Comparison:
    """Store and warehouse compared row by row over the shop's tables."""

    store_rows: int = 0
    lost: int = 0  # in the store, not in the warehouse (or only as a tombstone)
    duplicated: int = 0  # live in the warehouse, not in the store
    different: int = 0  # in both, with different values

    @property
    def exact(self) -> bool:
        return self.lost == self.duplicated == self.different == 0


def _rows(url: str, query: str) -> dict[bytes, bytes]:
    """id -> the row's COPY text line, for an exact comparison of what both servers hold."""
    rows = {}
    with (
        psycopg.connect(url, options="-c DateStyle=ISO -c TimeZone=UTC") as conn,
        conn.cursor().copy(f"copy ({query}) to stdout") as copy,
    ):
        data = b"".join(bytes(block) for block in copy)
    for line in data.splitlines():
        key, _, _ = line.partition(b"\t")
        rows[key] = line
    return rows


def compare_store_warehouse(store_url: str, warehouse_url: str) -> Comparison:
    result = Comparison()
    for table in STORE_TABLES:
        cols = ", ".join(table.column_names)
        store = _rows(store_url, f"select {cols} from {table.name}")
        live = _rows(warehouse_url, f"select {cols} from {table.mirror_table} where _deleted_at is null")
        result.store_rows += len(store)
        result.lost += sum(1 for k in store if k not in live)
        result.duplicated += sum(1 for k in live if k not in store)
        result.different += sum(1 for k, line in store.items() if k in live and live[k] != line)
    return result


@dataclass
class RateResult:
    rate: float
    achieved_orders_s: float
    changes: int
    applied_per_s: float
    p50: float
    p95: float
    p99: float
    batches: int
    catch_up_s: float
    comparison: Comparison

    @property
    def held(self) -> bool:
        return self.p95 < GOAL_P95_MS and self.comparison.exact


class StreamProcess:
    """`apparel stream` as a subprocess, as `make up` runs it."""

    def __init__(self, store_url: str, warehouse_url: str, log_file: Path):
        self.env = {
            **os.environ,
            "STORE_URL": store_url,
            "WAREHOUSE_URL": warehouse_url,
            "STREAM_SLOT": SLOT,
            "STREAM_PUBLICATION": SLOT,
        }
        self.log_file = log_file
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log_file.open("a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "apparel.cli", "stream"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
        self.proc = None

    def check(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"the stream exited; see {self.log_file}")


def _scalar(url: str, query: str, params=None):
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchone()[0]


def wait_for_state(warehouse_url: str, stream: StreamProcess, timeout: float = 300) -> None:
    """Until the stream's initial copy is committed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stream.check()
        with psycopg.connect(warehouse_url) as conn:
            exists = conn.execute("select to_regclass(%s)", (f"{MIRROR_SCHEMA}._stream_state",)).fetchone()[0]
            if (
                exists
                and conn.execute(
                    f"select 1 from {MIRROR_SCHEMA}._stream_state where slot_name = %s", (SLOT,)
                ).fetchone()
            ):
                return
        time.sleep(0.2)
    raise TimeoutError(f"the stream did not finish its initial copy in {timeout:.0f} s")


def wait_caught_up(store_url: str, warehouse_url: str, stream: StreamProcess, timeout: float = 600) -> float:
    """Write a marker (a customer's updated_at) into the store and wait until the warehouse has it.

    Store transactions are applied in commit order, whole batches at a time: once the marker is in
    the warehouse, so is everything committed before it. Returns the time the marker arrived.
    """
    marker = datetime.now(UTC)
    with psycopg.connect(store_url, autocommit=True) as conn:
        customer = conn.execute(
            "update shop_customer set updated_at = %s where id = (select min(id) from shop_customer)"
            " returning id",
            (marker,),
        ).fetchone()[0]
    deadline = time.monotonic() + timeout
    with psycopg.connect(warehouse_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            stream.check()
            seen = conn.execute(
                f"select updated_at from {MIRROR_SCHEMA}.shop_customer where id = %s", (customer,)
            ).fetchone()
            if seen and seen[0] == marker:
                return time.monotonic()
            time.sleep(0.05)
    raise TimeoutError(f"the stream did not catch up within {timeout:.0f} s; see {stream.log_file}")


def _last_batch(warehouse_url: str) -> int:
    return _scalar(warehouse_url, f"select coalesce(max(batch_id), 0) from {MIRROR_SCHEMA}._stream_batches")


def _batch_figures(warehouse_url: str, after: int) -> tuple[int, int, float, float, float]:
    """(batches, changes, p50, p95, p99 of the per-transaction lag) of the batches after `after`."""
    with psycopg.connect(warehouse_url) as conn:
        batches, changes = conn.execute(
            f"select count(*), coalesce(sum(changes), 0) from {MIRROR_SCHEMA}._stream_batches"
            " where batch_id > %s",
            (after,),
        ).fetchone()
        p50, p95, p99 = conn.execute(
            "select percentile_cont(array[0.5, 0.95, 0.99]) within group (order by x)"
            f" from {MIRROR_SCHEMA}._stream_batches, unnest(lag_ms) x where batch_id > %s",
            (after,),
        ).fetchone()[0] or (0.0, 0.0, 0.0)
    return batches, changes, p50, p95, p99


def _simulate(store_url: str, rate: float, seconds: float, seed: int, dataset_dir: Path):
    from apparel.simulate import run_simulator

    return run_simulator(store_url, rate, seconds, seed=seed, dataset_dir=dataset_dir)


def run_rate(
    store_url: str,
    warehouse_url: str,
    stream: StreamProcess,
    rate: float,
    seconds: float,
    seed: int,
    dataset_dir,
) -> RateResult:
    after = _last_batch(warehouse_url)
    started = time.monotonic()
    sim = _simulate(store_url, rate, seconds, seed, dataset_dir)
    sim_done = time.monotonic()
    arrived = wait_caught_up(store_url, warehouse_url, stream)
    batches, changes, p50, p95, p99 = _batch_figures(warehouse_url, after)
    comparison = compare_store_warehouse(store_url, warehouse_url)
    return RateResult(
        rate=rate,
        achieved_orders_s=sim.achieved_rate,
        changes=changes,
        applied_per_s=changes / (arrived - started),
        p50=p50,
        p95=p95,
        p99=p99,
        batches=batches,
        catch_up_s=arrived - sim_done,
        comparison=comparison,
    )


def run_catch_up(
    store_url: str,
    warehouse_url: str,
    stream: StreamProcess,
    rate: float,
    seconds: float,
    seed: int,
    dataset_dir,
) -> tuple[int, float, float, Comparison]:
    """Stop the stream, write for `seconds`, start it again: (changes, catch-up seconds, changes/s)."""
    stream.stop()
    after = _last_batch(warehouse_url)
    _simulate(store_url, rate, seconds, seed, dataset_dir)
    behind = _scalar(
        store_url,
        "select pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint"
        " from pg_replication_slots where slot_name = %s",
        (SLOT,),
    )
    log.info("slot %s is %.1f MB behind; starting the stream", SLOT, behind / 1024 / 1024)
    started = time.monotonic()
    stream.start()
    arrived = wait_caught_up(store_url, warehouse_url, stream)
    _, changes, *_ = _batch_figures(warehouse_url, after)
    seconds_taken = arrived - started
    return changes, seconds_taken, behind / 1024 / 1024, compare_store_warehouse(store_url, warehouse_url)


def print_table(results: list[RateResult]) -> None:
    header = (
        f"{'orders/s':>9} {'achieved':>9} {'changes':>9} {'applied/s':>10} {'p50 ms':>8} {'p95 ms':>8}"
        f" {'p99 ms':>8} {'batches':>8} {'tail s':>7} {'lost':>5} {'dup':>5} {'diff':>5}  held"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        c = r.comparison
        print(
            f"{r.rate:>9,.0f} {r.achieved_orders_s:>9,.0f} {r.changes:>9,} {r.applied_per_s:>10,.0f}"
            f" {r.p50:>8,.0f} {r.p95:>8,.0f} {r.p99:>8,.0f} {r.batches:>8,} {r.catch_up_s:>7.1f}"
            f" {c.lost:>5} {c.duplicated:>5} {c.different:>5}  {'yes' if r.held else 'no'}"
        )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rates", default=",".join(map(str, DEFAULT_RATES)), help="orders/s, comma-separated"
    )
    parser.add_argument("--seconds", type=float, default=20, help="simulator time per rate")
    parser.add_argument("--catch-up-seconds", type=float, default=10, help="0 skips the catch-up scenario")
    parser.add_argument("--catch-up-rate", type=float, default=2000, help="orders/s written while stopped")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--keep", action="store_true", help="keep the servers for a look afterwards")
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]

    settings = load_settings()
    log_file = settings.state_dir / "bench-stream.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.write_text("")
    with (
        bench_database(
            settings, args.keep, folder="bench-stream-store", database="apparel_bench_store", schemas=()
        ) as store_url,
        bench_database(
            settings, args.keep, folder="bench-stream-warehouse", database="apparel_bench_wh", schemas=()
        ) as warehouse_url,
    ):
        seeded = ensure_store(store_url, settings.dataset_dir, create_database=False)
        log.info("store seeded with %d rows", seeded)
        stream = StreamProcess(store_url, warehouse_url, log_file)
        stream.start()
        try:
            t0 = time.monotonic()
            wait_for_state(warehouse_url, stream)
            log.info("initial copy done in %.1f s; stream log: %s", time.monotonic() - t0, log_file)
            results = []
            for n, rate in enumerate(rates):
                log.info("simulating %g orders/s for %g s", rate, args.seconds)
                results.append(
                    run_rate(
                        store_url,
                        warehouse_url,
                        stream,
                        rate,
                        args.seconds,
                        args.seed + n,
                        settings.dataset_dir,
                    )
                )
            catch_up = None
            if args.catch_up_seconds > 0:
                catch_up = run_catch_up(
                    store_url,
                    warehouse_url,
                    stream,
                    args.catch_up_rate,
                    args.catch_up_seconds,
                    args.seed + 100,
                    settings.dataset_dir,
                )
        finally:
            stream.stop()
    print()
    print_table(results)
    if catch_up:
        changes, seconds, behind_mb, comparison = catch_up
        print(
            f"catch-up: {changes:,} changes ({behind_mb:,.1f} MB of WAL behind) applied in {seconds:.1f} s"
            f" = {changes / seconds:,.0f} changes/s (stream start-up included);"
            f" lost={comparison.lost} duplicated={comparison.duplicated} different={comparison.different}"
        )
    held = [r for r in results if r.held]
    best = max(held, key=lambda r: r.rate) if held else max(results, key=lambda r: r.rate)
    if not held:
        print("no rate held (p95 < 1000 ms and nothing lost, duplicated or different); the highest tried:")
    c = best.comparison
    print(
        f"stream bench: rate={best.rate:g} applied={best.applied_per_s:.0f} p95_ms={best.p95:.0f}"
        f" lost={c.lost} duplicated={c.duplicated} different={c.different}"
    )
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
