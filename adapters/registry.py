"""The directory in PostgreSQL: current records, every version with its validity, snapshots as of
a time, searches; every change stored with its message to the registry topic."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
import structlog

from adapters import outbox
from adapters.labs import LabStore
from adapters.store import Store
from spotcheck.draws import Snapshot
from spotcheck.errors import NotFound
from spotcheck.registry import (
    Enterprise,
    Inspector,
    Record,
    RecordKind,
    RegistryChange,
    record_id,
    record_json,
)
from spotcheck.registry_demo import DEFAULT_SEED, generate
from spotcheck.settings import Settings
from spotcheck.topics import REGISTRY

log = structlog.get_logger(__name__)

Outcome = Literal["created", "updated", "unchanged"]
Publish = Callable[[asyncpg.Connection, list[RegistryChange]], Awaitable[None]]
_LOCK = 0x5C0_4E61  # pg_advisory_xact_lock(key, kind): one writer per kind at a time
_KIND_NO = {"enterprise": 1, "inspector": 2, "product": 3}


@dataclass(frozen=True)
class _Table:
    name: str
    id_column: str
    columns: tuple[str, ...]  # record fields copied into their own columns


TABLES: dict[str, _Table] = {
    "enterprise": _Table("enterprises", "enterprise_id", ("name", "district", "kind")),
    "inspector": _Table("inspectors", "inspector_id", ("name", "unit", "district")),
    "product": _Table("products", "product", ()),
}


@dataclass
class _Current:
    record: dict[str, Any]
    version: int
    removed: bool
    since: datetime


def publisher(settings: Settings) -> Publish:
    """Queues changes for the registry topic, keyed by record id, in the transaction that writes them."""
    topic = REGISTRY.full_name(settings)

    async def publish(conn: asyncpg.Connection, changes: list[RegistryChange]) -> None:
        await outbox.add(conn, [(topic, c.record_id, c.to_json()) for c in changes])

    return publish


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _rounds(changes: list[RegistryChange]) -> list[list[RegistryChange]]:
    """The changes in rounds where each record appears once (a batch may change one record twice)."""
    rounds: list[list[RegistryChange]] = []
    seen: list[set[str]] = []
    for change in changes:
        n = sum(1 for ids in seen if change.record_id in ids)
        if n == len(rounds):
            rounds.append([])
            seen.append(set())
        rounds[n].append(change)
        seen[n].add(change.record_id)
    return rounds


class RegistryStore:
    """The directory on the Store's pool. Writes are serialized per kind (an advisory lock), so
    versions never collide; each change is written and queued for the topic in one transaction."""

    def __init__(self, store: Store) -> None:
        self._store = store

    # --- writes -----------------------------------------------------------------------------

    async def _current(
        self, conn: asyncpg.Connection, kind: RecordKind, ids: list[str]
    ) -> dict[str, _Current]:
        t = TABLES[kind]
        rows = await conn.fetch(
            f"SELECT {t.id_column} AS id, record::text AS record, version, removed_at, updated_at"
            f" FROM {t.name} WHERE {t.id_column} = ANY($1)",
            ids,
        )
        return {
            r["id"]: _Current(
                json.loads(r["record"]), r["version"], r["removed_at"] is not None, r["updated_at"]
            )
            for r in rows
        }

    async def upsert(
        self, kind: RecordKind, records: Sequence[Record], changed_by: str, at: datetime, publish: Publish
    ) -> list[tuple[Outcome, RegistryChange | None]]:
        """Add or change records (in order); a record equal to the one in force changes nothing."""
        outcomes: list[tuple[Outcome, RegistryChange | None]] = []
        async with self._store.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", _LOCK, _KIND_NO[kind])
            current = await self._current(conn, kind, sorted({record_id(r) for r in records}))
            changes: list[RegistryChange] = []
            for record in records:
                rid, data = record_id(record), record_json(record)
                cur = current.get(rid)
                if cur is not None and not cur.removed and cur.record == data:
                    outcomes.append(("unchanged", None))
                    continue
                when = max(at, cur.since) if cur is not None else at
                version = cur.version + 1 if cur is not None else 1
                change = RegistryChange.make(kind, rid, "upsert", data, version, when, changed_by)
                outcomes.append(("updated" if cur is not None and not cur.removed else "created", change))
                changes.append(change)
                current[rid] = _Current(data, version, False, when)
            if changes:
                await publish(conn, changes)
                await self._write(conn, kind, changes)
        return outcomes

    async def remove(
        self,
        kind: RecordKind,
        rid: str,
        changed_by: str,
        at: datetime,
        publish: Publish,
        reason: str | None = None,
    ) -> RegistryChange:
        """Take a record out of the directory (its history stays); NotFound if it is not in it."""
        async with self._store.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", _LOCK, _KIND_NO[kind])
            cur = (await self._current(conn, kind, [rid])).get(rid)
            if cur is None or cur.removed:
                raise NotFound(f"no {kind} {rid} in the directory")
            change = RegistryChange.make(
                kind, rid, "remove", None, cur.version + 1, max(at, cur.since), changed_by, reason
            )
            await publish(conn, [change])
            await self._write(conn, kind, [change])
        return change

    async def _write(self, conn: asyncpg.Connection, kind: RecordKind, changes: list[RegistryChange]) -> None:
        t = TABLES[kind]
        cols = ", ".join((t.id_column, *t.columns, "record", "version", "updated_at", "removed_at"))
        marks = ", ".join(f"${n}" for n in range(1, len(t.columns) + 2))
        n = len(t.columns) + 2
        upsert = (
            f"INSERT INTO {t.name} ({cols}) VALUES ({marks}, ${n}::jsonb, ${n + 1}, ${n + 2}, NULL)"
            f" ON CONFLICT ({t.id_column}) DO UPDATE SET "
            + ", ".join(f"{c} = EXCLUDED.{c}" for c in (*t.columns, "record", "version", "updated_at"))
            + ", removed_at = NULL"
        )
        removal = (
            f"UPDATE {t.name} SET removed_at = $2, updated_at = $2, version = $3 WHERE {t.id_column} = $1"
        )
        for batch in _rounds(changes):
            await conn.executemany(
                "UPDATE registry_history SET valid_to = $3"
                " WHERE kind = $1 AND record_id = $2 AND valid_to IS NULL",
                [(kind, c.record_id, c.changed_at) for c in batch],
            )
            await conn.executemany(
                "INSERT INTO registry_history"
                " (kind, record_id, version, record, valid_from, change_id, changed_by, reason)"
                " VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8) ON CONFLICT (change_id) DO NOTHING",
                [
                    (
                        kind,
                        c.record_id,
                        c.version,
                        json.dumps(c.record) if c.record is not None else None,
                        c.changed_at,
                        c.change_id,
                        c.changed_by,
                        c.reason,
                    )
                    for c in batch
                ],
            )
            ups = [c for c in batch if c.record is not None]
            if ups:
                await conn.executemany(
                    upsert,
                    [
                        (
                            c.record_id,
                            *(str((c.record or {})[col]) for col in t.columns),
                            json.dumps(c.record),
                            c.version,
                            c.changed_at,
                        )
                        for c in ups
                    ],
                )
            gone = [(c.record_id, c.changed_at, c.version) for c in batch if c.record is None]
            if gone:
                await conn.executemany(removal, gone)

    # --- what the draw needs ----------------------------------------------------------------

    async def _records_at(
        self, conn: asyncpg.Connection, kind: RecordKind, as_of: datetime | None
    ) -> list[str]:
        if as_of is None:
            t = TABLES[kind]
            rows = await conn.fetch(
                f"SELECT record::text AS record FROM {t.name} WHERE removed_at IS NULL ORDER BY {t.id_column}"
            )
        else:
            rows = await conn.fetch(
                "SELECT record::text AS record FROM registry_history WHERE kind = $1 AND record IS NOT NULL"
                " AND valid_from <= $2 AND (valid_to IS NULL OR $2 < valid_to) ORDER BY record_id",
                kind,
                as_of,
            )
        return [r["record"] for r in rows]

    async def snapshot(self, as_of: datetime | None = None) -> Snapshot:
        """Enterprises and inspectors as they stood at `as_of` (None: now), labs as they are now."""
        async with self._store.pool.acquire() as conn:
            enterprises = await self._records_at(conn, "enterprise", as_of)
            inspectors = await self._records_at(conn, "inspector", as_of)
        labs = await LabStore(self._store).all()
        return Snapshot(
            enterprises=tuple(Enterprise.model_validate_json(e) for e in enterprises),
            inspectors=tuple(Inspector.model_validate_json(i) for i in inspectors),
            labs=tuple(labs),
            taken_at=as_of or datetime.now(UTC),
        )

    async def count_at(self, kind: RecordKind, as_of: datetime) -> int:
        async with self._store.pool.acquire() as conn:
            return len(await self._records_at(conn, kind, as_of))

    async def enterprise(self, enterprise_id: str) -> Enterprise:
        async with self._store.pool.acquire() as conn:
            raw = await conn.fetchval(
                "SELECT record::text FROM enterprises WHERE enterprise_id = $1 AND removed_at IS NULL",
                enterprise_id,
            )
        if raw is None:
            raise NotFound(f"no enterprise {enterprise_id} in the directory")
        return Enterprise.model_validate_json(raw)

    # --- the query side of the API ----------------------------------------------------------

    async def view(self, kind: RecordKind, rid: str) -> dict[str, Any]:
        """The record in force (or its removal) with every version, oldest first."""
        t = TABLES[kind]
        async with self._store.pool.acquire() as conn:
            row = await conn.fetchrow(
                f"SELECT record::text AS record, version, updated_at, removed_at FROM {t.name}"
                f" WHERE {t.id_column} = $1",
                rid,
            )
            if row is None:
                raise NotFound(f"no {kind} {rid} in the directory")
            history = await conn.fetch(
                "SELECT version, record::text AS record, valid_from, valid_to, change_id, changed_by, reason"
                " FROM registry_history WHERE kind = $1 AND record_id = $2 ORDER BY version",
                kind,
                rid,
            )
        return {
            "record": json.loads(row["record"]),
            "version": row["version"],
            "updated_at": _iso(row["updated_at"]),
            "removed_at": _iso(row["removed_at"]),
            "history": [
                {
                    "version": h["version"],
                    "record": json.loads(h["record"]) if h["record"] is not None else None,
                    "valid_from": _iso(h["valid_from"]),
                    "valid_to": _iso(h["valid_to"]),
                    "change_id": h["change_id"],
                    "changed_by": h["changed_by"],
                    "reason": h["reason"],
                }
                for h in history
            ],
        }

    async def search(
        self, kind: RecordKind, filters: dict[str, str], limit: int = 100, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        """Records in force matching every filter: `q` (a substring of the name or id), `district`,
        `kind` (exact), `unit` (a substring), `product` and `supplied_by` (listed in the record).
        Returns (one page, how many match in all)."""
        t = TABLES[kind]
        where = ["removed_at IS NULL"]
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        for name, value in filters.items():
            if name == "q":
                like = arg("%" + value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
                text = "record->>'name'" if kind != "product" else "record->>'display_name'"
                where.append(f"({t.id_column} ILIKE {like} OR coalesce({text}, '') ILIKE {like})")
            elif name == "unit":
                like = arg("%" + value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
                where.append(f"unit ILIKE {like}")
            elif name in ("district", "kind"):
                where.append(f"{name} = {arg(value)}")
            elif name in ("product", "supplied_by"):
                field = "products" if name == "product" else "supplied_by"
                where.append(
                    f"record @> jsonb_build_object('{field}', jsonb_build_array({arg(value)}::text))"
                )
            else:
                raise ValueError(f"unknown filter {name}")
        sql = (
            f"SELECT record::text AS record, version, updated_at, count(*) OVER () AS total FROM {t.name}"
            f" WHERE {' AND '.join(where)} ORDER BY {t.id_column} LIMIT {arg(limit)} OFFSET {arg(offset)}"
        )
        async with self._store.pool.acquire() as conn:
            rows = await conn.fetch(sql, *args)
        found = [
            json.loads(r["record"]) | {"version": r["version"], "updated_at": _iso(r["updated_at"])}
            for r in rows
        ]
        return found, (rows[0]["total"] if rows else 0)


async def load_demo_registry(store: Store, settings: Settings, seed: int = DEFAULT_SEED) -> dict[str, int]:
    """The demo directory (spotcheck.registry_demo) in the store, its changes on the topic.
    Idempotent: loading it again changes nothing. Returns how many records of each kind it holds."""
    demo = generate(seed)
    registry = RegistryStore(store)
    publish = publisher(settings)
    now = datetime.now(UTC)
    counts: dict[str, int] = {}
    batches: list[tuple[RecordKind, Sequence[Record]]] = [
        ("product", demo.products),
        ("enterprise", demo.enterprises),
        ("inspector", demo.inspectors),
    ]
    for kind, records in batches:
        outcomes = await registry.upsert(kind, records, "demo", now, publish)
        counts[f"{kind}s"] = len(records)
        log.info(
            "demo directory loaded",
            kind=kind,
            records=len(records),
            created=sum(1 for o, _ in outcomes if o == "created"),
            updated=sum(1 for o, _ in outcomes if o == "updated"),
        )
    return counts
