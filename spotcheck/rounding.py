"""GB/T 8170-2008 rounding of measured values, as pure functions on Decimal."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, Inexact, localcontext

__all__ = ["last_digit_quantum", "round_to"]

_STEPS = {(1,), (2,), (5,)}


def round_to(value: Decimal, quantum: Decimal) -> Decimal:
    """Round `value` to a multiple of `quantum` by the rules of GB/T 8170-2008 (clause 3.2).

    The first discarded digit decides: below 5 drop, above 5 carry, 5 followed by any non-zero
    digit carry, exactly 5 round to the even neighbour. Negative values round their magnitude.
    On the exact decimal these rules are ROUND_HALF_EVEN, applied once to the original value.

    `quantum` is a power of ten (1, 0.1, 10, ...) or, for 0.5-unit and 0.2-unit rounding
    (clause 3.3), 5 or 2 times a power of ten. The result carries the quantum's exponent
    (round_to(Decimal("1.050"), Decimal("0.1")) is Decimal("1.0")).
    """
    if not value.is_finite():
        raise ValueError(f"cannot round {value!r}: not a finite number")
    shape = quantum.as_tuple()
    exponent = shape.exponent
    if shape.digits == (1,) and not shape.sign and isinstance(exponent, int):
        if value.adjusted() - exponent < 27:
            # A power of ten and few digits: quantize is exact and fast. Zero drops its sign.
            rounded = value.quantize(quantum, rounding=ROUND_HALF_EVEN)
            return rounded.copy_abs() if rounded.is_zero() else rounded
    elif not _is_step(quantum):
        raise ValueError(f"quantum must be 1, 2 or 5 times a power of ten, not {quantum!r}")
    assert isinstance(exponent, int)  # finite, checked above
    digits = len(value.as_tuple().digits)
    with localcontext() as ctx:
        # Enough precision for every step to be exact; Inexact traps prove it.
        ctx.prec = max(28, digits + 2, value.adjusted() - exponent + 3)
        ctx.traps[Inexact] = True
        steps = (value / quantum).to_integral_value(rounding=ROUND_HALF_EVEN)
        return Decimal(int(steps)) * quantum


def _is_step(quantum: Decimal) -> bool:
    return quantum.is_finite() and quantum > 0 and quantum.normalize().as_tuple().digits in _STEPS


def last_digit_quantum(limit: Decimal) -> Decimal:
    """The unit of a limit's last written digit: 10 -> 1, 0.8 -> 0.1, 0.005 -> 0.001, 10.0 -> 0.1.

    The rounded-value method rounds a measured value to this digit before comparing.
    """
    exponent = limit.as_tuple().exponent
    if not isinstance(exponent, int):
        raise ValueError(f"a limit must be a finite number, not {limit!r}")
    return Decimal((0, (1,), exponent))
