"""The ingest benchmark end to end at scale 1, on the test suite's server in a database of its own.

The database and the extracts folder are this run's own (`--database`, `--data-dir`): the bench's
defaults, `apparel_bench` and `bench-data/scale-1/`, are shared by every run on one server or in one
checkout, so two runs at once would drop each other's database or rewrite each other's files.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import psycopg
import pytest

from apparel import bench_ingest

SUMMARY = re.compile(
    r"bench-ingest: scale=1 rows=25836 ours_rows_per_s=\d+ copy_ratio_csv=\d+\.\d\d"
    r" min_tosql_speedup=\d+\.\d peak_rss_mb=\d+"
)
SUMMARY_SPEEDUP = re.compile(r"min_tosql_speedup=(\d+\.\d)")


@pytest.mark.slow
def test_bench_ingest_runs_and_prints_the_summary(
    pg_admin_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("WAREHOUSE_URL", pg_admin_url)
    database = f"apparel_bench_{uuid.uuid4().hex[:10]}"
    data_dir = tmp_path / "scale-1"

    args = ["--scale", "1", "--tosql-max-rows", "2000", "--format-rows", "3000"]
    assert bench_ingest.main([*args, "--data-dir", str(data_dir), "--database", database]) == 0

    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert SUMMARY.fullmatch(lines[-1]), lines[-1]
    for source in ("provinces", "cities", "customers", "product_categories", "products", "orders"):
        assert source in out
    assert "TOTAL" in out
    assert "to_sql timed on the first 2,000 rows" in out
    assert any(line.startswith("CSV vs \\copy: ") for line in lines)
    # The format throughput section: the same 3,000 rows in every format, and the goal judged on it.
    assert "format throughput: the first 3,000 order_details rows as each format" in out
    for file in ("order_details.xlsx", "order_details.parquet", "order_details.json", "order_details.csv"):
        assert file in out
    goal = next(line for line in lines if line.startswith("every format vs to_sql"))
    assert goal.startswith("every format vs to_sql (3,000 order_details rows per format): slowest "), goal
    assert "real extracts by format, not judged" in out
    result = json.loads((data_dir / "bench-result.json").read_text())
    assert result["formats"]["rows"] == 3000
    assert set(result["formats"]["by_format"]) == {"excel", "parquet", "json", "csv"}
    assert min(result["tosql_speedups"].values()) == pytest.approx(
        float(SUMMARY_SPEEDUP.search(lines[-1])[1]), abs=0.06
    )
    # The extracts were generated into this run's folder, and its bench database is dropped afterwards.
    assert (data_dir / "orders.csv").is_file()
    with psycopg.connect(pg_admin_url) as conn:
        found = conn.execute("select 1 from pg_database where datname = %s", (database,)).fetchone()
    assert found is None
