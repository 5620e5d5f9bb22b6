"""The dbt sources agree with the registry of the seven extracts (apparel/sources.py). No database."""

from __future__ import annotations

import yaml

from apparel.dbt_runner import DBT_PROJECT_DIR
from apparel.sources import RAW_SCHEMA, SOURCES

SOURCES_YML = DBT_PROJECT_DIR / "models" / "staging" / "_raw__sources.yml"
LOAD_LOG = f"{RAW_SCHEMA}._load_log"


def test_dbt_sources_list_every_registry_table_and_column() -> None:
    (raw,) = yaml.safe_load(SOURCES_YML.read_text())["sources"]
    assert raw["schema"] == RAW_SCHEMA
    tables = {t["name"]: t for t in raw["tables"]}
    assert list(tables) == [s.table for s in SOURCES], "one dbt source table per registry entry, same order"
    for source in SOURCES:
        documented = [c["name"] for c in tables[source.table]["columns"]]
        assert documented == source.column_names, f"{source.table}: columns differ from the registry"
        # Freshness: the source's last load in the load log (a load of an unchanged file writes no row).
        query = tables[source.table]["config"]["loaded_at_query"]
        assert f"from {LOAD_LOG} where source = '{source.name}'" in query, source.table


def test_every_raw_table_gets_a_staging_model() -> None:
    for source in SOURCES:
        assert (DBT_PROJECT_DIR / "models" / "staging" / f"stg_{source.table}.sql").is_file()
