"""GB/T 8170-2008 rounding: the standard's examples, and properties against a reference."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spotcheck.rounding import last_digit_quantum, round_to

D = Decimal


@pytest.mark.parametrize(
    ("value", "quantum", "expected"),
    [
        # DOMAIN.md section 5
        ("1.050", "0.1", "1.0"),
        ("0.35", "0.1", "0.4"),
        ("10.4", "1", "10"),
        # first discarded digit below 5: drop
        ("12.1498", "0.1", "12.1"),
        ("0.0324", "0.001", "0.032"),
        # above 5: carry
        ("1268", "100", "1300"),
        ("10.6", "1", "11"),
        # 5 followed by a non-zero digit: carry
        ("10.5002", "1", "11"),
        ("1.0501", "0.1", "1.1"),
        ("0.45000001", "0.1", "0.5"),
        # exactly 5 (nothing or zeros after): to even
        ("0.0325", "0.001", "0.032"),
        ("0.0335", "0.001", "0.034"),
        ("32500", "1000", "32000"),
        ("33500", "1000", "34000"),
        ("2.5", "1", "2"),
        ("3.5", "1", "4"),
        ("0.5", "1", "0"),
        ("1.15000", "0.1", "1.2"),
        ("1.25000", "0.1", "1.2"),
        # negative numbers: round the magnitude, keep the sign
        ("-355", "10", "-360"),
        ("-325", "10", "-320"),
        ("-0.0365", "0.001", "-0.036"),
        ("-1.050", "0.1", "-1.0"),
        ("-10.4", "1", "-10"),
        ("-10.51", "1", "-11"),
        # round once, from the original value (not 97.46 -> 97.5 -> 98)
        ("97.46", "1", "97"),
        ("15.4546", "1", "15"),
        # nothing to discard
        ("8.30", "0.01", "8.30"),
        ("8.3", "0.01", "8.30"),
        ("7", "0.1", "7.0"),
        # 0.5-unit rounding (multiply by 2, round, halve)
        ("60.25", "0.5", "60.0"),
        ("60.38", "0.5", "60.5"),
        ("60.28", "0.5", "60.5"),
        ("-60.75", "0.5", "-61.0"),
        # 0.2-unit rounding (multiply by 5, round, divide by 5)
        ("830", "20", "840"),
        ("842", "20", "840"),
        ("-930", "20", "-920"),
    ],
)
def test_standard_examples(value: str, quantum: str, expected: str) -> None:
    result = round_to(D(value), D(quantum))
    assert result == D(expected)
    if D(quantum) < 1:
        assert str(result) == expected  # the quantum's digits are kept


def test_zero_loses_its_sign() -> None:
    assert str(round_to(D("-0.04"), D("0.1"))) == "0.0"
    assert str(round_to(D("-0.05"), D("0.1"))) == "0.0"


def test_large_values_and_tiny_quanta_stay_exact() -> None:
    big = D("123456789012345678901234567890.123456789")
    assert round_to(big, D("0.001")) == D("123456789012345678901234567890.123")
    assert round_to(big, D("0.002")) == D("123456789012345678901234567890.124")
    assert round_to(D("0.00001"), D("10")) == 0


@pytest.mark.parametrize("quantum", ["0", "-1", "0.3", "3", "NaN", "Infinity", "25"])
def test_bad_quantum(quantum: str) -> None:
    with pytest.raises(ValueError, match="quantum"):
        round_to(D("1.5"), D(quantum))


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "sNaN"])
def test_non_finite_value(value: str) -> None:
    with pytest.raises(ValueError, match="finite"):
        round_to(D(value), D("1"))


@pytest.mark.parametrize(
    ("limit", "quantum"),
    [
        ("10", "1"),
        ("0.8", "0.1"),
        ("0.005", "0.001"),
        ("2.7", "0.1"),
        ("10.0", "0.1"),
        ("-14", "1"),
        ("7.41", "0.01"),
        ("1E+1", "1E+1"),
    ],
)
def test_last_digit_quantum(limit: str, quantum: str) -> None:
    result = last_digit_quantum(D(limit))
    assert result == D(quantum)
    assert result.as_tuple().exponent == D(limit).as_tuple().exponent


def test_last_digit_quantum_refuses_non_finite() -> None:
    with pytest.raises(ValueError):
        last_digit_quantum(D("NaN"))


def test_rounded_value_example_limit_10() -> None:
    """DOMAIN 5: limit <= 10, measured 10.4 passes by rounded value, 10.5 too (even), 10.6 not."""
    q = last_digit_quantum(D("10"))
    assert round_to(D("10.4"), q) <= 10
    assert round_to(D("10.5"), q) <= 10
    assert round_to(D("10.6"), q) > 10
    assert round_to(D("10.50001"), q) > 10


# --- properties ------------------------------------------------------------------------------


def reference(value: Decimal, exponent: int) -> Decimal:
    """Round to 10**exponent digit by digit, by the rule text of GB/T 8170-2008 clause 3.2."""
    sign, digits, exp = value.as_tuple()
    assert isinstance(exp, int)
    places = {exp + len(digits) - 1 - i: d for i, d in enumerate(digits)}
    kept = sum(d * 10 ** (place - exponent) for place, d in places.items() if place >= exponent)
    first = places.get(exponent - 1, 0)
    rest = any(d for place, d in places.items() if place < exponent - 1)
    if first > 5 or (first == 5 and rest):
        kept += 1  # carry
    elif first == 5 and kept % 2 == 1:
        kept += 1  # exactly 5 after an odd digit: to even
    return Decimal((sign if kept else 0, tuple(int(c) for c in str(kept)), exponent))


coefficients = st.integers(min_value=0, max_value=10**15)
exponents = st.integers(min_value=-9, max_value=4)
values = st.builds(
    lambda sign, coefficient, exp: Decimal((sign, tuple(map(int, str(coefficient))), exp)),
    st.integers(0, 1),
    coefficients,
    exponents,
)


@st.composite
def exact_halves(draw: st.DrawFn) -> tuple[Decimal, int]:
    """A value whose discarded part is exactly 5 (possibly followed by zeros)."""
    kept = draw(st.integers(0, 10**8))
    zeros = draw(st.integers(0, 4))
    exponent = draw(st.integers(-6, 3))
    coefficient = (kept * 10 + 5) * 10**zeros
    sign = draw(st.integers(0, 1))
    value = Decimal((sign, tuple(map(int, str(coefficient))), exponent - 1 - zeros))
    return value, exponent


@given(values, exponents)
def test_agrees_with_digit_by_digit_reference(value: Decimal, exponent: int) -> None:
    quantum = Decimal((0, (1,), exponent))
    expected = reference(value, exponent)
    result = round_to(value, quantum)
    assert result == expected
    assert result.as_tuple() == expected.as_tuple()


@given(exact_halves())
def test_exact_halves_go_to_even(case: tuple[Decimal, int]) -> None:
    value, exponent = case
    result = round_to(value, Decimal((0, (1,), exponent)))
    assert result == reference(value, exponent)
    last_digit = int(abs(result).scaleb(-exponent)) % 10
    assert last_digit % 2 == 0


@given(values, exponents)
def test_symmetric_for_negatives(value: Decimal, exponent: int) -> None:
    quantum = Decimal((0, (1,), exponent))
    assert round_to(-value, quantum) == -round_to(value, quantum)


@given(values, exponents, st.sampled_from([1, 2, 5]))
def test_idempotent_close_and_a_multiple(value: Decimal, exponent: int, step: int) -> None:
    quantum = Decimal((0, (step,), exponent))
    once = round_to(value, quantum)
    assert round_to(once, quantum) == once
    assert abs(once - value) <= quantum / 2
    assert once % quantum == 0


@given(values, exponents)
def test_half_and_fifth_units_follow_the_standards_procedure(value: Decimal, exponent: int) -> None:
    ten = Decimal((0, (1,), exponent + 1))
    assert round_to(value, Decimal((0, (5,), exponent))) == round_to(value * 2, ten) / 2
    assert round_to(value, Decimal((0, (2,), exponent))) == round_to(value * 5, ten) / 5
