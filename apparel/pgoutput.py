"""A decoder for PostgreSQL's built-in logical replication output plugin, `pgoutput` (protocol 1).

Only what a change-data-capture consumer needs: transaction boundaries (Begin / Commit), the
relation descriptions that precede a table's first change (Relation), row changes
(Insert / Update / Delete / Truncate) with their column values in text format. Type, Origin and
logical decoding messages are recognised and skipped.

Column values stay `bytes` in PostgreSQL's text output format (what `COPY ... FROM` reads back),
`None` for SQL NULL and `UNCHANGED` for an unchanged TOASTed value the server did not send.
Reference: https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# pgoutput timestamps count microseconds from the PostgreSQL epoch.
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


class _Unchanged:
    """An unchanged TOASTed column ('u'): its value was not sent and must not overwrite the old one."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()

Value = bytes | None | _Unchanged

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_BEGIN = struct.Struct("!QqI")  # final lsn, commit timestamp, xid
_COMMIT = struct.Struct("!BQQq")  # flags, commit lsn, end lsn, commit timestamp


def pg_timestamp(micros: int) -> datetime:
    return PG_EPOCH + timedelta(microseconds=micros)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    commit_time: datetime
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    commit_lsn: int
    end_lsn: int
    commit_time: datetime


@dataclass(frozen=True, slots=True)
class Relation:
    relid: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[str, ...]
    key_columns: tuple[str, ...]
    type_oids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Insert:
    relid: int
    new: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Update:
    relid: int
    new: tuple[Value, ...]
    # The old key ('K', when the replica identity changed) or the whole old row ('O', REPLICA IDENTITY FULL).
    old: tuple[Value, ...] | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    relid: int
    # The key columns (others None) with the default replica identity, the whole row with FULL.
    old: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Truncate:
    relids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


Message = Begin | Commit | Relation | Insert | Update | Delete | Truncate | None


class DecodeError(ValueError):
    """The bytes are not a pgoutput protocol 1 message this decoder knows."""


def _string(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.index(0, pos)
    return buf[pos:end].decode(), end + 1


def _tuple(buf: bytes, pos: int) -> tuple[tuple[Value, ...], int]:
    # The hot path of the stream (once per changed row): locals only, one unpack per text value.
    n = (buf[pos] << 8) | buf[pos + 1]
    pos += 2
    values: list[Value] = []
    append = values.append
    unpack = _I32.unpack_from
    for _ in range(n):
        kind = buf[pos]
        if kind == 0x74:  # 't': text value
            end = pos + 5 + unpack(buf, pos + 1)[0]
            append(buf[pos + 5 : end])
            pos = end
        elif kind == 0x6E:  # 'n': NULL
            append(None)
            pos += 1
        elif kind == 0x75:  # 'u': unchanged TOASTed value
            append(UNCHANGED)
            pos += 1
        elif kind == 0x62:  # 'b': binary, only with the `binary` option, which we never ask for
            raise DecodeError("binary tuple values are not supported (start replication without binary)")
        else:
            raise DecodeError(f"unknown tuple value kind {kind!r} at byte {pos}")
    return tuple(values), pos


def decode(buf: bytes) -> Message:
    """One pgoutput message; None for the kinds a mirror has no use for (Type, Origin, Message)."""
    kind = buf[0]
    if kind == 0x49:  # 'I'
        (relid,) = _U32.unpack_from(buf, 1)
        if buf[5] != 0x4E:
            raise DecodeError(f"insert without a new tuple (got {chr(buf[5])!r})")
        new, _ = _tuple(buf, 6)
        return Insert(relid, new)
    if kind == 0x55:  # 'U'
        (relid,) = _U32.unpack_from(buf, 1)
        pos = 5
        old = None
        if buf[pos] in (0x4B, 0x4F):  # 'K' old key / 'O' old row
            old, pos = _tuple(buf, pos + 1)
        if buf[pos] != 0x4E:
            raise DecodeError(f"update without a new tuple (got {chr(buf[pos])!r})")
        new, _ = _tuple(buf, pos + 1)
        return Update(relid, new, old)
    if kind == 0x44:  # 'D'
        (relid,) = _U32.unpack_from(buf, 1)
        if buf[5] not in (0x4B, 0x4F):
            raise DecodeError(f"delete without an old key or row (got {chr(buf[5])!r})")
        old, _ = _tuple(buf, 6)
        return Delete(relid, old)
    if kind == 0x42:  # 'B'
        final_lsn, ts, xid = _BEGIN.unpack_from(buf, 1)
        return Begin(final_lsn, pg_timestamp(ts), xid)
    if kind == 0x43:  # 'C'
        _flags, commit_lsn, end_lsn, ts = _COMMIT.unpack_from(buf, 1)
        return Commit(commit_lsn, end_lsn, pg_timestamp(ts))
    if kind == 0x52:  # 'R'
        (relid,) = _U32.unpack_from(buf, 1)
        namespace, pos = _string(buf, 5)
        name, pos = _string(buf, pos)
        identity = chr(buf[pos])
        (ncols,) = _I16.unpack_from(buf, pos + 1)
        pos += 3
        columns, keys, oids = [], [], []
        for _ in range(ncols):
            flags = buf[pos]
            column, pos = _string(buf, pos + 1)
            oid, _typmod = struct.unpack_from("!Ii", buf, pos)
            pos += 8
            columns.append(column)
            oids.append(oid)
            if flags & 1:
                keys.append(column)
        return Relation(relid, namespace, name, identity, tuple(columns), tuple(keys), tuple(oids))
    if kind == 0x54:  # 'T'
        (count,) = _U32.unpack_from(buf, 1)
        options = buf[5]
        relids = struct.unpack_from(f"!{count}I", buf, 6)
        return Truncate(tuple(relids), bool(options & 1), bool(options & 2))
    if kind in (0x59, 0x4F, 0x4D):  # 'Y' type, 'O' origin, 'M' logical decoding message
        return None
    raise DecodeError(f"unknown pgoutput message kind {chr(kind)!r}")
