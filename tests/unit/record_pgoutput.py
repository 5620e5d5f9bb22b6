"""Records the pgoutput messages that tests/unit/test_pgoutput.py decodes.

`python -m tests.unit.record_pgoutput` starts a throw-away embedded PostgreSQL, runs the statements
of STEPS against a table published for logical replication, reads what the server's `pgoutput`
plugin wrote for them (`pg_logical_slot_get_binary_changes`, protocol 1, text values, the way the
stream asks) and writes them as hex to `data/pgoutput_messages.json`, one list per step. The test
then needs no server: it checks the decoder against bytes a real server produced.
"""

from __future__ import annotations

import json
import secrets
import tempfile
from pathlib import Path

import psycopg

from apparel.embedded_pg import EmbeddedServer, free_port

OUT = Path(__file__).parent / "data" / "pgoutput_messages.json"

SETUP = [
    "create schema shop",
    # `note` is long enough to be TOASTed (stored out of line, uncompressible), so an update that
    # leaves it alone does not send it: the 'u' value.
    "create table shop.item (id int primary key, name text, price numeric(10, 2), note text,"
    " changed_at timestamptz)",
    "alter table shop.item alter column note set storage external",
    "create table shop.ledger (id int primary key, amount int)",
    "alter table shop.ledger replica identity full",
    "create publication rec for table shop.item, shop.ledger",
]

# One transaction each: the step's name, then its statements.
STEPS = {
    "insert": [
        "insert into shop.item values (1, 'Kemeja', 149000.50, null, '2026-12-08 01:02:03.456789+00')",
    ],
    "update_toast_unchanged": [
        "insert into shop.item values (2, 'Batik', 10, repeat('x', 2500), null)",
        "update shop.item set price = 12 where id = 2",
    ],
    "update_key": ["update shop.item set id = 3 where id = 1"],
    "delete": ["delete from shop.item where id = 3"],
    "full_identity": [
        "insert into shop.ledger values (7, 100)",
        "update shop.ledger set amount = 90 where id = 7",
        "delete from shop.ledger where id = 7",
    ],
    "truncate": ["truncate shop.item, shop.ledger"],
}


def record() -> dict[str, list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedServer(Path(tmp) / "pg", free_port(), secrets.token_urlsafe(18))
        server.start()
        try:
            with psycopg.connect(server.url(), autocommit=True) as conn:
                for statement in SETUP:
                    conn.execute(statement)
                conn.execute("select pg_create_logical_replication_slot('rec', 'pgoutput')")
                recorded = {}
                for step, statements in STEPS.items():
                    with conn.transaction():
                        for statement in statements:
                            conn.execute(statement)
                    rows = conn.execute(
                        "select data from pg_logical_slot_get_binary_changes('rec', null, null,"
                        " 'proto_version', '1', 'publication_names', 'rec')"
                    ).fetchall()
                    recorded[step] = [bytes(data).hex() for (data,) in rows]
                conn.execute("select pg_drop_replication_slot('rec')")
            return recorded
        finally:
            server.destroy()


if __name__ == "__main__":
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(record(), indent=1) + "\n")
    print(f"wrote {OUT}")
