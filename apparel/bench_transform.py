"""Transformation benchmark: `dbt build` from scratch, then the incremental build after 1% new orders.

`make bench-transform SCALE=N` generates (or reuses) the scale N extracts in `bench-data/scale-N/`,
loads them into a throw-away database, and times:

1. `dbt build` from scratch (every model, snapshot and test);
2. 1% new orders with their lines appended to copies of `orders.csv` and `order_details.csv`,
   those two sources reloaded (a load replaces the whole table, as in production);
3. the incremental step: `dbt build --select source:raw.orders+ source:raw.order_details+`, every
   node downstream of the sources that were reloaded, with all their tests (about half the nodes;
   apparel.dbt_runner.downstream_of_sources). The other models' inputs did not change, so neither
   would they nor their tests' results. fct_transactions appends only the new lines (its
   load log proves the rest unchanged), the marts add them to their totals, tests on the fact
   read the rows appended since its last whole-table check.

Both builds run in this process through dbt's Python API (dbtRunner), as a long-lived worker
runs dbt, so the timings leave out importing dbt (about 3 s on 2 quiet cores), which
every `dbt` command line pays whatever it builds. That import is timed once, before the builds,
and the ratio is printed with it added to both too, which is what two `dbt build` command lines
would show.

For both it prints the wall-clock seconds, fact rows per second (rows built, or new rows, per
second of the whole build), the incremental/full ratio against the goal (<= 20%: OK or MISSED),
for the whole build and for fct_transactions alone, the path the fact took, and where the time
goes: dbt's own start-up and wrap-up, then the nodes by phase (staging, dimensions, fact, marts,
tests, ...) and the slowest nodes. Node times come from `run_results.json` and overlap (dbt runs
several threads), so a phase's figure is the time its nodes ran, not a share of the wall clock.
Figures only: nothing is asserted.

The database is never the user's warehouse database: an embedded server in
`STATE_DIR/bench-transform-pg` (its own folder, so `make bench-ingest` cannot stop it midway;
destroyed afterwards unless `--keep`), or, when WAREHOUSE_URL is set, a database
`apparel_bench_transform` on that server (dropped afterwards unless `--keep`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
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
from apparel.dbt_runner import DBT_PROJECT_DIR, dbt_env, downstream_of_sources
from apparel.loader import load_source
from apparel.sources import SOURCES, get_source

# Not __name__: under `python -m` that is "__main__".
log = logging.getLogger("apparel.bench_transform")

BENCH_DATABASE = "apparel_bench_transform"
DEFAULT_SEED = 42
NEW_ORDERS_SHARE = 0.01
GOAL_RATIO = 0.20
FACT = "fct_transactions"


TOP_NODES = 8

# Phases of a build, in DAG order; a node's phase comes from its type and what it builds or tests.
PHASES = (
    "staging views",
    "snapshot",
    "dimensions",
    "fact load log",
    FACT,
    "marts",
    "tests: staging",
    "tests: dimensions and log",
    f"tests: {FACT}",
    "tests: reconciliations",
    "tests: marts",
    "unit tests",
)


@dataclass
class NodeTiming:
    unique_id: str
    phase: str
    seconds: float


@dataclass
class BuildTiming:
    seconds: float  # wall clock of the whole `dbt build` (dbt start-up included)
    dbt_elapsed: float  # dbt's own elapsed time for running the nodes (run_results.json)
    fact_seconds: float  # fct_transactions' own execution time
    fact_rows: int  # rows the fact model wrote (INSERT / MERGE count)
    fact_path: str  # how the fact was loaded: full refresh, append or compare (its load log)
    nodes: list[NodeTiming]

    def phase_seconds(self) -> dict[str, float]:
        totals = dict.fromkeys(PHASES, 0.0)
        for node in self.nodes:
            totals[node.phase] += node.seconds
        return totals


def _model_phase(name: str) -> str:
    if name.startswith("stg_"):
        return "staging views"
    if name.startswith("dim_"):
        return "dimensions"
    if name.startswith("dm_"):
        return "marts"
    return FACT if name == FACT else "fact load log"


def node_phase(unique_id: str, manifest_nodes: dict) -> str:
    """The phase of a run_results node (unique ids: `<type>.<project>.<name>[.<hash>]`)."""
    kind, _, name = unique_id.split(".")[:3]
    if kind == "model":
        return _model_phase(name)
    if kind == "snapshot":
        return "snapshot"
    if kind == "unit_test":
        return "unit tests"
    node = manifest_nodes.get(unique_id, {})
    if not node.get("attached_node"):  # a singular test in tests/: the reconciliations
        return "tests: reconciliations"
    tested = _model_phase(node["attached_node"].split(".")[-1])
    if node["attached_node"].startswith("snapshot."):
        tested = "snapshot"
    return {
        "staging views": "tests: staging",
        FACT: f"tests: {FACT}",
        "marts": "tests: marts",
    }.get(tested, "tests: dimensions and log")


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


def fact_load_path(url: str) -> str:
    """How the last dbt run loaded the fact, from its load log (models/core/fct_transactions_loads.sql)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            f"select load_path from core.{FACT}_loads where consumed_at is not null"
            " order by loaded_at desc limit 1"
        ).fetchone()
    return row[0] if row else "?"


def import_dbt() -> float:
    """Import dbt's Python API (untimed by the builds); returns the seconds it took."""
    started = time.perf_counter()
    import dbt.cli.main  # noqa: F401

    return time.perf_counter() - started


def in_process_dbt(args: list[str], url: str, target: Path) -> bool:
    """`dbt <args>` in this process (dbtRunner), connected and targeted as apparel.dbt_runner.run_dbt."""
    from dbt.cli.main import dbtRunner

    os.environ.update(dbt_env(load_settings(), url))
    os.environ["DBT_TARGET_PATH"] = str(target)
    return dbtRunner().invoke([*args, "--project-dir", str(DBT_PROJECT_DIR)]).success


def timed_build(url: str, target: Path, label: str, select: list[str] | None = None) -> BuildTiming:
    log.info("dbt build (%s)%s...", label, f" --select {' '.join(select)}" if select else "")
    started = time.perf_counter()
    ok = in_process_dbt(["--quiet", "build", *(["--select", *select] if select else [])], url, target)
    seconds = time.perf_counter() - started
    if not ok:
        raise SystemExit(f"dbt build ({label}) failed")
    run_results = json.loads((target / "run_results.json").read_text())
    manifest_nodes = json.loads((target / "manifest.json").read_text())["nodes"]
    results = run_results["results"]
    fact = next(r for r in results if r["unique_id"] == f"model.apparel.{FACT}")
    nodes = [
        NodeTiming(r["unique_id"], node_phase(r["unique_id"], manifest_nodes), r["execution_time"])
        for r in results
    ]
    timing = BuildTiming(
        seconds=seconds,
        dbt_elapsed=run_results["elapsed_time"],
        fact_seconds=fact["execution_time"],
        fact_rows=fact["adapter_response"].get("rows_affected", 0),
        fact_path=fact_load_path(url),
        nodes=nodes,
    )
    log.info(
        "dbt build (%s): %.1f s, %s %.1f s (%s)", label, seconds, FACT, timing.fact_seconds, timing.fact_path
    )
    return timing


def _node_label(unique_id: str) -> str:
    kind, _, name = unique_id.split(".")[:3]
    return f"{kind.replace('_', ' ')} {name}"


def render(
    scale: int,
    fact_rows: int,
    new_lines: int,
    full: BuildTiming,
    incremental: BuildTiming,
    select: list[str],
    import_seconds: float,
) -> str:
    def verdict(ratio: float) -> str:
        return f"{ratio:.0%} {'OK' if ratio <= GOAL_RATIO else 'MISSED'}"

    def rate(rows: int, seconds: float) -> str:
        return f"{rows / seconds:,.0f} rows/s" if seconds > 0 else "n/a"

    whole = incremental.seconds / full.seconds
    fact = incremental.fact_seconds / full.fact_seconds if full.fact_seconds else float("nan")
    runs = (("full (from scratch)", full, fact_rows), ("incremental (+1%)", incremental, new_lines))
    lines = [
        f"dbt build at scale {scale}: {fact_rows:,} order lines, then {new_lines:,} new "
        f"({NEW_ORDERS_SHARE:.0%} more orders)",
        "",
        f"{'':<22}{'dbt build':>11}{'fact rows/s':>16}{FACT:>20}{'rows written':>14}  fact load",
    ]
    lines += [
        f"{label:<22}{run.seconds:>9.1f} s{rate(rows, run.seconds):>16}{run.fact_seconds:>18.1f} s"
        f"{run.fact_rows:>14,}  {run.fact_path}"
        for label, run, rows in runs
    ]
    lines += [
        "",
        f"incremental / full (goal <= {GOAL_RATIO:.0%}): "
        f"whole build {verdict(whole)}, {FACT} {verdict(fact)}",
        f"incremental step: dbt build --select {' '.join(select)} "
        f"({len(incremental.nodes)} of {len(full.nodes)} nodes)",
        f"with dbt's import added to both ({import_seconds:.1f} s, as two `dbt build` command lines): "
        f"{incremental.seconds + import_seconds:.1f} s / {full.seconds + import_seconds:.1f} s = "
        f"{(incremental.seconds + import_seconds) / (full.seconds + import_seconds):.0%}",
        "",
        "where the time goes (seconds; node times overlap, dbt runs several threads)",
        f"{'':<34}{'full':>9}{'incremental':>13}",
        f"{'dbt set-up and wrap-up':<34}{full.seconds - full.dbt_elapsed:>9.1f}"
        f"{incremental.seconds - incremental.dbt_elapsed:>13.1f}   (wall clock outside node execution)",
        f"{'node execution (wall clock)':<34}{full.dbt_elapsed:>9.1f}{incremental.dbt_elapsed:>13.1f}",
    ]
    full_phases, incremental_phases = full.phase_seconds(), incremental.phase_seconds()
    counts = {phase: sum(node.phase == phase for node in full.nodes) for phase in PHASES}
    lines += [
        f"{f'  {phase} ({counts[phase]})':<34}{full_phases[phase]:>9.1f}{incremental_phases[phase]:>13.1f}"
        for phase in PHASES
        if counts[phase]
    ]
    for label, run in (("full", full), ("incremental", incremental)):
        lines += ["", f"slowest nodes, {label} build:"]
        slowest = sorted(run.nodes, key=lambda node: node.seconds, reverse=True)[:TOP_NODES]
        lines += [f"{node.seconds:>8.2f} s  {_node_label(node.unique_id)}" for node in slowest]
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
        import_seconds = import_dbt()
        log.info("imported dbt in %.1f s", import_seconds)
        # Parse once, untimed, so both timed builds start from the same (partially parsed) state.
        if not in_process_dbt(["--quiet", "parse"], url, target):
            raise SystemExit("dbt parse failed")
        full = timed_build(url, target, "from scratch")

        later = tmp_dir / "later"
        new_orders, new_lines = add_new_orders(data_dir, later)
        log.info("appended %d orders with %d lines", new_orders, new_lines)
        reloaded = ["orders", "order_details"]
        load(url, later, reloaded)
        select = downstream_of_sources(reloaded)
        incremental = timed_build(url, target, "incremental", select)

        with psycopg.connect(url) as conn:
            fact_rows = conn.execute(f"select count(*) from core.{FACT}").fetchone()[0]
    return render(scale, fact_rows - new_lines, new_lines, full, incremental, select, import_seconds)


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
