"""`.env` is read the same by every part (apparel.config, the Makefile, the secret writer), created at
mode 600 and written atomically; the ingest's folders and files are limited to the dataset roots."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from apparel.config import PROJECT_ROOT, Settings, ensure_secrets, load_settings
from apparel.dataset_dirs import UnsafePath, checked_dataset_dir, checked_extract
from apparel.envfile import read_env_file

# The lines that used to be read three ways: `export` prefixes, quotes, empty quotes, comments.
TRICKY = """\
# a comment
export STATE_DIR="/tmp/apparel state"
DBT_DOCS_PORT='9191'   # the docs
SIMULATE=1 # on
AIRFLOW__CORE__FERNET_KEY=""
export AIRFLOW__API__SECRET_KEY=kept-secret
SUPERSET_ADMIN_USER=first
SUPERSET_ADMIN_USER=last
"""
EXPECTED = {
    "STATE_DIR": "/tmp/apparel state",
    "DBT_DOCS_PORT": "9191",
    "SIMULATE": "1",
    "AIRFLOW__API__SECRET_KEY": "kept-secret",
    "SUPERSET_ADMIN_USER": "last",
}


@pytest.fixture
def env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "settings.env"
    path.write_text(TRICKY)
    for name in [*EXPECTED, "AIRFLOW__CORE__FERNET_KEY", "ENV_FILE"]:
        monkeypatch.delenv(name, raising=False)
    return path


def test_python_reads_export_quotes_and_empty_values(env_file: Path) -> None:
    assert read_env_file(env_file) == EXPECTED  # KEY="" is unset, like a missing key
    settings = load_settings(env_file)
    assert {k: settings.get(k) for k in EXPECTED} == EXPECTED
    assert settings.get("AIRFLOW__CORE__FERNET_KEY", "default") == "default"


def test_the_makefile_reads_the_same(env_file: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("STATE_DIR", "DBT_DOCS_PORT", "SIMULATE")}
    printed = subprocess.run(
        ["make", "-p", "-n", "help", f"ENV_FILE={env_file}"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    values = dict(line.split(" := ", 1) for line in printed.splitlines() if " := " in line)
    assert {k: values.get(k) for k in ("STATE_DIR", "DBT_DOCS_PORT", "SIMULATE")} == {
        k: EXPECTED[k] for k in ("STATE_DIR", "DBT_DOCS_PORT", "SIMULATE")
    }


def test_the_secret_writer_fills_empty_quotes_and_keeps_exported_values(env_file: Path) -> None:
    generators = {"AIRFLOW__CORE__FERNET_KEY": lambda: "new-fernet", "AIRFLOW__API__SECRET_KEY": lambda: "x"}
    assert ensure_secrets(generators, env_file=env_file) == ["AIRFLOW__CORE__FERNET_KEY"]
    values = read_env_file(env_file)
    assert values["AIRFLOW__API__SECRET_KEY"] == "kept-secret"  # not rotated by a second key
    assert values["AIRFLOW__CORE__FERNET_KEY"] == "new-fernet"
    text = env_file.read_text()
    assert text.count("AIRFLOW__CORE__FERNET_KEY") == 1 and text.startswith("# a comment\nexport STATE_DIR")
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert [p.name for p in env_file.parent.iterdir()] == [env_file.name]  # no temporary file left


def test_a_new_env_file_is_private_from_the_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("X_TEST_SECRET", raising=False)
    example = tmp_path / "example"
    example.write_text("PG_PORT=5433\nX_TEST_SECRET=\n")
    env_file = tmp_path / ".env"
    assert ensure_secrets({"X_TEST_SECRET": lambda: "s3cret"}, env_file=env_file, example=example)
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert env_file.read_text() == "PG_PORT=5433\nX_TEST_SECRET=s3cret\n"
    # And the Makefile's own copy (before any secret is written) is private too.
    make_copy = tmp_path / "made.env"
    make = ["make", "-s", f"ENV_FILE={make_copy}", str(make_copy)]
    subprocess.run(make, cwd=PROJECT_ROOT, check=True, capture_output=True)
    assert stat.S_IMODE(make_copy.stat().st_mode) == 0o600


@pytest.fixture
def roots(tmp_path: Path) -> Settings:
    (tmp_path / "dataset").mkdir()
    (tmp_path / "extra" / "later").mkdir(parents=True)
    return Settings(
        {"DATASET_DIR": str(tmp_path / "dataset"), "DATASET_ALLOWED_DIRS": str(tmp_path / "extra")}
    )


def test_dataset_dir_must_lie_under_an_allowed_root(roots: Settings, tmp_path: Path) -> None:
    assert checked_dataset_dir(roots, None) == tmp_path / "dataset"
    assert checked_dataset_dir(roots, str(tmp_path / "extra" / "later")) == tmp_path / "extra" / "later"
    (tmp_path / "dataset" / "escape").symlink_to("/etc")
    for requested in ("/etc", str(tmp_path / "dataset" / "escape"), str(tmp_path / "dataset" / ".." / "..")):
        with pytest.raises(UnsafePath, match="outside the folders extracts may be read from"):
            checked_dataset_dir(roots, requested)


def test_only_regular_files_inside_the_folder_are_read(tmp_path: Path) -> None:
    folder = tmp_path / "dataset"
    folder.mkdir()
    (folder / "orders.csv").write_text("id\n1\n")
    assert checked_extract(folder, "orders.csv") == folder / "orders.csv"
    (folder / "inside.csv").symlink_to(folder / "orders.csv")  # a link within the folder is fine
    assert checked_extract(folder, "inside.csv") == folder / "inside.csv"
    (folder / "passwd.csv").symlink_to("/etc/passwd")
    with pytest.raises(UnsafePath, match="points outside"):
        checked_extract(folder, "passwd.csv")
    os.mkfifo(folder / "fifo.csv")
    with pytest.raises(UnsafePath, match="not a regular file"):
        checked_extract(folder, "fifo.csv")
    assert checked_extract(folder, "missing.csv") == folder / "missing.csv"
