"""Push to quality-testing centers, the pure part: subscriptions and their filters, which centers
a result or a verdict goes to (and what it waits for), the signed request a center receives, the
retry schedule, delivery ids and the delivery-attempt event."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from spotcheck.errors import SpotcheckError
from spotcheck.events import Event, Ident, Outcome
from spotcheck.specs.catalog import load_catalog

SIGNATURE_HEADER = "X-Spotcheck-Signature"
TIMESTAMP_HEADER = "X-Spotcheck-Timestamp"
EVENT_HEADER = "X-Spotcheck-Event"
IDEMPOTENCY_HEADER = "Idempotency-Key"
DEFAULT_TOLERANCE_SECONDS = 300.0

EventKind = Literal["verdict", "lab-result"]


class DeliveryState(StrEnum):
    PENDING = "pending"  # not delivered yet: due now, waiting for its next attempt, or in flight
    DELIVERED = "delivered"  # the center answered 2xx
    FAILED = "failed"  # given up after the retry limit; a dead letter says why


# --- subscriptions ----------------------------------------------------------------------------


def category_of(spec_id: str | None) -> str | None:
    """The product category of a spec (e.g. "motor gasoline"), None when the spec is unknown."""
    if spec_id is None:
        return None
    try:
        return load_catalog().get(spec_id).product
    except SpotcheckError:
        return None


def spec_matches(pattern: str, spec_id: str) -> bool:
    """A spec filter is an exact spec id, or a prefix ending in ':' (kept) or '*' (dropped)."""
    if pattern.endswith("*"):
        return spec_id.startswith(pattern[:-1])
    if pattern.endswith(":"):
        return spec_id.startswith(pattern)
    return spec_id == pattern


class Filters(BaseModel):
    """What a center wants; every list is optional and an empty one matches everything."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    products: tuple[str, ...] = ()  # product categories of the catalog, e.g. "motor gasoline"
    specs: tuple[str, ...] = ()  # exact spec ids or prefixes ("GB17930-2016:", "GB17930-2016:VIB*")
    districts: tuple[str, ...] = ()  # enterprise districts (known for no event yet)
    outcomes: tuple[Outcome, ...] = ()  # applies to verdicts only

    @field_validator("products")
    @classmethod
    def _known_products(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        known = sorted({spec.product for spec in load_catalog().specs()})
        for product in value:
            if product.casefold() not in {k.casefold() for k in known}:
                raise ValueError(f"unknown product category {product!r}; known: {', '.join(known)}")
        return value

    @field_validator("specs")
    @classmethod
    def _known_specs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        ids = [spec.id for spec in load_catalog().specs()]
        for pattern in value:
            if pattern in ("", "*") or not any(spec_matches(pattern, i) for i in ids):
                raise ValueError(
                    f"{pattern!r} matches no spec of the catalog (an exact id, or a prefix "
                    "ending in ':' or '*'; `spotcheck specs` lists them)"
                )
        return value

    @field_validator("districts")
    @classmethod
    def _no_blank_district(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not d.strip() for d in value):
            raise ValueError("a district may not be blank")
        return value

    def matches(
        self,
        *,
        spec: str | None,
        outcome: Outcome | None = None,
        district: str | None = None,
    ) -> bool:
        """Whether an event passes every filter. `spec` is the event's spec (None: not known);
        `outcome` is a verdict's (None for a raw result: the outcome filter does not apply);
        `district` is the enterprise's (None: not known, so a district filter excludes it)."""
        category = category_of(spec)
        if self.products and (
            category is None or category.casefold() not in {p.casefold() for p in self.products}
        ):
            return False
        if self.specs and (spec is None or not any(spec_matches(p, spec) for p in self.specs)):
            return False
        if self.districts and district not in self.districts:
            return False
        return not (self.outcomes and outcome is not None and outcome not in self.outcomes)

    @property
    def needs_spec(self) -> bool:
        """Whether deciding needs the event's spec (a raw result's comes from its task)."""
        return bool(self.products or self.specs)


class Subscription(BaseModel):
    """An enabled center as the push worker sees it."""

    model_config = ConfigDict(frozen=True)

    center_id: str
    filters: Filters
    include_results: bool = False


@dataclass(frozen=True)
class ResultRoute:
    """Where a raw lab result goes: the centers it is queued for now, and the centers whose
    filters cannot decide until its task is known (the result is held for them meanwhile)."""

    now: tuple[Subscription, ...]
    undecided: tuple[Subscription, ...]


def route_result(subscriptions: Sequence[Subscription], spec: str | None, decidable: bool) -> ResultRoute:
    """The centers taking results that a result goes to. `spec` is its task's; `decidable` says
    whether the result may be decided now: its task is known and no earlier result of the task is
    still held (a task's results are decided in the order they came). Until then, only filters
    that do not look at the spec decide, and the others are left undecided."""
    taking = [s for s in subscriptions if s.include_results]
    if decidable:
        return ResultRoute(tuple(s for s in taking if s.filters.matches(spec=spec)), ())
    return ResultRoute(
        tuple(s for s in taking if not s.filters.needs_spec and s.filters.matches(spec=None)),
        tuple(s for s in taking if s.filters.needs_spec),
    )


def verdict_waits(subscription: Subscription, result_ids: Sequence[str]) -> tuple[str, ...]:
    """The deliveries a verdict waits for at a center: those of the results it lists, when the
    center takes results (a center receives a task's results before the verdict judged from them)."""
    if not subscription.include_results:
        return ()
    return tuple(dict.fromkeys(delivery_id(subscription.center_id, "lab-result", r) for r in result_ids))


def check_url(url: str) -> str:
    """An endpoint a center receives pushes on: absolute http(s), with a host, no credentials."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError("the endpoint must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("the endpoint URL has no host")
    if parts.username or parts.password:
        raise ValueError("the endpoint URL may not carry credentials; the signature authenticates")
    if parts.fragment:
        raise ValueError("the endpoint URL may not have a #fragment")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError("the endpoint URL has an invalid port") from None
    return url


class CenterRequest(BaseModel):
    """A center's subscription, as `POST /api/v1/centers` takes it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    center_id: Ident
    name: str = Field(min_length=1, max_length=200)
    url: str = Field(min_length=1, max_length=2000)
    filters: Filters = Filters()
    include_results: bool = False
    secret: str | None = Field(default=None, min_length=16, max_length=256)

    @field_validator("url")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return check_url(value.strip())


def new_secret() -> str:
    """A signing secret for a center (about 256 bits)."""
    return "whsec_" + secrets.token_urlsafe(32)


# --- deliveries -------------------------------------------------------------------------------


def delivery_id(center_id: str, event: EventKind, event_id: str) -> str:
    """The same event for the same center is always the same delivery (and Idempotency-Key)."""
    return hashlib.sha256("\x1f".join((center_id, event, event_id)).encode()).hexdigest()[:32]


def backoff(
    failures: int, initial: float, maximum: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait after the `failures`-th failed attempt: `initial` doubling up to `maximum`,
    with jitter that keeps at least half of it (uniform in [ceiling / 2, ceiling])."""
    ceiling = min(maximum, initial * 2.0 ** min(max(failures - 1, 0), 64))
    return ceiling * (0.5 + 0.5 * rand())


@dataclass(frozen=True)
class RetryPolicy:
    """How long a failing delivery is tried: for `retry_for` seconds from the round's first
    attempt (and, when `max_attempts` is set, no more attempts than that), backing off between
    attempts. The last wait is cut to end at the deadline, so the final attempt is made there:
    a delivery is never given up before its budget is spent, whatever the jitter drew."""

    initial: float
    maximum: float
    retry_for: float
    max_attempts: int | None = None

    def next_attempt(
        self,
        started: datetime,
        failed_at: datetime,
        failures: int,
        rand: Callable[[], float] = random.random,
    ) -> datetime | None:
        """When to try again after the `failures`-th failed attempt (made at `failed_at`) of a
        round whose first attempt was at `started`; None when the delivery is given up."""
        deadline = started + timedelta(seconds=self.retry_for)
        if failed_at >= deadline or (self.max_attempts is not None and failures >= self.max_attempts):
            return None
        return min(
            failed_at + timedelta(seconds=backoff(failures, self.initial, self.maximum, rand)), deadline
        )


def span(seconds: float) -> str:
    """A duration for people: "0.4s", "42s", "5m 3s", "6h 0m"."""
    if round(seconds, 1) < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def envelope(event: EventKind, delivery: str, data: str | dict[str, Any]) -> bytes:
    """The body POSTed to a center: the event kind, the delivery id and the event itself."""
    payload = json.loads(data) if isinstance(data, str) else data
    return json.dumps(
        {"event": event, "delivery_id": delivery, "data": payload}, ensure_ascii=False, separators=(",", ":")
    ).encode()


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """`sha256=` and the hex HMAC-SHA256, keyed by the secret, of "<timestamp>.<body>"."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify(
    secret: str,
    timestamp: int | str,
    body: bytes,
    signature: str,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """Whether a push is genuine: the signature matches the body and timestamp, and the
    timestamp is within `tolerance_seconds` of `now` (unix seconds; default: the clock)."""
    try:
        moment = int(str(timestamp).strip())
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - moment) > tolerance_seconds:
        return False
    return hmac.compare_digest(sign(secret, moment, body), signature.strip())


def request_headers(
    secret: str, timestamp: int, body: bytes, delivery: str, event: EventKind
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, timestamp, body),
        IDEMPOTENCY_HEADER: delivery,
        EVENT_HEADER: event,
    }


class DeliveryAttempt(Event):
    """One attempt to push an event to a center, on `spotcheck.deliveries` (key: center_id)."""

    SCHEMA: ClassVar[str] = "delivery/1"

    attempt_id: str
    delivery_id: str
    center_id: Ident
    event: EventKind
    event_id: str
    task_id: str
    round: int = Field(ge=1)  # 1, then one more for each redelivery from the dead letters
    attempt: int = Field(ge=1)  # within the round
    outcome: Literal["delivered", "retrying", "failed"]  # failed: given up, a dead letter follows
    status: int | None = None  # the HTTP status, None when no answer came
    error: str | None = None
    duration_ms: float = Field(ge=0)
    url: str
    attempted_at: AwareDatetime
    next_attempt_at: AwareDatetime | None = None
