"""Two-way splits of a width: the sizes behind ``sqrt_lo(d)`` and ``sqrt_hi(d)``.

Catalog forms split each width w into two axes, ``sqrt_lo(w) <= sqrt_hi(w)``.
The rule, in order:

1. **The papers' split**, when it is no more lopsided than :data:`MAX_RATIO`:
   distribute w's prime factors, each (in increasing order, with multiplicity)
   onto the part with the smaller product (compute-better-spent's
   ``factorize``). 768 = 16 x 48, 3072 = 32 x 96, 2048 = 32 x 64, every power of
   two and every 2^a 3^b the papers trained on; sizes, init and learning rates
   then equal theirs.
2. Otherwise **the most even exact split** (the divisor of w nearest below
   sqrt(w)), when no more lopsided than :data:`MAX_RATIO`: 320 = 16 x 20 where
   the papers' rule gives 8 x 40.
3. Otherwise **ceil(sqrt(w)) and ceil(w / ceil(sqrt(w)))**: the axes cover a
   little more than w and the layer pads (1018 = 2 x 509 becomes 32 x 32).
   Never fewer features than w: einstruct does not truncate. Widths above
   10^12 go straight to this rule (finding their factors would be slow).

    >>> split(768), split(2048), split(320), split(1018)
    ((16, 48), (32, 64), (16, 20), (32, 32))
"""

from __future__ import annotations

import math
from functools import lru_cache

__all__ = ["MAX_RATIO", "LARGEST_SEARCHED", "split", "papers_split", "even_split", "padded_split"]

#: The most lopsided exact split a catalog form takes (larger part / smaller part).
MAX_RATIO = 4

#: Widths above this are split by rule 3 at once (no search for factors: it would be slow).
LARGEST_SEARCHED = 10**12


def _prime_factors(n: int) -> list[int]:
    """Prime factors of n with multiplicity, in increasing order."""
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    if n > 1:
        out.append(n)
    return out


def papers_split(width: int) -> tuple[int, int]:
    """The papers' greedy split: each prime factor onto the smaller part, sorted."""
    parts = [1, 1]
    for p in _prime_factors(width):
        parts[0 if parts[0] <= parts[1] else 1] *= p
    lo, hi = sorted(parts)
    return lo, hi


def even_split(width: int) -> tuple[int, int]:
    """The most even exact split: the largest divisor at most sqrt(width), and the rest."""
    lo = next(k for k in range(math.isqrt(width), 0, -1) if width % k == 0)
    return lo, width // lo


def padded_split(width: int) -> tuple[int, int]:
    """ceil(width / ceil(sqrt(width))) and ceil(sqrt(width)): covers width, may exceed it."""
    hi = math.isqrt(width - 1) + 1 if width > 1 else 1
    return -(-width // hi), hi


@lru_cache(maxsize=4096)
def split(width: int) -> tuple[int, int]:
    """The two parts ``(lo, hi)`` of a width, ``lo <= hi``, ``lo * hi >= width`` (see the module)."""
    if width < 1:
        raise ValueError(f"a width must be a positive integer, got {width}")
    if width > LARGEST_SEARCHED:
        return padded_split(width)
    for rule in (papers_split, even_split):
        lo, hi = rule(width)
        if hi <= MAX_RATIO * lo:
            return lo, hi
    return padded_split(width)
