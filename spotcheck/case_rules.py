"""The rules of enforcement cases as data: the legal days, critical items per spec, repeat offenders."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from fnmatch import fnmatchcase
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from spotcheck.errors import InvalidInput
from spotcheck.events import describe_validation_error


class CaseRules(BaseModel):
    """Days are calendar days in the bureau's zone (see `spotcheck.custody.due_after`)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    objection_days: int = Field(ge=1, description="days after receipt of the notice to ask for a re-test")
    rectification_days: int = Field(ge=1, description="days from the final result to correct (整改)")
    follow_up_by_day: int = Field(ge=1, description="the follow-up (复查) is sampled by this day after T0")
    second_follow_up_from_day: int = Field(ge=0, description="second follow-up: from this day after TA")
    second_follow_up_to_day: int = Field(ge=1, description="… to this day after the announcement")
    suspension_follow_up_from_day: int = Field(ge=0, description="follow-up after suspension: from …")
    suspension_follow_up_to_day: int = Field(ge=1, description="… to this day after the suspension")
    upstream_sampling_days: int = Field(ge=1, description="days an upstream follow-up has to be sampled")
    publication_days: int = Field(ge=1, description="final results are published within these days")
    repeat_failures: int = Field(ge=1, description="this many failures …")
    repeat_months: int = Field(ge=1, description="… within these months make a repeat offender")
    critical_items: dict[str, tuple[str, ...]] = Field(
        default_factory=dict, description="spec id or pattern (fnmatch) -> items whose failure is critical"
    )

    @model_validator(mode="after")
    def _windows(self) -> CaseRules:
        if self.follow_up_by_day <= self.rectification_days:
            raise ValueError("follow_up_by_day must come after rectification_days")
        if self.second_follow_up_to_day <= self.second_follow_up_from_day:
            raise ValueError("second_follow_up_to_day must come after second_follow_up_from_day")
        if self.suspension_follow_up_to_day <= self.suspension_follow_up_from_day:
            raise ValueError("suspension_follow_up_to_day must come after suspension_follow_up_from_day")
        return self

    def critical(self, spec_id: str, failing: Iterable[str]) -> tuple[str, ...]:
        """The failing items that are critical for `spec_id`, sorted."""
        wanted = {
            i
            for pattern, items in self.critical_items.items()
            if fnmatchcase(spec_id, pattern)
            for i in items
        }
        return tuple(sorted(set(failing) & wanted))

    def repeat_offender(self, failures: Sequence[datetime], now: datetime) -> bool:
        """`failures` (this one included) reach `repeat_failures` within the last `repeat_months`."""
        since = months_back(now.date(), self.repeat_months)
        return sum(1 for f in failures if since <= f.date() and f <= now) >= self.repeat_failures


def months_back(day: date, months: int) -> date:
    """The same day `months` months earlier (clamped to the month's end)."""
    total = day.year * 12 + day.month - 1 - months
    year, month = divmod(total, 12)
    month += 1
    for d in (day.day, 30, 29, 28):
        try:
            return date(year, month, d)
        except ValueError:
            continue
    raise AssertionError("unreachable")


def load_rules(path: Path | None = None) -> CaseRules:
    """The rules shipped with spotcheck, or those of the JSON file at `path` (InvalidInput says why)."""
    try:
        raw = (
            path.read_text(encoding="utf-8")
            if path
            else (resources.files("spotcheck") / "case_rules.json").read_text(encoding="utf-8")
        )
        return CaseRules.model_validate(json.loads(raw))
    except OSError as exc:
        raise InvalidInput(f"case rules file: {exc}", field="case_rules_file") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"case rules file is not valid JSON: {exc}", field="case_rules_file") from None
    except ValidationError as exc:
        raise InvalidInput(f"case rules: {describe_validation_error(exc)}", field="case_rules_file") from None
