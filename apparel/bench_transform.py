"""Transformation benchmark: `dbt build` from scratch, then the incremental build after 1% new orders.

`make bench-transform SCALE=N` generates (or reuses) the scale N extracts in `bench-data/scale-N/`,
loads them into a throw-away database, and times:

1. `dbt build` from scratch (every model, snapshot and test);
2. 1% new orders with their lines appended to copies of `orders.csv` and `order_details.csv`,
   those two sources reloaded (a load replaces the whole table, as in production);
3. `dbt build` again: fct_transactions merges only the new lines, the rest is rebuilt or re-tested.

It prints both with fact rows per second and the incremental/full ratio (goal: <= 20%), for the
whole build and for fct_transactions alone. Figures only: nothing is asserted.

The database is never the user's warehouse database: an embedded server in
`STATE_DIR/bench-transform-pg` (its own folder, so `make bench-ingest` cannot stop it midway;
destroyed afterwards unless `--keep`), or, when WAREHOUSE_URL is set, a database
`apparel_bench_transform` on that server (dropped afterwards unless `--keep`).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from apparel.bench_ingest import bench_database, ensure_data
from apparel.config import load_settings
from apparel.dbt_runner import run_dbt
from apparel.loader import load_source
from apparel.sources import SOURCES, get_source

# Not __name__: under `python -m` that is "__main__".
log = logging.getLogger("apparel.bench_transform")

BENCH_DATABASE = "apparel_bench_transform"
DEFAULT_SEED = 42
NEW_ORDERS_SHARE = 0.01
GOAL_RATIO = 0.20
FACT = "fct_transactions"


@dataclass
class BuildTiming:
    seconds: float  # wall clock of the whole `dbt build` (dbt start-up included)
    fact_seconds: float  # fct_transactions' own execution time
    fact_rows: int  # rows the fact model wrote (INSERT / MERGE count)


def _read_csv(path: Path) -> pa.Table:
    # order_date stays text, so appended rows keep the extract's exact format.
    return pacsv.read_csv(
        path, convert_options=pacsv.ConvertOptions(column_types={"order_date": pa.string()})
    )


def _append_csv(path: Path, table: pa.Table) -> None:
    with path.open("ab") as f:
        pacsv.write_csv(table, f, pacsv.WriteOptions(include_header=False, quoting_style="none"))


def add_new_orders(data_dir: Path, out_dir: Path, share: float = NEW_ORDERS_SHARE) -> tuple[int, int]:
    """Copy the two fact extracts to `out_dir` with `share` more orders appended, each a copy of an
    existing order (same customer, city, lines) under new order and line ids. Returns (orders, lines)."""
    orders = _read_csv(data_dir / "orders.csv")
    details = _read_csv(data_dir / "order_details.csv")
    n_new = max(1, round(orders.num_rows * share))

    templates = orders.slice(orders.num_rows - n_new)  # the last orders (December): a plausible month
    order_offset = pc.max(orders["order_id"]).as_py() - pc.min(templates["order_id"]).as_py() + 1
    new_orders = templates.set_column(0, "order_id", pc.add(templates["order_id"], order_offset))

    lines = details.filter(pc.is_in(details["order_id"], value_set=templates["order_id"]))
    first_line = pc.max(details["order_detail_id"]).as_py() + 1
    line_ids = pa.array(range(first_line, first_line + lines.num_rows), pa.int64())
    new_lines = lines.set_column(0, "order_detail_id", line_ids).set_column(
        1, "order_id", pc.add(lines["order_id"], order_offset)
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, extra in (("orders.csv", new_orders), ("order_details.csv", new_lines)):
        shutil.copyfile(data_dir / name, out_dir / name)
        _append_csv(out_dir / name, extra)
    return new_orders.num_rows, new_lines.num_rows


def load(url: str, data_dir: Path, names: list[str]) -> None:
    for name in names:
        started = time.perf_counter()
        result = load_source(url, get_source(name), data_dir, force=True)
        log.info("loaded %s: %d rows in %.1f s", name, result.rows, time.perf_counter() - started)


def timed_build(url: str, target: Path, label: str) -> BuildTiming:
    log.info("dbt build (%s)...", label)
    started = time.perf_counter()
    result = run_dbt(["--quiet", "build"], url=url, target_path=target, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"dbt build ({label}) failed with exit {result.returncode}")
    results = json.loads((target / "run_results.json").read_text())["results"]
    fact = next(r for r in results if r["unique_id"] == f"model.apparel.{FACT}")
    timing = BuildTiming(seconds, fact["execution_time"], fact["adapter_response"].get("rows_affected", 0))
    log.info("dbt build (%s): %.1f s, %s %.1f s", label, seconds, FACT, timing.fact_seconds)
    return timing


def render(scale: int, fact_rows: int, new_lines: int, full: BuildTiming, incremental: BuildTiming) -> str:
    def met(ratio: float) -> str:
        return f"goal <= {GOAL_RATIO:.0%} {'met' if ratio <= GOAL_RATIO else 'not met'}"

    def rate(rows: int, seconds: float) -> str:
        return f"{rows / seconds:>12,.0f} rows/s" if seconds > 0 else "n/a"

    whole = incremental.seconds / full.seconds
    fact = incremental.fact_seconds / full.fact_seconds if full.fact_seconds else float("nan")
    lines = [
        f"dbt build at scale {scale}: {fact_rows:,} order lines, then {new_lines:,} new "
        f"({NEW_ORDERS_SHARE:.0%} more orders)",
        "",
        f"{'':<24}{'dbt build':>12}{'fact rows/s':>22}{FACT:>22}{'rows written':>14}",
        f"{'full (from scratch)':<24}{full.seconds:>10.1f} s{rate(fact_rows, full.seconds):>22}"
        f"{full.fact_seconds:>20.1f} s{full.fact_rows:>14,}",
        f"{'incremental (+1%)':<24}{incremental.seconds:>10.1f} s{rate(new_lines, incremental.seconds):>22}"
        f"{incremental.fact_seconds:>20.1f} s{incremental.fact_rows:>14,}",
        "",
        f"incremental / full: whole build {whole:.0%} ({met(whole)}), {FACT} {fact:.0%} ({met(fact)})",
    ]
    return "\n".join(lines)


def run_benchmark(scale: int, seed: int, keep: bool) -> str:
    settings = load_settings()
    data_dir = ensure_data(scale, seed)
    with (
        tempfile.TemporaryDirectory(prefix="bench-transform-", dir=settings.state_dir) as tmp,
        bench_database(
            settings, keep, folder="bench-transform-pg", database=BENCH_DATABASE, schemas=()
        ) as url,
    ):
        tmp_dir = Path(tmp)
        target = tmp_dir / "dbt-target"
        load(url, data_dir, [s.name for s in SOURCES])
        # Parse once, untimed, so both timed builds start from the same (partially parsed) state.
        run_dbt(["--quiet", "parse"], url=url, target_path=target)
        full = timed_build(url, target, "from scratch")

        later = tmp_dir / "later"
        new_orders, new_lines = add_new_orders(data_dir, later)
        log.info("appended %d orders with %d lines", new_orders, new_lines)
        load(url, later, ["orders", "order_details"])
        incremental = timed_build(url, target, "incremental")

        with psycopg.connect(url) as conn:
            fact_rows = conn.execute(f"select count(*) from core.{FACT}").fetchone()[0]
    return render(scale, fact_rows - new_lines, new_lines, full, incremental)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_transform", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=10, help="generator scale (default 10)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--keep", action="store_true", help="keep the bench database afterwards")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
    )
    print(run_benchmark(args.scale, args.seed, args.keep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
