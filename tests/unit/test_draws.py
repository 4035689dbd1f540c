"""Double-random draws: reproducibility, strata, exclusions, 回避, workload, labs, fairness."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import subprocess
import sys
from collections import Counter
from datetime import UTC, date, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spotcheck.draw_stats import SeedStream, allocate, chi_square, chi_square_quantile
from spotcheck.draws import (
    DrawResult,
    Enterprise,
    EnterpriseKind,
    ExclusionReason,
    Inspector,
    LicenceStatus,
    Plan,
    PlanCategory,
    RiskFactors,
    Snapshot,
    UnfilledReason,
    draw,
    months_before,
    new_seed,
    verify,
)
from spotcheck.errors import InvalidInput
from spotcheck.labs import Lab, ScopeEntry

GASOLINE = "GB17930-2016:VIB:92"
DIESEL = "GB19147-2016:VI:0"
DISTRICTS = ("Dongying District", "Hekou District", "Kenli District")
KINDS = (EnterpriseKind.FILLING_STATION, EnterpriseKind.DEPOT, EnterpriseKind.SELLER)
TAKEN = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
SEED = hashlib.sha256(b"test seed 1").digest()
OTHER_SEED = hashlib.sha256(b"test seed 2").digest()


def eid(n: int) -> str:
    return f"91370500MA{n:08d}"


def enterprise(n: int, **kw: Any) -> Enterprise:
    fields: dict[str, Any] = dict(
        enterprise_id=eid(n),
        name=f"Station {n}",
        district=DISTRICTS[n % 3],
        kind=KINDS[n % 2],
        products=("motor gasoline", "motor diesel"),
    )
    fields.update(kw)
    return Enterprise.model_validate(fields)


def inspector(n: int, *excluded: str) -> Inspector:
    return Inspector(
        inspector_id=f"INS-{n:03d}",
        name=f"Inspector {n}",
        unit="Dongying AMR",
        district=DISTRICTS[n % 3],
        excluded_enterprises=excluded,
    )


def lab(lab_id: str, *scope: ScopeEntry, capacity: int = 50, enabled: bool = True) -> Lab:
    return Lab(lab_id=lab_id, name=lab_id, scope=scope, daily_capacity=capacity, enabled=enabled)


FUEL_LAB = lab("LAB-FUEL", ScopeEntry(spec="GB17930-2016:*"), ScopeEntry(product="motor diesel"))


def snapshot(
    enterprises: int = 30, inspectors: int = 8, labs: tuple[Lab, ...] = (FUEL_LAB,), **kw: Any
) -> Snapshot:
    return Snapshot(
        enterprises=tuple(enterprise(n) for n in range(enterprises)),
        inspectors=tuple(inspector(n) for n in range(inspectors)),
        labs=labs,
        taken_at=TAKEN,
        **kw,
    )


def with_inspectors(snap: Snapshot, inspectors: tuple[Inspector, ...]) -> Snapshot:
    return Snapshot(enterprises=snap.enterprises, inspectors=inspectors, labs=snap.labs, taken_at=TAKEN)


def plan(*categories: PlanCategory, **kw: Any) -> Plan:
    fields: dict[str, Any] = dict(
        plan_id="DY-2026-03",
        draw_date=date(2026, 3, 2),
        categories=categories or (PlanCategory(product="motor gasoline", spec=GASOLINE, count=6),),
    )
    fields.update(kw)
    return Plan.model_validate(fields)


def chosen(result: DrawResult) -> list[str]:
    return [s.enterprise_id for s in result.selections]


# --- reproducibility ---------------------------------------------------------------------------


def test_same_inputs_give_the_same_result_and_digest() -> None:
    p, snap, history = plan(strata=("district",)), snapshot(), {eid(1): ["INS-000", "INS-001"]}
    first = draw(p, snap, SEED, history)
    again = draw(p, snapshot(), SEED, {eid(1): ["INS-001", "INS-000"]})
    assert again == first and again.digest() == first.digest()
    assert len(first.selections) == 6 and not first.unfilled
    assert first.seed == SEED.hex() and first.snapshot_digest == snap.digest()
    assert verify(first, p, snap, SEED, history)


def test_a_known_draw_stays_the_same() -> None:
    """Published draws must verify forever: if this changes, the algorithm changed, and old draws
    would no longer verify (change the stream tag and the result schema instead)."""
    result = draw(plan(strata=("district",)), snapshot(), SEED)
    assert [(s.enterprise_id[-2:], s.inspectors) for s in result.selections] == [
        ("03", ("INS-002", "INS-006")),
        ("06", ("INS-003", "INS-005")),
        ("13", ("INS-004", "INS-007")),
        ("16", ("INS-000", "INS-001")),
        ("20", ("INS-000", "INS-002")),
        ("29", ("INS-001", "INS-004")),
    ]


def test_the_published_result_round_trips_through_json() -> None:
    result = draw(plan(), snapshot(), SEED)
    back = DrawResult.from_json(result.to_json())
    assert back == result and back.digest() == result.digest()
    assert json.loads(result.to_json())["schema"] == "draw/1"


def test_a_different_seed_draws_differently_and_does_not_verify() -> None:
    p, snap = plan(), snapshot()
    first, second = draw(p, snap, SEED), draw(p, snap, OTHER_SEED)
    assert chosen(first) != chosen(second)
    assert not verify(first, p, snap, OTHER_SEED)


def test_a_tampered_result_or_changed_inputs_do_not_verify() -> None:
    p, snap = plan(), snapshot()
    result = draw(p, snap, SEED)
    moved = result.selections[0].model_copy(update={"lab_id": "LAB-OTHER"})
    tampered = result.model_copy(update={"selections": (moved, *result.selections[1:])})
    assert not verify(tampered, p, snap, SEED)
    assert not verify(result, p, snap, SEED, {eid(0): ["INS-000"]})
    assert not verify(result, p.model_copy(update={"plan_id": "DY-2026-04"}), snap, SEED)


def test_snapshot_digest_follows_content_not_order_or_time() -> None:
    snap = snapshot()
    shuffled = Snapshot(
        enterprises=tuple(reversed(snap.enterprises)),
        inspectors=tuple(reversed(snap.inspectors)),
        labs=snap.labs,
        taken_at=datetime(2026, 3, 2, tzinfo=UTC),
    )
    assert shuffled.digest() == snap.digest()
    renamed = Snapshot(
        enterprises=(enterprise(0, name="Renamed"), *snap.enterprises[1:]),
        inspectors=snap.inspectors,
        labs=snap.labs,
        taken_at=TAKEN,
    )
    assert renamed.digest() != snap.digest()
    assert draw(plan(), renamed, SEED).snapshot_digest != draw(plan(), snap, SEED).snapshot_digest
    products = enterprise(0, products=("motor diesel", "motor gasoline", "motor diesel"))
    assert products.products == ("motor diesel", "motor gasoline")


def test_a_snapshot_refuses_an_id_listed_twice() -> None:
    with pytest.raises(ValueError, match="enterprise listed twice"):
        Snapshot(enterprises=(enterprise(1), enterprise(1)), inspectors=(), labs=(), taken_at=TAKEN)


def test_the_stream_is_hmac_sha256_in_counter_mode() -> None:
    block0 = hmac.new(SEED, b"spotcheck-draw/1\x00x\x00" + bytes(8), hashlib.sha256).digest()
    block1 = hmac.new(SEED, b"spotcheck-draw/1\x00x\x00" + (1).to_bytes(8, "big"), hashlib.sha256).digest()
    stream = SeedStream(SEED, "x")
    assert stream.take(40) == (block0 + block1)[:40]
    assert stream.take(24) == block1[8:]
    # n = 2^64 has 65 bits: 9 + 8 = 17 bytes are read, and no value is ever rejected
    assert SeedStream(SEED, "x").below(1 << 64) == int.from_bytes(block0[9:17], "big")
    with pytest.raises(ValueError):
        stream.below(0)


def test_stream_integers_are_uniform_enough() -> None:
    stream = SeedStream(SEED, "uniform")
    counts = Counter(stream.below(7) for _ in range(7000))
    assert set(counts) == set(range(7))
    assert chi_square([counts[i] for i in range(7)], [1000] * 7) < chi_square_quantile(0.999, 6)


def test_new_seeds_are_long_and_fresh() -> None:
    a, b = new_seed(), new_seed()
    assert len(a) == 32 and a != b


def test_inputs_that_cannot_be_drawn_are_refused() -> None:
    with pytest.raises(InvalidInput, match="at least 16 bytes"):
        draw(plan(), snapshot(), b"short")
    with pytest.raises(InvalidInput, match="not motor gasoline"):
        draw(plan(PlanCategory(product="motor gasoline", spec=DIESEL, count=1)), snapshot(), SEED)
    with pytest.raises(InvalidInput, match="no item"):
        draw(
            plan(PlanCategory(product="motor gasoline", spec=GASOLINE, items=("sulphur",), count=1)),
            snapshot(),
            SEED,
        )
    with pytest.raises(ValueError, match="either count or ratio"):
        PlanCategory(product="motor gasoline", spec=GASOLINE, count=1, ratio=Decimal("0.1"))
    with pytest.raises(ValueError):
        plan(inspectors_per_task=1)
    with pytest.raises(ValueError):
        enterprise(1, enterprise_id="E-1")


# --- weights, ratios and strata ----------------------------------------------------------------


def test_risk_weight_formula() -> None:
    assert RiskFactors().weight == 1 + 3  # never checked counts as 36 months
    assert RiskFactors(months_since_check=5).weight == 1
    assert RiskFactors(failures=2, complaints=3, months_since_check=25).weight == 1 + 4 + 3 + 2
    assert RiskFactors(months_since_check=120).weight == 4
    p = plan(risk={eid(3): RiskFactors(failures=1, months_since_check=0)})
    assert p.weight(eid(3)) == 3 and p.weight(eid(4)) == 1


@pytest.mark.parametrize(
    ("ratio", "eligible", "wanted"),
    [("0.05", 30, 2), ("0.05", 10, 1), ("0.05", 1, 1), ("0.05", 0, 0), ("0.25", 10, 3), ("1", 7, 7)],
)
def test_ratio_rounds_half_up_with_at_least_one(ratio: str, eligible: int, wanted: int) -> None:
    category = PlanCategory(product="motor gasoline", spec=GASOLINE, ratio=Decimal(ratio))
    assert category.wanted(eligible) == wanted


def test_allocation_by_largest_remainder() -> None:
    assert allocate(10, {"a": 50, "b": 30, "c": 20}) == {"a": 5, "b": 3, "c": 2}
    # quotas 4.2857, 2.8571, 2.8571 → floors 4, 2, 2; one left → the larger remainder (a tie: b by key)
    assert allocate(10, {"a": 30, "b": 20, "c": 20}) == {"a": 4, "b": 3, "c": 3}
    assert allocate(3, {"a": 1, "b": 1, "c": 1, "d": 1}) == {"a": 1, "b": 1, "c": 1, "d": 0}
    assert allocate(2, {"big": 9, "small": 1}) == {"big": 2, "small": 0}
    assert allocate(0, {"a": 3}) == {"a": 0} and allocate(4, {}) == {}


@settings(derandomize=True)
@given(st.dictionaries(st.text("abcdef", min_size=1, max_size=3), st.integers(0, 40), max_size=8), st.data())
def test_allocation_properties(sizes: dict[str, int], data: st.DataObject) -> None:
    whole = sum(sizes.values())
    total = data.draw(st.integers(0, whole))
    shares = allocate(total, sizes)
    assert sum(shares.values()) == total
    for key, size in sizes.items():
        quota = Fraction(total * size, whole) if whole else Fraction(0)
        assert math.floor(quota) <= shares[key] <= math.ceil(quota)
        assert shares[key] <= size


def test_strata_get_their_proportional_share() -> None:
    # 30 enterprises over 3 districts × 2 kinds = 6 strata of 5; 12 to draw → 2 each
    p = plan(PlanCategory(product="motor gasoline", spec=GASOLINE, count=12), strata=("district", "kind"))
    result = draw(p, snapshot(inspectors=30), SEED)
    per_stratum = Counter(tuple(sorted(s.stratum.items())) for s in result.selections)
    assert len(per_stratum) == 6 and set(per_stratum.values()) == {2}
    for s in result.selections:
        company = enterprise(int(s.enterprise_id[-8:]))
        assert s.stratum == {"district": company.district, "kind": company.kind.value}


def test_uneven_strata_follow_the_allocation() -> None:
    companies = [enterprise(n, district=DISTRICTS[0]) for n in range(14)]
    companies += [enterprise(n, district=DISTRICTS[1]) for n in range(14, 20)]
    snap = Snapshot(
        enterprises=tuple(companies),
        inspectors=(inspector(1), inspector(2)),
        labs=(FUEL_LAB,),
        taken_at=TAKEN,
    )
    p = plan(
        PlanCategory(product="motor gasoline", spec=GASOLINE, ratio=Decimal("0.25")), strata=("district",)
    )
    result = draw(p, snap, SEED)
    counts = Counter(s.stratum["district"] for s in result.selections)
    assert counts == {DISTRICTS[0]: 4, DISTRICTS[1]: 1}  # 5 of 20: quotas 3.5 and 1.5, tie → larger


def test_a_count_above_the_eligible_is_reported_short() -> None:
    p = plan(PlanCategory(product="motor diesel", spec=DIESEL, count=12))
    result = draw(p, snapshot(enterprises=5), SEED)
    assert len(result.selections) == 5
    (short,) = result.unfilled
    assert short.reason is UnfilledReason.TOO_FEW_ENTERPRISES and short.enterprise_id is None
    assert short.detail == "12 wanted, 5 eligible"


# --- exclusions and 回避 ------------------------------------------------------------------------


def test_higher_level_recent_and_revoked_enterprises_are_never_drawn() -> None:
    companies = [enterprise(n) for n in range(8)]
    companies.append(enterprise(8, licence_status=LicenceStatus.REVOKED))
    snap = Snapshot(
        enterprises=tuple(companies),
        inspectors=tuple(inspector(n) for n in range(8)),
        labs=(FUEL_LAB,),
        taken_at=TAKEN,
    )
    p = plan(
        PlanCategory(product="motor gasoline", spec=GASOLINE, ratio=Decimal(1)),
        higher_level=(eid(0), eid(1)),
        recent_checks={eid(2): date(2025, 9, 1), eid(3): date(2025, 3, 2), eid(4): date(2025, 3, 1)},
        recent_months=12,
    )
    for seed in (SEED, OTHER_SEED):
        result = draw(p, snap, seed)
        assert sorted(chosen(result)) == [eid(n) for n in (3, 4, 5, 6, 7)]
        assert {(x.enterprise_id, x.reason) for x in result.excluded} == {
            (eid(0), ExclusionReason.HIGHER_LEVEL),
            (eid(1), ExclusionReason.HIGHER_LEVEL),
            (eid(2), ExclusionReason.RECENT_CHECK),
            (eid(8), ExclusionReason.LICENCE),
        }


def test_months_before_clamps_to_the_month_end() -> None:
    assert months_before(date(2026, 3, 31), 1) == date(2026, 2, 28)
    assert months_before(date(2026, 3, 2), 12) == date(2025, 3, 2)
    assert months_before(date(2026, 1, 15), 13) == date(2024, 12, 15)
    assert months_before(date(2026, 1, 15), 0) == date(2026, 1, 15)


def test_an_inspector_never_goes_to_an_excluded_enterprise_or_back_to_last_time() -> None:
    # 4 inspectors; INS-000 must stay away from every enterprise, INS-001 checked them all last time
    everyone = tuple(eid(n) for n in range(10))
    snap = with_inspectors(
        snapshot(enterprises=10), (inspector(0, *everyone), inspector(1), inspector(2), inspector(3))
    )
    history = {e: ["INS-001"] for e in everyone}
    p = plan(PlanCategory(product="motor gasoline", spec=GASOLINE, count=4))
    result = draw(p, snap, SEED, history)
    assert len(result.selections) == 4
    for s in result.selections:
        assert s.inspectors == ("INS-002", "INS-003")


_conflicts = st.lists(st.tuples(st.integers(0, 7), st.integers(0, 11)), max_size=30)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    excluded=_conflicts,
    last_time=_conflicts,
    count=st.integers(1, 12),
    per_task=st.integers(2, 3),
    cap=st.integers(1, 6),
    seed=st.binary(min_size=16, max_size=16),
)
def test_assignments_honour_conflicts_team_size_and_workload(
    excluded: list[tuple[int, int]],
    last_time: list[tuple[int, int]],
    count: int,
    per_task: int,
    cap: int,
    seed: bytes,
) -> None:
    inspectors = tuple(inspector(i, *sorted({eid(e) for j, e in excluded if j == i})) for i in range(8))
    snap = with_inspectors(snapshot(enterprises=12), inspectors)
    history: dict[str, list[str]] = {}
    for i, e in last_time:
        history.setdefault(eid(e), []).append(f"INS-{i:03d}")
    p = plan(
        PlanCategory(product="motor diesel", spec=DIESEL, count=count),
        inspectors_per_task=per_task,
        max_tasks_per_inspector=cap,
    )
    result = draw(p, snap, seed, history)
    assert len(result.selections) + len(result.unfilled) == count  # nothing dropped
    avoid = {(f"INS-{i:03d}", eid(e)) for i, e in excluded + last_time}
    load: Counter[str] = Counter()
    for s in result.selections:
        assert len(s.inspectors) == per_task == len(set(s.inspectors))
        assert not any((i, s.enterprise_id) in avoid for i in s.inspectors)
        load.update(s.inspectors)
    assert max(load.values(), default=0) <= cap
    for u in result.unfilled:
        assert u.reason is UnfilledReason.TOO_FEW_INSPECTORS


@pytest.mark.parametrize(("count", "inspectors"), [(7, 5), (10, 6), (3, 7), (9, 4)])
def test_workload_is_balanced_within_one_without_conflicts(count: int, inspectors: int) -> None:
    p = plan(PlanCategory(product="motor gasoline", spec=GASOLINE, count=count), max_tasks_per_inspector=20)
    result = draw(p, snapshot(inspectors=inspectors), SEED)
    load = Counter(i for s in result.selections for i in s.inspectors)
    loads = [load[f"INS-{n:03d}"] for n in range(inspectors)]
    assert sum(loads) == 2 * count and max(loads) - min(loads) <= 1


def test_too_few_inspectors_leaves_the_entry_unfilled_with_its_reason() -> None:
    p = plan(PlanCategory(product="motor gasoline", spec=GASOLINE, count=3), max_tasks_per_inspector=1)
    result = draw(p, snapshot(inspectors=3), SEED)
    assert len(result.selections) == 1
    assert [u.reason for u in result.unfilled] == [UnfilledReason.TOO_FEW_INSPECTORS] * 2
    # the third inspector is still free, but one is not a team
    assert all(u.enterprise_id and u.detail.startswith("1 of 2 inspectors") for u in result.unfilled)


# --- labs --------------------------------------------------------------------------------------


def test_labs_must_be_accredited_enabled_and_have_capacity() -> None:
    labs = (
        lab("LAB-A", ScopeEntry(spec="GB17930-2016:*"), capacity=2),
        lab("LAB-B", ScopeEntry(product="motor gasoline", items=("sulfur",)), capacity=2),
        lab("LAB-C", ScopeEntry(spec="GB17930-2016:*"), capacity=50, enabled=False),
        lab("LAB-D", ScopeEntry(product="motor diesel"), capacity=50),
    )
    p = plan(PlanCategory(product="motor gasoline", spec=GASOLINE, count=4))
    result = draw(p, snapshot(labs=labs), SEED)
    assert [s.lab_id for s in result.selections] == ["LAB-A", "LAB-A"]
    assert [u.reason for u in result.unfilled] == [UnfilledReason.NO_LAB] * 2
    assert "no enabled lab accredited for GB17930-2016:VIB:92" in result.unfilled[0].detail
    # a sulfur-only campaign may use LAB-B as well; lab_days stretches capacity
    p = plan(PlanCategory(product="motor gasoline", spec=GASOLINE, items=("sulfur",), count=6), lab_days=2)
    result = draw(p, snapshot(labs=labs), SEED)
    assert Counter(s.lab_id for s in result.selections) == {"LAB-A": 3, "LAB-B": 3}
    assert all(s.items == ("sulfur",) for s in result.selections)


def test_labs_are_filled_by_share_of_capacity_and_tasks_get_every_spec_item() -> None:
    labs = (
        lab("LAB-A", ScopeEntry(spec="GB17930-2016:*"), capacity=4),
        lab("LAB-B", ScopeEntry(spec="GB17930-2016:*"), capacity=8),
    )
    p = plan(PlanCategory(product="motor gasoline", spec=GASOLINE, count=6), max_tasks_per_inspector=20)
    result = draw(p, snapshot(labs=labs), SEED)
    assert Counter(s.lab_id for s in result.selections) == {"LAB-A": 2, "LAB-B": 4}
    assert "ron" in result.selections[0].items and "sulfur" in result.selections[0].items


# --- fairness ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("df", "table"), [(3, 16.266), (5, 20.515), (10, 29.588), (30, 59.703)])
def test_chi_square_quantile_matches_the_tables(df: int, table: float) -> None:
    assert chi_square_quantile(0.999, df) == pytest.approx(table, rel=0.02)
    assert chi_square_quantile(0.95, df) < chi_square_quantile(0.999, df)


def test_chi_square_statistic() -> None:
    assert chi_square([10, 20, 30], [20, 20, 20]) == pytest.approx(10.0)
    with pytest.raises(ValueError):
        chi_square([1], [1, 2])


def test_selection_frequency_matches_the_risk_weights() -> None:
    weights = {eid(n): RiskFactors(failures=n // 2, complaints=n % 2, months_since_check=0) for n in range(6)}
    snap = snapshot(enterprises=6, inspectors=2)
    p = plan(PlanCategory(product="motor gasoline", spec=GASOLINE, count=1), risk=weights)
    draws = 2000
    counts = Counter(
        chosen(draw(p, snap, hashlib.sha256(f"fair {n}".encode()).digest()))[0] for n in range(draws)
    )
    total = sum(w.weight for w in weights.values())  # weights 1..6
    expected = [draws * weights[e].weight / total for e in sorted(weights)]
    observed = [counts[e] for e in sorted(weights)]
    assert chi_square(observed, expected) < chi_square_quantile(0.999, len(weights) - 1)


def test_successive_sampling_is_fair_for_the_second_place_too() -> None:
    # 2 of {a: 1, b: 1, c: 2}: P({a, b}) = 1/4·1/3 + 1/4·1/3 = 1/6, P({a, c}) = 1/4·2/3 + 1/2·1/2 = 5/12
    draws = 3000
    pairs = Counter(
        "".join(sorted(SeedStream(SEED, f"pair {n}").weighted_sample({"a": 1, "b": 1, "c": 2}, 2)))
        for n in range(draws)
    )
    expected = {"ab": Fraction(1, 6), "ac": Fraction(5, 12), "bc": Fraction(5, 12)}
    assert set(pairs) == set(expected)
    statistic = chi_square([pairs[k] for k in expected], [float(draws * p) for p in expected.values()])
    assert statistic < chi_square_quantile(0.999, 2)


# --- purity ------------------------------------------------------------------------------------


def test_the_draw_modules_import_no_io_library() -> None:
    probe = (
        "import sys, json, spotcheck.draws, spotcheck.draw_stats;"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules}"
        " & {'aiokafka', 'faust', 'asyncpg', 'aiohttp'})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_a_category_may_be_limited_to_kinds_of_enterprise() -> None:
    snapshot = Snapshot(
        enterprises=tuple(enterprise(n) for n in range(1, 21)),
        inspectors=tuple(inspector(n) for n in range(1, 11)),
        labs=(lab("LAB-1", ScopeEntry(spec="*")),),
        taken_at=TAKEN,
    )
    stations = PlanCategory(
        product="motor gasoline", spec=GASOLINE, count=20, kinds=(EnterpriseKind.FILLING_STATION,)
    )
    plan = Plan(plan_id="P-K", draw_date=date(2026, 3, 1), categories=(stations,), max_tasks_per_inspector=20)
    result = draw(plan, snapshot, SEED)
    kinds = {e.enterprise_id: e.kind for e in snapshot.enterprises}
    assert {kinds[s.enterprise_id] for s in result.selections} == {EnterpriseKind.FILLING_STATION}
    assert len(result.selections) == sum(1 for k in kinds.values() if k is EnterpriseKind.FILLING_STATION)
    assert result.unfilled[0].detail == "20 wanted, 10 eligible"
