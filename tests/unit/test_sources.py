"""The registry is consistent with itself and with the committed extracts."""

from __future__ import annotations

from apparel.readers import open_extract
from apparel.sources import SOURCES, SOURCES_BY_NAME
from tests.conftest import DATASET_DIR


def test_registry_is_consistent() -> None:
    assert len(SOURCES_BY_NAME) == len(SOURCES) == 7
    assert len({s.file for s in SOURCES}) == 7
    for source in SOURCES:
        assert source.primary_key in source.column_names
        assert len(set(source.column_names)) == len(source.column_names)
        for fk in source.foreign_keys:
            assert fk.column in source.column_names
            parent = SOURCES_BY_NAME[fk.ref_table]
            assert fk.ref_column == parent.primary_key


def test_every_committed_extract_has_exactly_the_registry_columns() -> None:
    for source in SOURCES:
        extract = open_extract(source, DATASET_DIR / source.file)
        assert extract.file_columns == source.column_names, source.file
        first = next(extract.chunks).decode().split("\n", 1)[0].split(",")
        assert len(first) == len(source.columns)
