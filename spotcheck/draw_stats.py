"""The numbers behind a draw: the seeded random stream, proportional allocation, and the
goodness-of-fit helpers used to check that draws are fair.

The random stream, for a verifier in another language: block j of the stream named `label` is
HMAC-SHA256(key=seed, msg=b"spotcheck-draw/1" 0x00 label(UTF-8) 0x00 j(8 bytes, big-endian)),
j = 0, 1, ...; the blocks are read as one byte string. An integer in [0, n) takes the next
L = ceil(bitlen(n) / 8) + 8 bytes as a big-endian x; if x < 256^L - (256^L mod n) it is x mod n,
otherwise those bytes are discarded and it tries again. Nothing uses floating point, so the same
seed gives the same numbers on every machine and Python version.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Mapping, Sequence
from fractions import Fraction
from statistics import NormalDist

STREAM_TAG = b"spotcheck-draw/1"


class SeedStream:
    """Deterministic random integers from a seed, HMAC-SHA256 in counter mode (see module doc)."""

    def __init__(self, seed: bytes, label: str) -> None:
        self._key = seed
        self._prefix = STREAM_TAG + b"\x00" + label.encode() + b"\x00"
        self._counter = 0
        self._buffer = b""

    def take(self, n: int) -> bytes:
        while len(self._buffer) < n:
            block = hmac.new(self._key, self._prefix + self._counter.to_bytes(8, "big"), hashlib.sha256)
            self._buffer += block.digest()
            self._counter += 1
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def below(self, n: int) -> int:
        """A uniform integer in [0, n), by rejection (no modulo bias)."""
        if n < 1:
            raise ValueError("n must be at least 1")
        size = (n.bit_length() + 7) // 8 + 8
        space = 256**size
        limit = space - space % n
        while True:
            x = int.from_bytes(self.take(size), "big")
            if x < limit:
                return x % n

    def shuffled(self, values: Sequence[str]) -> list[str]:
        """Fisher–Yates from the last position down, on the values as given."""
        out = list(values)
        for i in range(len(out) - 1, 0, -1):
            j = self.below(i + 1)
            out[i], out[j] = out[j], out[i]
        return out

    def weighted_sample(self, weights: Mapping[str, int], k: int) -> list[str]:
        """k distinct keys, drawn one after the other with probability weight / remaining weight
        (successive sampling: the same law as Efraimidis–Spirakis, in exact integers). Keys are
        walked in sorted order; the list is in draw order."""
        pool = sorted(weights)
        chosen: list[str] = []
        for _ in range(min(k, len(pool))):
            r = self.below(sum(weights[key] for key in pool))
            for index, key in enumerate(pool):
                r -= weights[key]
                if r < 0:
                    chosen.append(pool.pop(index))
                    break
        return chosen


def allocate(total: int, sizes: Mapping[str, int]) -> dict[str, int]:
    """Split `total` across strata in proportion to their sizes, by largest remainder (Hamilton):
    each stratum gets ⌊total·size/Σ⌋, then the leftover units go to the largest fractional parts
    (ties: the larger stratum, then the smaller key). Never more than a stratum's size when
    total ≤ Σ sizes; strata of size 0 get 0."""
    whole = sum(sizes.values())
    if whole == 0 or total <= 0:
        return {key: 0 for key in sizes}
    quotas = {key: Fraction(total * size, whole) for key, size in sizes.items()}
    shares = {key: int(q) for key, q in quotas.items()}
    left = total - sum(shares.values())
    order = sorted(sizes, key=lambda key: (-(quotas[key] - shares[key]), -sizes[key], key))
    for key in order[:left]:
        shares[key] += 1
    return shares


def chi_square(observed: Sequence[int], expected: Sequence[float]) -> float:
    """Pearson's statistic Σ (O − E)² / E."""
    if len(observed) != len(expected):
        raise ValueError("observed and expected differ in length")
    return sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))


def chi_square_quantile(p: float, df: int) -> float:
    """The p-quantile of the chi-square law with df degrees of freedom, by the Wilson–Hilferty
    approximation: df·(1 − 2/(9·df) + z_p·√(2/(9·df)))³ (within 2 % of the tables for df ≥ 3 in the
    upper tail)."""
    if df < 1 or not 0 < p < 1:
        raise ValueError("need df ≥ 1 and 0 < p < 1")
    z = NormalDist().inv_cdf(p)
    c = 2 / (9 * df)
    return df * (1 - c + z * math.sqrt(c)) ** 3
