"""The launcher's pure parts: secrets in .env, the import bundle, export normalisation."""

from __future__ import annotations

import io
import json
import os
import subprocess
import zipfile
from pathlib import Path

import yaml

from apparel.superset_setup import (
    ASSETS_DIR,
    CONFIG_PATH,
    SECRET_SETTINGS,
    SUPERSET_VENV,
    build_bundle,
    ensure_env_secrets,
    normalize_asset,
    warehouse_template_values,
)


def test_secrets_are_generated_once_and_kept(tmp_path: Path, monkeypatch) -> None:
    for name in SECRET_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    example = tmp_path / ".env.example"
    example.write_text("PG_PORT=5433\n# Superset\nSUPERSET_SECRET_KEY=\nSUPERSET_ADMIN_PASSWORD=\n")
    env_file = tmp_path / ".env"

    assert ensure_env_secrets(env_file, example) == list(SECRET_SETTINGS)
    first = env_file.read_text()
    values = dict(
        line.split("=", 1) for line in first.splitlines() if "=" in line and not line.startswith("#")
    )
    assert values["PG_PORT"] == "5433"
    assert all(len(values[name]) >= 20 for name in SECRET_SETTINGS)
    assert len({values[name] for name in SECRET_SETTINGS}) == 3
    assert first.count("SUPERSET_SECRET_KEY=") == 1, "the empty line is filled in, not duplicated"
    assert env_file.stat().st_mode & 0o077 == 0, ".env holds secrets: owner-only"

    assert ensure_env_secrets(env_file, example) == []
    assert env_file.read_text() == first


def test_secret_from_the_environment_is_not_written(tmp_path: Path, monkeypatch) -> None:
    for name in SECRET_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SUPERSET_ADMIN_PASSWORD", "from-ci")
    env_file = tmp_path / ".env"
    assert "SUPERSET_ADMIN_PASSWORD" not in ensure_env_secrets(env_file, tmp_path / "missing.example")
    assert "from-ci" not in env_file.read_text()


def test_bundle_points_the_connection_at_the_configured_warehouse() -> None:
    values = warehouse_template_values("postgresql://owner:pw@db.internal:6543/dwh?sslmode=require", "reader")
    with zipfile.ZipFile(io.BytesIO(build_bundle(ASSETS_DIR, values))) as bundle:
        names = bundle.namelist()
        assert all(n.startswith("apparel_assets/") for n in names), "one top-level folder"
        assert yaml.safe_load(bundle.read("apparel_assets/metadata.yaml"))["type"] == "assets"
        [db_file] = [n for n in names if "/databases/" in n]
        database = yaml.safe_load(bundle.read(db_file))
    assert database["sqlalchemy_uri"] == "postgresql+psycopg2://reader@db.internal:6543/dwh"
    assert "pw" not in database["sqlalchemy_uri"]
    assert sum("/charts/" in n for n in names) == sum(1 for _ in (ASSETS_DIR / "charts").glob("*.yaml")) == 27


def _placed(dashboard: dict) -> dict[int, str]:
    """The charts a dashboard's position places: chartId -> uuid."""
    return {
        i["meta"]["chartId"]: str(i["meta"]["uuid"])
        for i in dashboard["position"].values()
        if isinstance(i, dict) and "uuid" in i.get("meta", {})
    }


def test_assets_link_by_uuid_and_charts_can_answer_the_data_endpoint() -> None:
    docs = {p: yaml.safe_load(p.read_text()) for p in ASSETS_DIR.rglob("*.yaml")}
    uuids = [str(d["uuid"]) for d in docs.values()]
    assert len(uuids) == len(set(uuids))
    datasets = {str(d["uuid"]) for p, d in docs.items() if p.parent.parent.name == "datasets"}
    charts = {str(d["uuid"]): d for p, d in docs.items() if p.parent.name == "charts"}
    for chart in charts.values():
        assert str(chart["dataset_uuid"]) in datasets
        assert json.loads(chart["query_context"])["queries"], f"{chart['slice_name']} needs a query_context"
    dashboards = {d["slug"]: d for p, d in docs.items() if p.parent.name == "dashboards"}
    assert set(dashboards) == {"sales", "live-orders", "customers-markets"}
    placed = {slug: set(_placed(dashboard).values()) for slug, dashboard in dashboards.items()}
    for slug, dashboard in dashboards.items():
        items = [
            i for i in dashboard["position"].values() if isinstance(i, dict) and i.get("type") == "CHART"
        ]
        assert all(isinstance(i["meta"].get("chartId"), int) for i in items), f"{slug}: CHART-* needs chartId"
        assert len(placed[slug]) == len(items), f"{slug}: a chart placed twice or without uuid"
    assert set().union(*placed.values()) == set(charts), "every chart is on a dashboard"
    assert sum(map(len, placed.values())) == len(charts), "no chart on two dashboards"
    filters = {
        slug: {f["name"] for f in d["metadata"].get("native_filter_configuration", [])}
        for slug, d in dashboards.items()
    }
    assert filters["sales"] == {"Province", "Category", "Month"}
    assert filters["customers-markets"] == {"Province", "Segment"}


def test_native_filters_scope_exactly_the_charts_whose_dataset_has_the_column() -> None:
    """A filter on a column the chart's dataset lacks would break its query: such charts are excluded,
    and every other chart is in scope."""
    docs = {p: yaml.safe_load(p.read_text()) for p in ASSETS_DIR.rglob("*.yaml")}
    columns = {
        str(d["uuid"]): {c["column_name"] for c in d["columns"]}
        for p, d in docs.items()
        if p.parent.parent.name == "datasets"
    }
    dataset_of = {
        str(d["uuid"]): str(d["dataset_uuid"]) for p, d in docs.items() if p.parent.name == "charts"
    }
    for dashboard in (d for p, d in docs.items() if p.parent.name == "dashboards"):
        placed = _placed(dashboard)
        for native_filter in dashboard["metadata"].get("native_filter_configuration", []):
            [target] = native_filter["targets"]
            column = target["column"]["name"]
            assert column in columns[str(target["datasetUuid"])], native_filter["name"]
            in_scope = set(placed) - set(native_filter["scope"]["excluded"])
            with_column = {i for i, uuid in placed.items() if column in columns[dataset_of[uuid]]}
            assert in_scope == with_column, f"{dashboard['slug']}: {native_filter['name']}"


def test_country_map_is_keyed_by_province_codes_and_keeps_its_colours() -> None:
    docs = [yaml.safe_load(p.read_text()) for p in ASSETS_DIR.rglob("*.yaml")]
    [country_map] = [d for d in docs if d.get("viz_type") == "country_map"]
    assert country_map["params"]["select_country"] == "indonesia"
    assert country_map["params"]["entity"] == "province_iso_code"  # ISO 3166-2, as the GeoJSON's ISO
    # A dashboard's categorical palette would override the map's sequential one.
    [dashboard] = [d for d in docs if country_map["uuid"] in str(d.get("position"))]
    assert not dashboard["metadata"]["color_scheme"]


def test_export_normalisation_replaces_instance_ids() -> None:
    dashboard = {
        "position": {
            "CHART-a": {"type": "CHART", "meta": {"chartId": 41, "uuid": "u1"}},
            "CHART-b": {"type": "CHART", "meta": {"chartId": 17, "uuid": "u2"}},
        },
        "metadata": {
            "native_filter_configuration": [{"chartsInScope": [41, 17], "scope": {"excluded": [17]}}],
            "chart_configuration": {"41": {}},
        },
    }
    out = normalize_asset("dashboards", dashboard, {})
    assert [c["meta"]["chartId"] for c in out["position"].values()] == [1, 2]
    assert out["metadata"]["native_filter_configuration"] == [{"scope": {"excluded": [2]}}]
    chart = {
        "params": {"datasource": "7__table", "slice_id": 3},
        "query_context": json.dumps({"datasource": {"id": 7}}),
    }
    out = normalize_asset("charts", chart, {})
    assert out["params"] == {"datasource": "0__table"}
    assert json.loads(out["query_context"])["datasource"] == {"id": 0, "type": "table"}


def test_live_dashboard_refreshes_itself_and_reads_raw_store() -> None:
    docs = [yaml.safe_load(p.read_text()) for p in ASSETS_DIR.rglob("*.yaml")]
    [live] = [d for d in docs if d.get("slug") == "live-orders"]
    # Read by the dashboard page on open: it starts refreshing every chart at this interval.
    assert 10 <= live["metadata"]["refresh_frequency"] <= 30
    assert live["metadata"]["timed_refresh_immune_slices"] == []
    placed = {
        i["meta"]["uuid"]
        for i in live["position"].values()
        if isinstance(i, dict) and "uuid" in i.get("meta", {})
    }
    datasets = {str(d["uuid"]): d for d in docs if "table_name" in d}
    for chart in (d for d in docs if str(d.get("uuid")) in placed):
        dataset = datasets[str(chart["dataset_uuid"])]
        assert dataset["schema"] == "raw_store" and "raw_store." in dataset["sql"], chart["slice_name"]
        # Live data: Superset's results cache (5 minutes) must not serve it.
        assert dataset["cache_timeout"] == -1, dataset["table_name"]


# Loads superset_config.py as Superset does (its own environment) and asks its password lookup.
_LOOKUP = """
import json, runpy, sys
from sqlalchemy.engine.url import make_url
config = runpy.run_path(sys.argv[1])
print(json.dumps([config["lookup_password"](make_url(url)) for url in sys.argv[2:]]))
"""


def _superset_config(tmp_path: Path, secret_key: str, *urls: str) -> subprocess.CompletedProcess:
    env = {
        "PATH": os.environ["PATH"],
        "STATE_DIR": str(tmp_path),
        "SUPERSET_SECRET_KEY": secret_key,
        "SUPERSET_READER_PASSWORD": "reader-secret",
        "SUPERSET_WAREHOUSE_HOST": "127.0.0.1",
        "SUPERSET_WAREHOUSE_PORT": "5433",
        "SUPERSET_WAREHOUSE_DB": "warehouse",
    }
    argv = [str(SUPERSET_VENV / "bin" / "python"), "-c", _LOOKUP, str(CONFIG_PATH), *urls]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


def test_superset_config_refuses_a_short_key_and_hands_the_password_to_the_warehouse_only(
    tmp_path: Path,
) -> None:
    for key in ("", "short-key"):
        refused = _superset_config(tmp_path, key)
        assert refused.returncode != 0 and "SUPERSET_SECRET_KEY is missing or shorter" in refused.stderr
    base = "postgresql+psycopg2://superset_reader@{}/{}"
    urls = [
        base.format("127.0.0.1:5433", "warehouse"),  # the warehouse: the only one that gets the password
        base.format("attacker.example:5433", "warehouse"),
        base.format("127.0.0.1:5432", "warehouse"),
        base.format("127.0.0.1:5433", "store"),
    ]
    asked = _superset_config(tmp_path, "k" * 32, *urls)
    assert asked.returncode == 0, asked.stderr[-2000:]
    assert json.loads(asked.stdout.splitlines()[-1]) == ["reader-secret", None, None, None]
