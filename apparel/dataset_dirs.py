"""Which folders and files the extracts may be read from.

The ingest DAG's `dataset_dir` parameter can be set by anyone allowed to trigger a DAG, and the
loader runs with the warehouse's credentials on the Airflow worker: a folder outside DATASET_DIR
(and the optional DATASET_ALLOWED_DIRS) is refused, and so is an extract that is not a regular file
inside its folder (a symlink out of it, a FIFO that would block the task, a device).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from apparel.config import Settings, resolve_path


class UnsafePath(ValueError):
    """A folder or file the loader must not read."""


def allowed_roots(settings: Settings) -> list[Path]:
    """DATASET_DIR plus DATASET_ALLOWED_DIRS (separated by `:`), symlinks resolved."""
    extra = [p for p in settings.get("DATASET_ALLOWED_DIRS").split(os.pathsep) if p.strip()]
    return [resolve_path(p.strip()).resolve() for p in [str(settings.dataset_dir), *extra]]


def checked_dataset_dir(settings: Settings, requested: str | None) -> Path:
    """The folder a run asks for (None: DATASET_DIR), when it lies under an allowed root."""
    if not requested:
        return settings.dataset_dir
    folder = resolve_path(requested).resolve()
    roots = allowed_roots(settings)
    if not any(folder.is_relative_to(root) for root in roots):
        raise UnsafePath(
            f"dataset_dir {requested!r} is outside the folders extracts may be read from "
            f"({', '.join(map(str, roots))}); add it to DATASET_ALLOWED_DIRS in .env to allow it"
        )
    if not folder.is_dir():
        raise UnsafePath(f"dataset_dir {requested!r} is not a folder")
    return folder


def checked_extract(folder: Path, file: str) -> Path:
    """`folder/file` when it is a regular file inside `folder` (after symlinks); a missing one is
    returned as is (the loader reports it)."""
    path = folder / file
    if not os.path.lexists(path):
        return path
    real = path.resolve()
    if not real.is_relative_to(folder.resolve()):
        raise UnsafePath(f"{path} points outside {folder} (to {real}): refused")
    if not stat.S_ISREG(real.stat().st_mode):
        raise UnsafePath(f"{path} is not a regular file (a FIFO, device or folder): refused")
    return path
