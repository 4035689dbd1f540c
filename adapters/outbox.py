"""The transactional outbox: messages the platform owes the broker, written to PostgreSQL in the
transaction that decided them (the relay in producers/relay.py publishes them from there)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import asyncpg

if TYPE_CHECKING:
    from adapters.store import Store

CHANNEL = "spotcheck_outbox"  # NOTIFY channel: the relay wakes up when a transaction adds rows

Message = tuple[str, str | bytes | None, bytes]
"""(full topic name, key, value)"""


def _row(message: Message) -> tuple[str, bytes | None, bytes]:
    topic, key, value = message
    return topic, key.encode() if isinstance(key, str) else key, value


async def add(conn: asyncpg.Connection, messages: Iterable[Message]) -> int:
    """Queue `messages` in the caller's transaction: they reach the broker only if it commits, and
    then certainly (at least once, in this order). Returns how many were queued."""
    rows = [_row(m) for m in messages]
    if not rows:
        return 0
    if len(rows) == 1:
        await conn.execute("INSERT INTO outbox (topic, key, value) VALUES ($1, $2, $3)", *rows[0])
    else:
        await conn.copy_records_to_table("outbox", records=rows, columns=("topic", "key", "value"))
    await conn.execute("SELECT pg_notify($1, '')", CHANNEL)
    return len(rows)


class Outbox:
    """`send` for code that has nothing else to write: the messages in a transaction of their own."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def send(self, messages: Iterable[Message]) -> int:
        rows = list(messages)
        if not rows:
            return 0
        async with self._store.transaction() as conn:
            return await add(conn, rows)
