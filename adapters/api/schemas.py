"""Pydantic models of the API's answers (and batch bodies) that are not events themselves."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from spotcheck.custody import TaskState
from spotcheck.events import LabResult, SamplingTask, Verdict
from spotcheck.labs import Lab


class StoredResult(LabResult):
    state: Literal["received", "accepted", "pending", "rejected"] = Field(
        description="received: stored, not yet taken by the verdict processor; accepted: part of the "
        "sample; pending: waiting for its task; rejected: refused (see the dead letters)"
    )


class ResultRecord(BaseModel):
    result_id: str
    task_id: str
    lab_id: str
    state: Literal["received", "accepted", "pending", "rejected"]
    received_at: str
    result: LabResult = Field(description="the result as stored")


class TaskView(BaseModel):
    task: SamplingTask
    state: TaskState = Field(description="where the task stands in its lifecycle (chain of custody)")
    results: list[StoredResult]
    verdict: Verdict | None = Field(description="the verdict in force")
    verdict_history: list[Verdict] = Field(description="every version, oldest first")


class VerdictList(BaseModel):
    verdicts: list[Verdict]
    count: int


class DeadLetterRow(BaseModel):
    letter_id: str
    source: str
    key: str | None
    reason: str
    payload: str
    rejected_at: str


class DeadLetterList(BaseModel):
    dead_letters: list[DeadLetterRow]
    count: int


class PassRate(BaseModel):
    product: str
    qualified: int
    unqualified: int
    pass_rate: float
    updated_at: str


class PassRates(BaseModel):
    pass_rates: list[PassRate]


class ResultBatch(BaseModel):
    """A batch of lab results; a single result object is accepted as the body as well."""

    results: list[LabResult] = Field(min_length=1)


class IngestOutcome(BaseModel):
    where: int = Field(description="position of the result in the batch")
    result_id: str | None = None
    status: Literal["accepted", "duplicate", "invalid", "forbidden"]
    reason: str | None = None
    field: str | None = None


class IngestAnswer(BaseModel):
    outcomes: list[IngestOutcome]
    accepted: int
    duplicates: int
    rejected: int


class LabList(BaseModel):
    labs: list[Lab]


class LabKey(BaseModel):
    lab_id: str
    prefix: str
    key: str = Field(description="shown this once; only a hash is kept")
    created_at: str


class LabKeyInfo(BaseModel):
    prefix: str
    created_at: str | None
    revoked_at: str | None
    last_used_at: str | None
    active: bool


class LabKeys(BaseModel):
    keys: list[LabKeyInfo]


class LabStats(BaseModel):
    lab_id: str
    since: str
    daily_capacity: int
    backlog: dict[str, Any]
    reported: dict[str, Any]


class Revoked(BaseModel):
    revoked: str = Field(description="the prefix of the key or token revoked")
