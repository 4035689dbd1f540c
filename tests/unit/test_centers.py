"""Center push, the pure part: filters, routing, signatures, the retry budget and delivery ids."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from spotcheck.centers import (
    CenterRequest,
    DeliveryAttempt,
    Filters,
    ResultRoute,
    RetryPolicy,
    Subscription,
    backoff,
    delivery_id,
    envelope,
    request_headers,
    route_result,
    sign,
    span,
    spec_matches,
    verdict_waits,
    verify,
)
from spotcheck.events import Outcome
from spotcheck.settings import Settings

GASOLINE = "GB17930-2016:VIB:92"
DIESEL = "GB19147-2016:VI:0"
SECRET = "whsec_test-secret-0123456789"


# --- filters ----------------------------------------------------------------------------------


def test_an_empty_filter_matches_everything() -> None:
    f = Filters()
    assert f.matches(spec=GASOLINE, outcome=Outcome.QUALIFIED)
    assert f.matches(spec=None)  # a raw result whose task is not known yet
    assert f.matches(spec="NOT-IN-CATALOG", outcome=Outcome.INCOMPLETE)


def test_product_categories_come_from_the_catalog() -> None:
    f = Filters(products=("motor gasoline",))
    assert f.matches(spec=GASOLINE)
    assert Filters(products=("Motor Gasoline",)).matches(spec=GASOLINE)  # case does not matter
    assert not f.matches(spec=DIESEL)
    assert not f.matches(spec=None)
    assert not f.matches(spec="NOT-IN-CATALOG")


@pytest.mark.parametrize(
    ("pattern", "spec", "expected"),
    [
        (GASOLINE, GASOLINE, True),
        ("GB17930-2016:VIB:9", GASOLINE, False),  # no prefix without ':' or '*'
        ("GB17930-2016:", GASOLINE, True),
        ("GB17930-2016:", DIESEL, False),
        ("GB17930-2016:VIB*", GASOLINE, True),
        ("GB17930-2016:VIB*", "GB17930-2016:VIA:92", False),
        ("GB1*", DIESEL, True),
    ],
)
def test_spec_filters_are_exact_or_prefixes(pattern: str, spec: str, expected: bool) -> None:
    assert spec_matches(pattern, spec) is expected
    assert Filters.model_construct(specs=(pattern,)).matches(spec=spec) is expected


def test_outcome_filters_apply_to_verdicts_only() -> None:
    f = Filters(outcomes=(Outcome.UNQUALIFIED,))
    assert f.matches(spec=GASOLINE, outcome=Outcome.UNQUALIFIED)
    assert not f.matches(spec=GASOLINE, outcome=Outcome.QUALIFIED)
    assert f.matches(spec=GASOLINE)  # a raw result has no outcome


def test_district_filters_need_a_known_district() -> None:
    f = Filters(districts=("370102",))
    assert not f.matches(spec=GASOLINE)  # events carry no district yet
    assert f.matches(spec=GASOLINE, district="370102")
    assert not f.matches(spec=GASOLINE, district="370103")


def test_every_filter_must_pass() -> None:
    f = Filters(products=("motor gasoline",), specs=("GB17930-2016:VIB*",), outcomes=(Outcome.QUALIFIED,))
    assert f.matches(spec=GASOLINE, outcome=Outcome.QUALIFIED)
    assert not f.matches(spec="GB17930-2016:VIA:92", outcome=Outcome.QUALIFIED)
    assert not f.matches(spec=GASOLINE, outcome=Outcome.UNQUALIFIED)


@pytest.mark.parametrize(
    ("filters", "field", "words"),
    [
        ({"products": ["petrol"]}, "products", "unknown product category"),
        ({"specs": ["GB9999:"]}, "specs", "matches no spec"),
        ({"specs": ["*"]}, "specs", "matches no spec"),
        ({"outcomes": ["maybe"]}, "outcomes", "qualified"),
        ({"districts": [" "]}, "districts", "blank"),
        ({"colour": ["red"]}, "colour", "Extra inputs"),
    ],
)
def test_bad_filters_name_the_field(filters: dict[str, list[str]], field: str, words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Filters.model_validate(filters)
    error = caught.value.errors()[0]
    assert error["loc"][0] == field and words in str(caught.value)


# --- routing ----------------------------------------------------------------------------------


def sub(center_id: str, results: bool = True, **filters: object) -> Subscription:
    return Subscription(center_id=center_id, filters=Filters.model_validate(filters), include_results=results)


GAS = sub("QTC-GAS", specs=["GB17930-2016:"])
FUEL = sub("QTC-FUEL", products=["motor diesel"])
ALL = sub("QTC-ALL")
UNQUALIFIED = sub("QTC-UNQ", outcomes=["unqualified"])  # outcomes do not apply to results
VERDICTS = sub("QTC-VERDICTS", results=False)
EVERYONE = [GAS, FUEL, ALL, UNQUALIFIED, VERDICTS]


def test_only_spec_and_product_filters_need_the_spec() -> None:
    assert GAS.filters.needs_spec and FUEL.filters.needs_spec
    assert not ALL.filters.needs_spec and not UNQUALIFIED.filters.needs_spec
    assert not Filters(districts=("370102",)).needs_spec


def test_a_result_whose_task_is_known_goes_where_its_spec_matches() -> None:
    route = route_result(EVERYONE, GASOLINE, decidable=True)
    assert route.now == (GAS, ALL, UNQUALIFIED) and route.undecided == ()
    route = route_result(EVERYONE, DIESEL, decidable=True)
    assert route.now == (FUEL, ALL, UNQUALIFIED) and route.undecided == ()


def test_a_result_that_cannot_be_decided_yet_waits_for_the_centers_that_need_its_spec() -> None:
    for spec in (None, GASOLINE):  # task unknown, or known with earlier results still held
        route = route_result(EVERYONE, spec, decidable=False)
        assert route.now == (ALL, UNQUALIFIED)  # these filters do not look at the spec
        assert route.undecided == (GAS, FUEL)
    assert route_result([ALL, VERDICTS], None, decidable=False).undecided == ()
    assert route_result([VERDICTS], GASOLINE, decidable=True) == ResultRoute((), ())


def test_a_verdict_waits_for_its_results_only_at_centers_that_take_results() -> None:
    listed = ("LAB7-1", "LAB7-2", "LAB7-1")
    assert verdict_waits(GAS, listed) == (
        delivery_id("QTC-GAS", "lab-result", "LAB7-1"),
        delivery_id("QTC-GAS", "lab-result", "LAB7-2"),
    )
    assert verdict_waits(VERDICTS, listed) == ()
    assert verdict_waits(ALL, ()) == ()


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://qtc.example.cn/hooks/spotcheck", True),
        ("http://127.0.0.1:8099/hook", True),
        ("ftp://qtc.example.cn/hook", False),
        ("qtc.example.cn/hook", False),
        ("https:///hook", False),
        ("https://user:pw@qtc.example.cn/hook", False),
        ("https://qtc.example.cn:99999/hook", False),
    ],
)
def test_center_endpoints_are_http_or_https(url: str, ok: bool) -> None:
    body = {"center_id": "QTC-1", "name": "Center", "url": url}
    if ok:
        assert CenterRequest.model_validate(body).url == url
    else:
        with pytest.raises(ValidationError) as caught:
            CenterRequest.model_validate(body)
        assert caught.value.errors()[0]["loc"] == ("url",)


def test_a_given_secret_must_be_long_enough() -> None:
    with pytest.raises(ValidationError):
        CenterRequest.model_validate({"center_id": "Q", "name": "n", "url": "http://h/", "secret": "short"})


# --- signatures -------------------------------------------------------------------------------


def test_a_signature_verifies_and_names_its_algorithm() -> None:
    body = envelope("verdict", "d1", '{"verdict_id": "T-1/v1"}')
    signature = sign(SECRET, 1_790_000_000, body)
    assert signature.startswith("sha256=") and len(signature) == len("sha256=") + 64
    assert verify(SECRET, "1790000000", body, signature, now=1_790_000_010)


def test_a_tampered_body_or_timestamp_or_wrong_secret_fails() -> None:
    body = envelope("verdict", "d1", {"outcome": "qualified"})
    signature = sign(SECRET, 1_790_000_000, body)
    now = 1_790_000_000.0
    assert not verify(SECRET, 1_790_000_000, body.replace(b"qualified", b"unqualified"), signature, now=now)
    assert not verify(SECRET, 1_790_000_001, body, signature, now=now)
    assert not verify("another-secret-0123456789", 1_790_000_000, body, signature, now=now)
    assert not verify(SECRET, "not-a-number", body, signature, now=now)
    assert not verify(SECRET, 1_790_000_000, body, "sha256=" + "0" * 64, now=now)


def test_a_stale_or_future_timestamp_fails() -> None:
    body = b'{"event":"verdict"}'
    signature = sign(SECRET, 1_790_000_000, body)
    assert verify(SECRET, 1_790_000_000, body, signature, tolerance_seconds=300, now=1_790_000_300)
    assert not verify(SECRET, 1_790_000_000, body, signature, tolerance_seconds=300, now=1_790_000_301)
    assert not verify(SECRET, 1_790_000_000, body, signature, tolerance_seconds=300, now=1_789_999_699)


def test_request_headers_carry_everything_a_center_checks() -> None:
    body = envelope("lab-result", "abc", '{"result_id": "R-1"}')
    headers = request_headers(SECRET, 1_790_000_000, body, "abc", "lab-result")
    assert headers["Content-Type"] == "application/json"
    assert headers["Idempotency-Key"] == "abc"
    assert headers["X-Spotcheck-Event"] == "lab-result"
    assert headers["X-Spotcheck-Timestamp"] == "1790000000"
    assert verify(
        SECRET, headers["X-Spotcheck-Timestamp"], body, headers["X-Spotcheck-Signature"], now=1_790_000_000
    )
    assert json.loads(body) == {"event": "lab-result", "delivery_id": "abc", "data": {"result_id": "R-1"}}


# --- retries and ids --------------------------------------------------------------------------


def test_backoff_doubles_to_the_cap_and_jitter_keeps_at_least_half() -> None:
    ceilings = [backoff(n, 1.0, 300.0, rand=lambda: 1.0) for n in range(1, 12)]
    assert ceilings[:5] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert ceilings[-1] == 300.0 and max(ceilings) == 300.0
    assert backoff(3, 1.0, 300.0, rand=lambda: 0.0) == 2.0
    assert backoff(3, 1.0, 300.0, rand=lambda: 0.5) == 3.0
    assert backoff(10_000, 0.5, 60.0, rand=lambda: 1.0) == 60.0  # no overflow for huge counts


def test_backoff_stays_within_its_bounds() -> None:
    for failures in range(1, 20):
        for _ in range(50):
            delay = backoff(failures, 0.2, 30.0)
            ceiling = min(30.0, 0.2 * 2 ** (failures - 1))
            assert ceiling / 2 <= delay <= ceiling


DEFAULTS = Settings.model_construct()  # the defaults, whatever the environment says
POLICY = RetryPolicy(
    initial=DEFAULTS.push_backoff_initial_seconds,
    maximum=DEFAULTS.push_backoff_max_seconds,
    retry_for=DEFAULTS.push_retry_for_seconds,
    max_attempts=DEFAULTS.push_max_attempts,
)
START = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)


def outage(
    policy: RetryPolicy, down_for: timedelta, rand: Callable[[], float], answer_after: float = 10.0
) -> tuple[str, int, datetime]:
    """Attempts against a center that fails every push (each after `answer_after` seconds, the
    push timeout) until `down_for` has passed, on a clock moved from attempt to attempt: the
    outcome, the number of attempts and when the last was made."""
    due, failures = START, 0
    while True:
        at = due + timedelta(seconds=answer_after)
        if at - START >= down_for:
            return "delivered", failures + 1, at
        failures += 1
        due_next = policy.next_attempt(START + timedelta(seconds=answer_after), at, failures, rand)
        if due_next is None:
            return "failed", failures, at
        assert due_next > at
        due = due_next


@pytest.mark.parametrize("draw", [0.0, 0.5, 1.0])
def test_the_default_budget_outlasts_a_center_down_for_an_hour(draw: float) -> None:
    assert DEFAULTS.push_retry_for_seconds >= 3 * 3600 and DEFAULTS.push_max_attempts is None
    outcome, attempts, last = outage(POLICY, timedelta(hours=1), rand=lambda: draw)
    assert outcome == "delivered" and attempts > 8  # the old default budget gave up after 8
    # the backoff reached its cap: near the end of the hour the center is tried every 2.5 to 5 min
    assert last - START < timedelta(hours=1, minutes=6)


def test_the_budget_is_a_time_never_shortened_by_the_jitter() -> None:
    rng = random.Random(7)
    for rand in (lambda: 0.0, lambda: 1.0, rng.random):
        outcome, attempts, last = outage(POLICY, timedelta(days=2), rand=rand)
        assert outcome == "failed"
        first = START + timedelta(seconds=10)
        assert last - first >= timedelta(seconds=DEFAULTS.push_retry_for_seconds)
        assert last - first < timedelta(seconds=DEFAULTS.push_retry_for_seconds + 10 + 300)


def test_the_last_wait_ends_at_the_deadline_and_a_cap_on_attempts_still_applies() -> None:
    policy = RetryPolicy(initial=1.0, maximum=300.0, retry_for=60.0)
    started = START
    assert policy.next_attempt(started, START + timedelta(seconds=50), 7, lambda: 1.0) == START + timedelta(
        seconds=60
    )
    assert policy.next_attempt(started, START + timedelta(seconds=60), 8, lambda: 1.0) is None
    assert policy.next_attempt(started, START + timedelta(seconds=1), 1, lambda: 1.0) == START + timedelta(
        seconds=2
    )
    capped = RetryPolicy(initial=1.0, maximum=300.0, retry_for=3600.0, max_attempts=3)
    assert capped.next_attempt(started, START + timedelta(seconds=5), 2, lambda: 1.0) is not None
    assert capped.next_attempt(started, START + timedelta(seconds=9), 3, lambda: 1.0) is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.43, "0.4s"),
        (9.94, "9.9s"),
        (9.96, "10s"),
        (42.2, "42s"),
        (303, "5m 3s"),
        (21_604, "6h 0m"),
        (3600, "1h 0m"),
    ],
)
def test_spans_read_well(seconds: float, text: str) -> None:
    assert span(seconds) == text


def test_delivery_ids_are_stable_and_distinct() -> None:
    first = delivery_id("QTC-1", "verdict", "T-2026-000001/v1")
    assert first == delivery_id("QTC-1", "verdict", "T-2026-000001/v1")
    assert len(first) == 32 and int(first, 16) >= 0
    others = {
        delivery_id("QTC-2", "verdict", "T-2026-000001/v1"),
        delivery_id("QTC-1", "verdict", "T-2026-000001/v2"),
        delivery_id("QTC-1", "lab-result", "T-2026-000001/v1"),
    }
    assert first not in others and len(others) == 3


def test_a_delivery_attempt_is_an_event_of_its_own_schema() -> None:
    attempt = DeliveryAttempt(
        attempt_id="a1",
        delivery_id="d1",
        center_id="QTC-1",
        event="verdict",
        event_id="T-1/v1",
        task_id="T-1",
        round=1,
        attempt=2,
        outcome="retrying",
        status=500,
        error="HTTP 500",
        duration_ms=12.5,
        url="http://127.0.0.1:1/hook",
        attempted_at=datetime(2026, 11, 24, tzinfo=UTC),
        next_attempt_at=datetime(2026, 11, 24, 0, 0, 2, tzinfo=UTC),
    )
    raw = json.loads(attempt.to_json())
    assert raw["schema"] == "delivery/1" and raw["status"] == 500
    assert DeliveryAttempt.from_json(attempt.to_json()) == attempt
