"""Enforcement cases in the stream processor: inputs re-keyed by enterprise, one table of each
enterprise's open cases, a timer for the legal deadlines, action events out, case tasks created.

Verdicts (keyed by task) that may concern a case, and refusals to be sampled (custody steps, with
their task as stored), are re-keyed by enterprise onto the case-inputs topic, where the API also
puts objections and notices received. One agent reads it and keeps the table `cases`:
enterprise_id -> {"partition", "revision", "cases": {case_id: Case}, "failures": [times],
"pending": [task orders not created yet]}, for enterprises with an open case or an order waiting
(PostgreSQL knows the closed cases). It feeds the pure state machine (spotcheck.cases) and, in one
PostgreSQL transaction per input, stores the case events, the tasks the cases ordered, the
enterprise's whole value as a snapshot (one revision more) and the messages for the actions and
tasks topics (the outbox); then it records the new value in the table. The snapshot is the record:
an input meets the table's value only when its revision is the snapshot's, else the snapshot's.

Deadlines follow streams/deadlines.py: every `case_check_seconds` a timer walks the keys of the
partitions this worker is ACTIVE for and, where a deadline passed or an order waits, sends a check
input to that key's own partition; the agent applies it inside stream iteration. Timed events are
dated at their deadline, so checking late or twice changes nothing either. After each recovery the
enterprises whose open snapshot the table lacks or holds behind get a check (which loads the
snapshot), and the verdicts and refusals PostgreSQL holds that no snapshot applied are fed again
(streams/rebuild.py); feeding one twice changes nothing (`Case.applied`, closed cases).
"""

from __future__ import annotations

import asyncio
import copy
import functools
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import faust
import structlog
from pydantic import ValidationError

from adapters import outbox
from adapters.cases import CaseStore
from adapters.registry import RegistryStore
from adapters.store import Store, translate
from adapters.stream_state import StreamRecord
from spotcheck.case_model import (
    TERMINAL,
    Case,
    CaseEvent,
    CaseInput,
    InputKind,
    TaskOrder,
    case_id_for,
    is_case_task,
)
from spotcheck.case_rules import load_rules
from spotcheck.case_tasks import task_for_order
from spotcheck.cases import advance, next_deadline, open_case, transition
from spotcheck.clock import clock_for
from spotcheck.custody import CustodyStep, TaskState
from spotcheck.errors import InvalidInput, NotFound, SpotcheckError, is_retriable
from spotcheck.events import Outcome, SamplingTask, Verdict, describe_validation_error
from spotcheck.registry import EnterpriseKind
from spotcheck.settings import Settings
from spotcheck.topics import ACTIONS, CASE_INPUTS, CUSTODY, TASKS, VERDICTS
from streams.rebuild import Rebuild, partition_of, patiently

log = structlog.get_logger(__name__)

DeadLetterFn = Callable[[faust.EventT, str], Awaitable[None]]


def _key(event: faust.EventT) -> str:
    return event.key.decode() if isinstance(event.key, bytes) else str(event.key)


def verdict_input(verdict: Verdict) -> CaseInput | None:
    """The case input of a verdict, or None when it cannot concern a case (a first qualified one)."""
    if (
        verdict.outcome is not Outcome.UNQUALIFIED
        and not is_case_task(verdict.task_id)
        and verdict.version == 1
    ):
        return None
    return CaseInput(
        input_id=f"verdict:{verdict.verdict_id}",
        kind=InputKind.VERDICT,
        enterprise_id=verdict.enterprise_id,
        task_id=verdict.task_id,
        verdict_id=verdict.verdict_id,
        version=verdict.version,
        outcome=verdict.outcome,
        failing_items=tuple(j.item for j in verdict.items if j.judgement == "fail"),
        product=verdict.product,
        spec=verdict.spec,
        items=tuple(j.item for j in verdict.items),
        lab_id=verdict.lab_id,
        at=verdict.decided_at,
    )


def brief(task: SamplingTask) -> dict[str, Any]:
    """What a refusal's case input takes of its task."""
    return task.model_dump(mode="json", include={"enterprise_id", "product", "spec", "items", "lab_id"})


def _revision(value: dict[str, Any] | None) -> int:
    return int(value.get("revision", 0)) if value is not None else 0


def _open(state: dict[str, Any]) -> bool:
    return bool(state["cases"]) or bool(state["pending"])


def refusal_input(step: CustodyStep, task: dict[str, Any]) -> CaseInput:
    return CaseInput(
        input_id=f"refusal:{step.step_id}",
        kind=InputKind.REFUSAL,
        enterprise_id=task["enterprise_id"],
        task_id=step.task_id,
        product=task["product"],
        spec=task["spec"],
        items=tuple(task["items"]),
        lab_id=task["lab_id"],
        at=step.at,
        by=step.actor,
        reason=step.reason,
    )


def attach(app: faust.App, settings: Settings, store: Store, dead_letter: DeadLetterFn) -> None:
    """Register the case agents, tables and timer on `app`."""
    zone, rules, now = (
        ZoneInfo(settings.timezone),
        load_rules(settings.case_rules_file),
        clock_for(settings.clock_file),
    )
    inputs_name, tasks_name = CASE_INPUTS.full_name(settings), TASKS.full_name(settings)
    actions_name = ACTIONS.full_name(settings)
    verdicts = app.topic(VERDICTS.full_name(settings), key_serializer="raw", value_serializer="raw")
    tasks_and_custody = app.topic(
        tasks_name, CUSTODY.full_name(settings), key_serializer="raw", value_serializer="raw"
    )
    inputs = app.topic(inputs_name, key_serializer="raw", value_serializer="raw")
    task_index = app.Table("case-task-index")  # task_id -> {"refusals": [step JSON]}: waiting for their task
    table = app.Table("cases")  # enterprise_id -> see the module's doc
    registry, record, case_store = RegistryStore(store), StreamRecord(store), CaseStore(store)

    async def forward(case_input: CaseInput, partition: int | None = None) -> None:
        await inputs.send(
            key=case_input.enterprise_id.encode(), value=case_input.to_json(), partition=partition
        )

    @app.agent(verdicts)
    async def route_verdicts(stream: faust.StreamT[bytes]) -> None:
        """Verdicts that may concern a case, re-keyed by enterprise."""
        async for event in stream.events():
            try:
                found = verdict_input(Verdict.from_json(event.value))
            except ValueError as exc:  # the verdicts' owner dead-letters it
                log.debug("verdict skipped: not readable", reason=describe_validation_error(exc))
                continue
            if found is not None:
                await forward(found)

    @app.agent(tasks_and_custody)
    async def route_refusals(stream: faust.StreamT[bytes]) -> None:
        """Refusals to be sampled, with their task's enterprise and product, re-keyed by enterprise. A
        refusal of a task not stored (yet) waits for the task on the tasks topic."""
        async for event in stream.events():
            try:
                if event.message.topic == tasks_name:
                    task = SamplingTask.from_json(event.value)
                    known = task_index.get(task.task_id)
                    if known is not None:
                        for waiting in known.get("refusals", []):
                            await forward(
                                refusal_input(CustodyStep.model_validate_json(waiting), brief(task))
                            )
                        del task_index[task.task_id]
                    continue
                step = CustodyStep.from_json(event.value)
                if step.step is not TaskState.REFUSED:
                    continue
                stored = await patiently("refusal routing", functools.partial(record.task, step.task_id))
                if stored is not None:
                    await forward(refusal_input(step, brief(stored)))
                else:  # the step came before its task: it waits for it
                    waiting = list((task_index.get(step.task_id) or {}).get("refusals", []))
                    task_index[step.task_id] = {"refusals": [*waiting, step.to_json().decode()]}
            except ValueError as exc:  # the owners (verdict and custody processors) dead-letter it
                log.debug("record skipped: not readable", topic=event.message.topic, reason=str(exc))
                continue
            except Exception:  # noqa: BLE001 - one bad event must not stop the agent
                log.exception("refusal not routed", topic=event.message.topic)

    async def upstream_of(enterprise_id: str) -> list[str]:
        """A filling station's suppliers: its depots, then their refineries (as the directory has them)."""
        try:
            station = await registry.enterprise(enterprise_id)
        except NotFound:
            return []
        if station.kind is not EnterpriseKind.FILLING_STATION:
            return []
        found: list[str] = []
        for depot_id in station.supplied_by:
            found.append(depot_id)
            try:
                depot = await registry.enterprise(depot_id)
            except NotFound:
                continue
            found += [r for r in depot.supplied_by if r not in found]
        return [e for e in dict.fromkeys(found) if e != enterprise_id]

    async def task_for(conn: asyncpg.Connection, order: TaskOrder, at: datetime) -> SamplingTask | None:
        """The task an order becomes, None when it was made already (stored, its message queued)."""
        if await record.stored_tasks(conn, [order.task_id]):
            return None
        failed = (await record.stored_tasks(conn, [order.from_task_id])).get(order.from_task_id)
        return task_for_order(order, await registry.snapshot(), failed, at)

    async def apply(
        state: dict[str, Any], given: CaseInput, at: datetime, conn: asyncpg.Connection
    ) -> list[CaseEvent]:
        """The case events `given` makes; `state` (the enterprise's table value) is updated in place."""
        cases = {cid: Case.from_json_dict(c) for cid, c in state["cases"].items()}
        events: list[CaseEvent] = []
        if given.kind is InputKind.CHECK:
            for cid, case in cases.items():
                cases[cid], fired = advance(case, rules, zone, at)
                events += fired
        elif given.kind in (InputKind.OBJECTION, InputKind.NOTICE_RECEIVED):
            if given.case_id not in cases:
                closed = bool(given.case_id and await record.known_cases(conn, [given.case_id]))
                raise InvalidInput(
                    f"case {given.case_id} is {'closed' if closed else 'unknown'}", field="case_id"
                )
            assert given.case_id is not None
            cases[given.case_id], events = transition(cases[given.case_id], given, rules, zone, at)
        else:
            assert given.task_id is not None
            target = next((c for c in cases.values() if given.task_id in (c.awaited_task, c.task_id)), None)
            if target is not None:
                cases[target.case_id], events = transition(target, given, rules, zone, at)
            elif is_case_task(given.task_id) or await record.known_cases(conn, [case_id_for(given.task_id)]):
                log.info("input for a case that is closed or waits for no such task", task_id=given.task_id)
            elif given.kind is InputKind.REFUSAL or given.outcome is Outcome.UNQUALIFIED:
                failures = [datetime.fromisoformat(f) for f in state["failures"]]
                case, events = open_case(
                    given, rules, zone, at, failures=failures, upstream=await upstream_of(given.enterprise_id)
                )
                cases[case.case_id] = case
                state["failures"] = [*state["failures"], at.isoformat()][-50:]
        for event in events:
            if event.order is not None:
                state["pending"] = [*state["pending"], event.order.model_dump(mode="json")]
        state["cases"] = {cid: c.to_json_dict() for cid, c in cases.items() if c.state not in TERMINAL}
        return events

    async def dispatch(
        state: dict[str, Any], conn: asyncpg.Connection, at: datetime
    ) -> tuple[list[SamplingTask], list[str]]:
        """The tasks the cases ordered, made now; an order that cannot be made yet waits for the next
        check (with the reason, for a dead letter)."""
        left, made, letters = [], [], []
        for raw_order in state["pending"]:
            order = TaskOrder.model_validate(raw_order)
            try:
                task = await task_for(conn, order, at)
            except InvalidInput as exc:
                left.append(raw_order)
                letters.append(f"task {order.task_id} of a case cannot be made yet: {exc}")
                continue
            except SpotcheckError as exc:
                left.append(raw_order)
                log.warning(
                    "case task not created; next check tries again", task_id=order.task_id, error=str(exc)
                )
                continue
            if task is not None:
                made.append(task)
        state["pending"] = left
        return made, letters

    async def take(event: faust.EventT, enterprise: str) -> None:
        """One input, its effects stored in one transaction with the enterprise's snapshot, then the
        table. An input the cases refuse is still remembered as taken before it is dead-lettered."""
        given = CaseInput.from_json(event.value)
        if given.enterprise_id != enterprise:
            raise InvalidInput(f"keyed {enterprise!r}, but the input is of {given.enterprise_id}")
        cached = table.get(enterprise)
        at = now()
        refused: InvalidInput | None = None
        async with store.transaction() as conn:
            held = await record.hold_snapshot(
                conn, enterprise, _revision(cached) if cached is not None else None
            )
            base = held.state if held.state is not None else cached or {}
            state: dict[str, Any] = {
                "cases": dict(base.get("cases", {})),
                "failures": list(base.get("failures", [])),
                "pending": list(base.get("pending", [])),
            }
            before = copy.deepcopy(state)
            try:
                events = await apply(state, given, at, conn)
            except InvalidInput as exc:
                refused, events, state = exc, [], copy.deepcopy(before)
            made, letters = await dispatch(state, conn, at)
            changed = state != before
            revision = max(held.revision, _revision(cached)) + (1 if changed else 0)
            remember = (
                given.kind in (InputKind.VERDICT, InputKind.REFUSAL) and given.input_id not in held.applied
            )
            if changed or remember:
                await case_store.save(events, conn)
                await store.save_tasks(made, conn)
                await outbox.add(
                    conn,
                    [(actions_name, e.enterprise_id, e.to_json()) for e in events]
                    + [(tasks_name, t.task_id, t.to_json()) for t in made],
                )
                applied = [*held.applied, given.input_id] if remember else held.applied
                await record.save_snapshot(
                    conn, enterprise, revision, state, open_=_open(state), applied=applied
                )
        value = {**state, "partition": event.message.partition, "revision": revision}
        if _open(state):
            if value != cached:
                table[enterprise] = value
        elif cached is not None:
            del table[enterprise]  # nothing open: the snapshot keeps the rest
        for e in events:
            log.info("case event", case_id=e.case_id, kind=e.kind.value, state=e.state.value)
        for t in made:
            log.info("case task created", task_id=t.task_id, kind=t.kind.value, lab_id=t.lab_id)
        for letter in letters:
            await dead_letter(event, letter)
        if refused is not None:
            raise refused

    @app.agent(inputs)
    async def run_cases(stream: faust.StreamT[bytes]) -> None:
        """Apply each input to its enterprise's cases; publish the events; record the new state. The
        database (directory look-ups) failing or not started yet is waited out: no case is lost to it."""
        async for event in stream.events():
            enterprise = _key(event)
            attempt = 0
            while True:
                try:
                    await take(event, enterprise)
                except ValidationError as exc:
                    await dead_letter(event, f"invalid case input: {describe_validation_error(exc)}")
                except InvalidInput as exc:
                    await dead_letter(event, f"case input refused: {exc}")
                except Exception as exc:  # noqa: BLE001 - one bad event must not stop the agent
                    if is_retriable(exc) or is_retriable(translate(exc)):  # an outage: waited out
                        attempt += 1
                        if attempt == 1 or attempt % 20 == 0:
                            log.warning(
                                "case input waits for the database", enterprise_id=enterprise, error=str(exc)
                            )
                        await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
                        continue
                    log.exception("case input failed", enterprise_id=enterprise)
                    await dead_letter(event, f"case processor failed on this input: {exc!r}")
                break

    def wants_check(value: dict[str, Any], at: datetime) -> bool:
        if value.get("pending"):
            return True
        for raw_case in value["cases"].values():
            due = next_deadline(Case.from_json_dict(raw_case))
            if due is not None and due < at:
                return True
        return False

    @app.timer(settings.case_check_seconds)
    async def check_cases() -> None:
        """Ask, on each enterprise's own partition, for the deadlines that passed (active partitions only)."""
        active = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == inputs_name}
        if not active:
            return
        try:
            at = now()
        except InvalidInput as exc:
            log.error("no time to check the cases by", error=str(exc))
            return
        for enterprise, value in list(table.items()):
            if value["partition"] not in active:
                continue  # a standby replica: its active owner checks
            try:
                due = wants_check(value, at)
            except ValidationError:
                log.exception("unreadable case state", enterprise_id=enterprise)
                continue
            if due:
                check = CaseInput(
                    input_id=f"check:{at.isoformat()}", kind=InputKind.CHECK, enterprise_id=enterprise, at=at
                )
                await inputs.send(
                    key=str(enterprise).encode(), value=check.to_json(), partition=value["partition"]
                )

    async def sweep(active: set[int], partitions: int) -> dict[str, int]:
        """A check for each enterprise of `active` partitions whose open snapshot the table lacks or
        holds behind (the check loads it), then the inputs PostgreSQL holds that no snapshot applied."""
        if not active:
            return {"keys": len(table), "seeds": 0, "refed": 0}
        opened = await record.open_snapshots()
        verdicts_left, refusals_left = await record.unapplied_case_facts(
            settings.stream_refeed_margin_hours * 3600
        )
        at = now()

        def partition(enterprise: str) -> int:
            value = table.get(enterprise)
            return int(value["partition"]) if value is not None else partition_of(enterprise, partitions)

        seeds = refed = 0
        for enterprise, revision in opened.items():
            value = table.get(enterprise)
            if partition(enterprise) not in active or (value is not None and _revision(value) >= revision):
                continue
            check = CaseInput(
                input_id=f"check:{at.isoformat()}", kind=InputKind.CHECK, enterprise_id=enterprise, at=at
            )
            await forward(check, partition(enterprise))
            seeds += 1
        fed: list[tuple[datetime, CaseInput]] = [
            (s.at, refusal_input(s, brief(t))) for s, t in refusals_left
        ] + [(v.decided_at, i) for v in verdicts_left if (i := verdict_input(v)) is not None]
        for _, given in sorted(fed, key=lambda pair: pair[0]):
            if partition(given.enterprise_id) in active:
                await forward(given, partition(given.enterprise_id))
                refed += 1
        return {"keys": len(table), "open": len(opened), "seeds": seeds, "refed": refed}

    Rebuild(app, settings, store, table, inputs_name, sweep)
