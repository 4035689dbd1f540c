"""The scheduler: runs double-random draws against the directory, turns selections into sampling tasks
on the tasks topic, publishes each draw on the draws topic, cancels draws, and draws campaign rounds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import structlog

from adapters import outbox
from adapters.draws import DrawStore
from adapters.registry import RegistryStore
from adapters.store import Store
from spotcheck.custody import CustodyStep, Role, TaskState, initial_state, sampling_due
from spotcheck.draws import DrawResult, Plan, Snapshot, draw, new_seed
from spotcheck.errors import InvalidInput, SpotcheckError
from spotcheck.events import SamplingTask, TaskKind
from spotcheck.scheduling import (
    Campaign,
    DrawRecord,
    DrawRequest,
    DrawStatus,
    draw_id_for,
    due_campaigns,
    with_facts,
)
from spotcheck.settings import Settings
from spotcheck.tasks import TaskRequest, build_task
from spotcheck.topics import CUSTODY, DRAWS, TASKS

log = structlog.get_logger(__name__)

CANCELLABLE = frozenset({TaskState.PLANNED, TaskState.ASSIGNED, TaskState.SAMPLING})
SCHEDULER = "scheduler"


class DrawConflict(SpotcheckError):
    """A draw that cannot be cancelled (its samples are taken) or redrawn (not cancelled)."""


class Scheduler:
    """Draws on the shared store (tasks and records leave through its outbox); `now` is injectable."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.store = store
        self.now = now
        self.zone = ZoneInfo(settings.timezone)
        self.draws = DrawStore(store)
        self.registry = RegistryStore(store)

    async def run(self, request: DrawRequest, by: str, campaign_id: str | None = None) -> DrawRecord:
        """Draw, create the tasks, store and publish; InvalidInput for a plan the catalog refuses."""
        if request.redraw_of is not None:
            original = await self.draws.record(request.redraw_of)
            if original.status is not DrawStatus.CANCELLED:
                raise DrawConflict(
                    f"draw {original.draw_id} is {original.status}; cancel it before redrawing"
                )
            successor = await self.draws.redrawn_by(original.draw_id)
            if successor is not None:
                raise DrawConflict(f"draw {original.draw_id} was already redrawn as {successor}")
        if campaign_id is not None and await self.draws.round_drawn(campaign_id, request.plan.draw_date):
            raise DrawConflict(f"campaign {campaign_id} was already drawn for {request.plan.draw_date}")
        now = self.now()
        snapshot = await self.registry.snapshot()
        history = await self.draws.last_inspectors()
        plan = request.plan
        if request.platform_facts:
            facts = await self.draws.enterprise_facts(now, self.settings.timezone)
            plan = with_facts(plan, snapshot, facts)
        seed = bytes.fromhex(request.seed) if request.seed else new_seed()
        result = await asyncio.to_thread(draw, plan, snapshot, seed, history)
        draw_id = draw_id_for(await self.draws.next_number(), now.astimezone(self.zone))
        tasks = await self._tasks(result, snapshot, draw_id, campaign_id, now)
        record = DrawRecord(
            draw_id=draw_id,
            status=DrawStatus.PUBLISHED,
            plan_id=plan.plan_id,
            draw_date=plan.draw_date,
            campaign_id=campaign_id,
            seed=result.seed,
            snapshot_digest=result.snapshot_digest,
            plan_digest=result.plan_digest,
            history_digest=result.history_digest,
            result_digest=result.digest(),
            task_ids=tuple(t.task_id for t in tasks),
            selected=len(result.selections),
            unfilled=len(result.unfilled),
            excluded=len(result.excluded),
            drawn_at=now,
            drawn_by=by,
            redraw_of=request.redraw_of,
            redraw_reason=request.reason if request.redraw_of else None,
        )
        tasks_topic = TASKS.full_name(self.settings)
        await self.draws.save(
            record,
            requested=request.plan,
            plan=plan,
            snapshot=snapshot,
            history=history,
            result=result,
            tasks=tasks,
            messages=[(tasks_topic, t.task_id, t.to_json()) for t in tasks] + [self._record_message(record)],
        )
        log.info(
            "draw published",
            draw_id=draw_id,
            plan_id=plan.plan_id,
            tasks=len(tasks),
            unfilled=record.unfilled,
        )
        return record

    async def _tasks(
        self, result: DrawResult, snapshot: Snapshot, draw_id: str, campaign_id: str | None, now: datetime
    ) -> list[SamplingTask]:
        labs = {lab.lab_id: lab for lab in snapshot.labs}
        kind = TaskKind.SPECIAL if campaign_id else TaskKind.RANDOM
        due = sampling_due(now, self.settings.sampling_days, self.zone)
        tasks = []
        for selection in result.selections:
            request = TaskRequest(
                enterprise_id=selection.enterprise_id,
                product=selection.product,
                spec=selection.spec,
                items=list(selection.items),
                lab_id=selection.lab_id,
                kind=kind,
                campaign_id=campaign_id,
                inspectors=list(selection.inspectors),
            )
            task = build_task(
                request, await self.store.next_task_number(), now, self.zone, labs[selection.lab_id]
            )
            tasks.append(task.model_copy(update={"draw_id": draw_id, "sampling_due": due}))
        return tasks

    def _record_message(self, record: DrawRecord) -> outbox.Message:
        return (DRAWS.full_name(self.settings), record.draw_id, record.to_json())

    async def cancel(self, draw_id: str, reason: str, by: str) -> DrawRecord:
        """Cancel a draw whose samples are not taken yet: its tasks get a `cancelled` custody step."""
        if not reason.strip():
            raise InvalidInput("a cancellation gives the reason", field="reason")
        record = await self.draws.record(draw_id)
        if record.status is DrawStatus.CANCELLED:
            raise DrawConflict(f"draw {draw_id} is already cancelled ({record.cancel_reason})")
        states = await self.draws.task_states(record.task_ids)
        tasks = await self.draws.tasks(record.task_ids)
        current = {t.task_id: TaskState(states[t.task_id] or initial_state(t)) for t in tasks}
        taken = sorted(task_id for task_id, state in current.items() if state not in CANCELLABLE)
        if taken:
            raise DrawConflict(
                f"draw {draw_id} cannot be cancelled: {len(taken)} task(s) are past sampling "
                f"({', '.join(f'{t} {current[t]}' for t in taken[:5])})"
            )
        now = self.now()
        steps = [
            CustodyStep(
                step_id=f"{draw_id}/cancel/{task_id}",
                task_id=task_id,
                step=TaskState.CANCELLED,
                actor=by,
                actor_role=Role.PLANNER if by != SCHEDULER else Role.SYSTEM,
                at=now,
                reason=f"draw {draw_id} cancelled: {reason}",
            )
            for task_id in sorted(current)
        ]
        custody = CUSTODY.full_name(self.settings)
        cancelled = record.model_copy(
            update={"status": DrawStatus.CANCELLED, "cancelled_at": now, "cancel_reason": reason}
        )
        await self.draws.cancel(
            cancelled,
            [(custody, s.task_id, s.to_json()) for s in steps] + [self._record_message(cancelled)],
        )
        log.info("draw cancelled", draw_id=draw_id, tasks=len(steps), reason=reason)
        return cancelled

    async def redraw(self, draw_id: str, reason: str, by: str, seed: str | None = None) -> DrawRecord:
        """Cancel a draw (if it is not yet) and draw its plan again with a new seed."""
        record = await self.draws.record(draw_id)
        if record.status is DrawStatus.PUBLISHED:
            await self.cancel(draw_id, reason, by)
        plan = await self.draws.requested_plan(draw_id)
        request = DrawRequest(plan=plan, seed=seed, redraw_of=draw_id, reason=reason)
        return await self.run(request, by, campaign_id=record.campaign_id)

    # --- campaigns --------------------------------------------------------------------------

    async def run_due_campaigns(self, today: date | None = None) -> list[DrawRecord]:
        """Draw every campaign round that is due (at most one per campaign); a round that fails is logged
        and tried again next time, the others go on."""
        day = today or self.now().astimezone(self.zone).date()
        done: list[DrawRecord] = []
        async with self.draws.campaign_lock() as mine:
            if not mine:
                return done  # another scheduler is drawing the rounds
            due = due_campaigns(await self.draws.campaigns(), await self.draws.last_rounds(), day)
            for campaign, round_day in due:
                try:
                    done.append(await self.run_round(campaign, round_day))
                except SpotcheckError as exc:
                    log.warning("campaign round not drawn", campaign_id=campaign.campaign_id, error=str(exc))
        return done

    async def run_round(self, campaign: Campaign, day: date) -> DrawRecord:
        plan: Plan = campaign.plan_for(day)
        return await self.run(DrawRequest(plan=plan), SCHEDULER, campaign_id=campaign.campaign_id)

    async def run_campaigns_forever(self, every_seconds: float = 60.0) -> None:
        """The campaign loop of the scheduler worker: look for due rounds every `every_seconds`."""
        while True:
            with contextlib.suppress(SpotcheckError):
                await self.run_due_campaigns()
            await asyncio.sleep(every_seconds)
