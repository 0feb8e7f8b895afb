"""Launch configurations of the fused kernels: blocks for GPUs and for Triton's interpreter.

Every launch of the fused path (the runtime's :mod:`einstruct.nn.kernels`) is a
matrix product whose rows are the tokens (times the class a step carries):

- a **step** ``out[rows, c] = a[rows, k] w[k, c]`` per batch group: blocks
  ``BLOCK_M`` (rows), ``BLOCK_K`` (summed), ``BLOCK_C`` (made) and ``C_INNER``
  (the program keeps its input tile and loops over column blocks, which needs
  the summed classes in one block; else it keeps its weight tile, when that fits
  one block, and loops over a run of row tiles);
- a **factor gradient** ``gw[k, c] = sum over rows of a[rows, k] d[rows, c]``,
  the rows split into shares: blocks ``BLOCK_M`` (rows per iteration),
  ``BLOCK_K``, ``BLOCK_C``.

Every block is a power of two of at least :data:`MIN_DOT` (the tensor cores'
smallest 16-bit product; the masks zero the padding), so no ``tl.dot`` has a
dimension padded up from 1. The GPU rows are a few shapes of Triton's matmul
tutorial cut to the product's sizes (autotuning picks one per token count);
``tests/test_triton_aot.py`` compiles each for sm_80 and sm_90 and checks ptxas
spills nothing. :func:`requested_per_token` counts the bytes a row's programs
request, re-reads included, exactly as ``benchmarks/kernel_traffic.py`` counts
them from the kernels.

    >>> step = Launch("forward_first", "step", rows=1, groups=64, summed=64, made=64)
    >>> gpu_rows(step)[0]
    (128, 64, 64, False, 4, 3)
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "MIN_DOT",
    "MAX_REGISTERS",
    "SPLIT_ROWS",
    "MAX_SPLIT",
    "PROGRAMS",
    "Launch",
    "gpu_rows",
    "interpreter_row",
    "requested_per_token",
    "ideal_per_token",
    "shares",
    "pow2",
]

#: The smallest block of any ``tl.dot`` dimension.
MIN_DOT = 16
#: Registers ptxas may use per thread (the runtime's ``_MAX_REGISTERS``).
MAX_REGISTERS = 255
#: A factor gradient gives each share at least SPLIT_ROWS rows, in at most MAX_SPLIT
#: shares; a step aims at about PROGRAMS programs (the runtime's constants).
SPLIT_ROWS = 512
MAX_SPLIT = 64
PROGRAMS = 1024
#: The interpreter's rows per block (small: its cost grows with the work per program).
INTERPRETER_BLOCK_M = 32
#: The interpreter's largest block of summed or made entries.
INTERPRETER_BLOCK = 64


@dataclass(frozen=True)
class Launch:
    """One launch of a chain's fused path, as its kernel sees it.

    Attributes:
        name: the runtime's name for it (``forward_first``, ..., ``grad_second``).
        kind: ``step`` or ``factor`` (a factor gradient).
        rows: rows per token (the size of the class carried along the tokens).
        groups: the batch class's size (one product per group).
        summed, made: entries summed per row, and made per row (a step) or the
            gradient's columns (a factor gradient), per group.
    """

    name: str
    kind: str
    rows: int
    groups: int
    summed: int
    made: int

    @property
    def weight(self) -> int:
        """Entries of the factor the launch reads (a step) or whose gradient it makes."""
        return self.groups * self.summed * self.made

    def flops_per_token(self, row: tuple | None = None) -> int:
        """FLOPs per token: twice the product's entries, padded to row's blocks if given."""
        k, c = self.summed, self.made
        if row is not None:
            blocks = dict(zip(("BLOCK_M", "BLOCK_K", "BLOCK_C"), row))
            k = -(-k // blocks["BLOCK_K"]) * blocks["BLOCK_K"]
            c = -(-c // blocks["BLOCK_C"]) * blocks["BLOCK_C"]
        return 2 * self.rows * self.groups * k * c


def pow2(n: int) -> int:
    """The smallest power of two >= n."""
    return 1 << max(0, int(n) - 1).bit_length()


def _block(size: int, most: int) -> int:
    return max(MIN_DOT, min(most, pow2(size)))


def gpu_rows(launch: Launch, itemsize: int = 2) -> tuple[tuple, ...]:
    """The GPU configurations autotuning chooses from: rows of the kernel's blocks, then
    num_warps and num_stages, the one that requests the fewest bytes first.

    16-bit inputs: 64-128 rows by up to 128 columns, summed entries in one block of up
    to 64 (the weight tile stays) or in blocks of 64; 4-byte inputs: half of each.
    """
    wide = itemsize >= 4
    most_k, most_c, stages = (32, 64, 2) if wide else (64, 128, 3)
    k = _block(launch.summed, most_k)
    c = _block(launch.made, most_c)
    rows: list[tuple] = []
    if launch.kind == "factor":
        for m, kk, cc in ((64, k, c), (32, min(k, 64), min(c, 64))):
            warps = 8 if kk * cc >= 128 * 128 else 4
            rows.append((m // 2 if wide else m, kk, cc, warps, stages))
        if not wide and max(launch.summed, launch.made) > most_k:  # one side whole: read once
            whole_k, whole_c = _block(launch.summed, 256), _block(launch.made, 256)
            if launch.summed >= launch.made:
                rows.append((32, whole_k, min(c, 64), 8, stages))
            else:
                rows.append((32, min(k, 64), whole_c, 8, stages))
    else:
        for m in (128, 64):
            warps = 8 if m * c >= 128 * 128 else 4
            rows.append((m, k, c, False, warps, stages))
        if not wide and launch.made > c:  # every column in one block: the input read once
            rows.append((64, k, _block(launch.made, 2 * most_c), False, 8, stages))
        if not wide and most_k < launch.summed <= 4 * most_k:  # the weight tile stays
            rows.append((64, _block(launch.summed, 4 * most_k), min(c, 64), False, 8, 2))
        if launch.summed <= k and launch.made > c:  # the input tile stays
            rows += [(64, k, c, True, 4, stages), (128, k, c, True, 8, stages)]
    unique = list(dict.fromkeys(rows))
    return tuple(sorted(unique, key=lambda r: requested_per_token(launch, r)))


def interpreter_row(launch: Launch) -> tuple:
    """The blocks under ``TRITON_INTERPRET=1``: small row blocks, summed and made entries
    in blocks of up to :data:`INTERPRETER_BLOCK` (partial blocks at test sizes, so every
    mask and loop runs); a step keeps its input tile when that fits one block and the
    columns do not."""
    k = _block(launch.summed, INTERPRETER_BLOCK)
    c = _block(launch.made, INTERPRETER_BLOCK)
    if launch.kind == "factor":
        return (INTERPRETER_BLOCK_M, k, c, 4, 1)
    inner = launch.summed <= k and launch.made > c
    return (INTERPRETER_BLOCK_M, k, c, inner, 4, 1)


def shares(rows: int, entries: int) -> tuple[int, int]:
    """A factor gradient's shares of ``rows`` rows and the rows per share (a multiple
    of 256, every BLOCK_M), as the runtime splits them: at least SPLIT_ROWS rows a
    share, at most MAX_SPLIT shares, and about PROGRAMS programs at most (one per
    block of 128 x 128 of the gradient's ``entries`` per share)."""
    blocks = max(1, -(-entries // (128 * 128)))
    count = max(1, min(MAX_SPLIT, rows // SPLIT_ROWS, PROGRAMS // blocks))
    per_share = -(-rows // count)
    per_share = max(256, -(-per_share // 256) * 256)
    return max(1, -(-rows // per_share)), per_share


def requested_per_token(launch: Launch, row: tuple, tokens: int = 16384) -> Fraction:
    """Entries the launch's programs load per token with row's blocks at ``tokens``
    tokens (re-reads included; a factor gradient's fp32 partial sums not)."""
    blocks = dict(zip(("BLOCK_M", "BLOCK_K", "BLOCK_C"), row))
    rows = tokens * launch.rows
    a_width = launch.rows * launch.groups * launch.summed  # per token
    k_tiles = -(-launch.summed // blocks["BLOCK_K"])
    c_tiles = -(-launch.made // blocks["BLOCK_C"])
    tiles = -(-rows // blocks["BLOCK_M"])
    if launch.kind == "factor":
        d_width = launch.rows * launch.groups * launch.made
        return Fraction(a_width * c_tiles + d_width * k_tiles)
    if row[3]:  # C_INNER: the input once, the weight per row tile
        return a_width + Fraction(tiles * launch.weight, tokens)
    runs = min(tiles, max(1, PROGRAMS // (c_tiles * launch.groups)))
    weight_reads = runs if k_tiles == 1 else tiles
    return a_width * c_tiles + Fraction(weight_reads * launch.weight, tokens)


def ideal_per_token(launch: Launch, tokens: int = 16384) -> Fraction:
    """Entries per token the launch must load: each operand once."""
    a_width = launch.rows * launch.groups * launch.summed
    if launch.kind == "factor":
        return Fraction(a_width + launch.rows * launch.groups * launch.made)
    return a_width + Fraction(launch.weight, tokens)
