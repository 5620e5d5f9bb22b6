"""Readers: turn each extract format into one stream of CSV text for PostgreSQL's COPY.

Every format ends as the same thing, headerless CSV in the file's own column
order, so the loader has one path and PostgreSQL does the type checking. When
PostgreSQL rejects a value it names the COPY line; `Extract.row_label` turns
that line back into a place in the original file (a CSV line, a sheet row,
a Parquet row, a JSON row key) for the error message.

CSV files are not parsed in Python at all: their bytes go to COPY as they are,
which is what makes the CSV path run close to `psql \\copy`. A CSV file must end
with a line break: one that ends in the middle of a line is incomplete (still
being copied, or cut short) and is refused.

Each file is read once: the sha256 the loader records (`Extract.sha256`) is that
of the bytes read for the load, not of a second read that may see another file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from apparel.sources import Format, Source

CHUNK_BYTES = 1 << 20  # CSV bytes per COPY write
ROWS_PER_CHUNK = 50_000  # rows per converted chunk for the other formats


class SourceError(Exception):
    """Bad input: one message that names the file, and the row and column where there is one."""

    def __init__(self, file: str, message: str, *, row: str | None = None, column: str | None = None):
        self.file, self.row, self.column, self.reason = file, row, column, message
        where = ", ".join(p for p in (file, row, f"column {column}" if column else None) if p)
        super().__init__(f"{where}: {message}")


@dataclass
class Extract:
    """An opened extract: its columns in file order and its rows as headerless CSV chunks."""

    columns: list[str]  # the columns `chunks` carries, in order
    chunks: Iterator[bytes]
    # Maps the 1-based number of a data row to where a person finds it in the file.
    row_label: Callable[[int], str]
    # Columns found in the file but not streamed (Parquet reads only the registry's columns).
    unread_columns: list[str] = field(default_factory=list)
    # Fed with the file's bytes as they are read; complete once `chunks` is exhausted.
    digest: Any = field(default_factory=hashlib.sha256)

    @property
    def sha256(self) -> str:
        """The checksum of the bytes this extract read (call it after consuming `chunks`)."""
        return self.digest.hexdigest()

    @property
    def file_columns(self) -> list[str]:
        return self.columns + self.unread_columns


def open_extract(source: Source, path: Path) -> Extract:
    """Open `path` as `source`'s format; raise SourceError if it cannot be read as such."""
    if not path.exists():
        raise SourceError(path.name, f"file not found in {path.parent}")
    if path.stat().st_size == 0:
        raise SourceError(path.name, "file is empty (0 bytes)")
    if source.format == Format.CSV:
        return _open_csv(source, path)
    # The other formats are parsed from memory (each reader holds its file's data anyway): one
    # read, whose bytes are the ones checksummed.
    data = path.read_bytes()
    opener = {Format.EXCEL: _open_excel, Format.PARQUET: _open_parquet, Format.JSON: _open_json}[
        source.format
    ]
    extract = opener(source, path, data)
    extract.digest.update(data)
    return extract


# --- CSV: passed through untouched -------------------------------------------------------------


def _open_csv(source: Source, path: Path) -> Extract:
    f = path.open("rb")
    header_line = f.readline()
    try:
        text = header_line.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        f.close()
        raise SourceError(path.name, f"header is not UTF-8 text ({e.reason})", row="line 1") from None
    columns = next(csv.reader([text]), [])
    columns = [c.strip() for c in columns]
    digest = hashlib.sha256(header_line)

    def chunks() -> Iterator[bytes]:
        breaks, last = 1, header_line[-1:]  # line breaks so far: the header's
        with f:
            while block := f.read(CHUNK_BYTES):
                digest.update(block)
                breaks += block.count(b"\n")
                last = block[-1:]
                yield block
        if last != b"\n":
            # Raised into the COPY, which fails: nothing of the file is loaded.
            raise SourceError(
                path.name,
                "the file ends in the middle of this line (no line break after it): it is incomplete,"
                " perhaps still being copied; load it once it is complete",
                row=f"line {breaks + 1}",
            )

    return Extract(columns, chunks(), lambda n: f"line {n + 1}", digest=digest)


# --- Excel ------------------------------------------------------------------------------------


def _open_excel(source: Source, path: Path, data: bytes) -> Extract:
    from python_calamine import CalamineWorkbook

    try:
        workbook = CalamineWorkbook.from_filelike(io.BytesIO(data))
        # The sheet the real extracts use; a user's copy with another sheet name still loads its first sheet.
        name = source.sheet if source.sheet in workbook.sheet_names else workbook.sheet_names[0]
        sheet = workbook.get_sheet_by_name(name)
        # Row by row, so Python never holds the whole sheet as objects (calamine keeps the cells).
        rows = sheet.iter_rows()
        # calamine yields the empty rows above the used range too (trimmed to its columns): the
        # header is the first row with a value in it.
        header = next((row for row in rows if any(cell != "" for cell in row)), None)
    except Exception as e:  # calamine raises several unrelated types for a broken zip or XML
        raise SourceError(path.name, f"not a readable Excel workbook ({type(e).__name__}: {e})") from None
    if not header:
        raise SourceError(path.name, f"sheet {name!r} is empty")
    columns = [str(c).strip() for c in header]
    # Excel's own row numbers: the header is at the sheet's first used row (row 1 in the real extracts).
    header_row = (sheet.start[0] if sheet.start else 0) + 1
    return Extract(columns, _rows_as_csv(rows), lambda n: f"row {header_row + n}")


# --- Parquet ----------------------------------------------------------------------------------


def _open_parquet(source: Source, path: Path, data: bytes) -> Extract:
    try:
        parquet = pq.ParquetFile(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as e:
        raise SourceError(path.name, f"not a readable Parquet file ({e})") from None
    available = parquet.schema_arrow.names
    # Read only what the registry knows: unknown columns never leave the file.
    wanted = [c for c in source.column_names if c in available]
    extras = [c for c in available if c not in source.column_names and not c.startswith("__index_level_")]

    def chunks() -> Iterator[bytes]:
        options = pacsv.WriteOptions(include_header=False)
        try:
            for batch in parquet.iter_batches(batch_size=ROWS_PER_CHUNK, columns=wanted):
                buf = io.BytesIO()
                pacsv.write_csv(batch, buf, options)
                yield buf.getvalue()
        except (pa.ArrowInvalid, OSError) as e:
            raise SourceError(path.name, f"Parquet data cannot be read ({e})") from None

    return Extract(wanted, chunks(), lambda n: f"row {n}", unread_columns=extras)


# --- JSON (pandas "columns" orient) ------------------------------------------------------------


def _open_json(source: Source, path: Path, raw: bytes) -> Extract:
    try:
        data = json.loads(raw)
    except UnicodeDecodeError as e:
        raise SourceError(path.name, f"not UTF-8 text ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise SourceError(path.name, f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise SourceError(
            path.name, 'expected one object in pandas "columns" orient: {"column": {"0": value, ...}, ...}'
        )
    columns = list(data)
    if not columns:
        raise SourceError(path.name, "the object has no columns")
    keys = list(data[columns[0]])
    for column in columns[1:]:
        missing = [k for k in keys if k not in data[column]]
        if missing:
            raise SourceError(path.name, "value missing", row=f'row key "{missing[0]}"', column=column)
        unexpected = [k for k in data[column] if k not in data[columns[0]]]
        if unexpected:
            raise SourceError(path.name, "value missing", row=f'row key "{unexpected[0]}"', column=columns[0])
    # pandas writes row keys "0", "1", ...; keep numeric order when they are numbers.
    if all(k.isdigit() for k in keys):
        keys.sort(key=int)
    rows = ([data[c][k] for c in columns] for k in keys)
    return Extract(columns, _rows_as_csv(rows), lambda n: f'row key "{keys[n - 1]}"')


# --- shared -----------------------------------------------------------------------------------


def _rows_as_csv(rows: Iterable[list[Any]]) -> Iterator[bytes]:
    """Python rows to CSV bytes, ROWS_PER_CHUNK at a time. None becomes an empty (NULL) field."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for count, row in enumerate(rows, start=1):
        writer.writerow([_csv_value(v) for v in row])
        if count % ROWS_PER_CHUNK == 0:
            yield buf.getvalue().encode()
            buf.seek(0)
            buf.truncate()
    if buf.tell():
        yield buf.getvalue().encode()


def _csv_value(value: Any) -> Any:
    # Spreadsheets store every number as a float: 12.0 must reach an integer column as 12.
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            return int(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat(sep=" ") if isinstance(value, datetime) else value.isoformat()
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return value
