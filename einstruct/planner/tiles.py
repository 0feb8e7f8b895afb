"""Tile policies of the fused kernels: block sizes per class, for GPUs and for Triton's interpreter.

A kernel *family* fixes which classes a program tiles (grid), which it loops
over in chunks, and which it holds whole (:data:`FAMILIES`). A policy gives each
present class a power-of-two block:

- **GPU** (:func:`gpu_tiles`): a few configurations for autotuning. Each starts
  from the whole class (at most :data:`MAX_BLOCK`; the classes the family holds
  whole are never cut), raises every ``tl.dot`` reduction to at least
  :data:`MIN_DOT_K` (the tensor cores' K for 16-bit inputs; the masks zero the
  padding), then halves blocks until the tiles a program holds fit
  :data:`REGISTERS_PER_THREAD` fp32 values per thread. ``tests/test_triton_aot.py``
  compiles every configuration for sm_80 and sm_90 and checks ptxas spills nothing.
- **Interpreter** (:func:`interpreter_tiles`): blocks of :data:`INTERPRETER_BLOCK`
  (tokens: :data:`INTERPRETER_BLOCK_N`), or larger where a class would need more
  than :data:`INTERPRETER_CHUNKS` chunks: the interpreter's cost grows with
  programs x loop iterations, and at test sizes these blocks still leave partial
  chunks, so every mask and loop runs.

    >>> [t.num_warps for t in gpu_tiles({"alpha": 64, "gamma": 64, "phi": 64, "epsilon": 64}, "chain_stream")]
    [4, 4, 8, 8]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "FAMILIES",
    "MAX_BLOCK",
    "MAX_WHOLE",
    "MIN_DOT_K",
    "REGISTERS_PER_THREAD",
    "LOAD_WEIGHT",
    "MAX_REGISTERS",
    "INTERPRETER_BLOCK",
    "INTERPRETER_BLOCK_N",
    "INTERPRETER_CHUNKS",
    "SPLIT_TOKENS",
    "MAX_SPLIT",
    "Tiles",
    "footprint",
    "gpu_tiles",
    "interpreter_tiles",
    "pow2",
]

#: family -> (classes tiled by the grid, classes looped over in chunks, classes held whole).
FAMILIES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    # a program: a token tile x a block of phi, delta, epsilon; loops over (gamma, beta), then alpha
    "chain_stream": (("n", "phi", "delta", "epsilon"), ("gamma", "beta", "alpha"), ("rho",)),
    # a program: a token tile x a block of phi, delta; the whole step-2 reduction at once, then epsilon
    "chain_stationary": (("n", "phi", "delta"), ("alpha", "epsilon"), ("gamma", "beta", "rho")),
    # a program: a block of the second factor's gradient; loops over tokens, delta, alpha
    "factor_stream": (("phi", "gamma", "beta", "epsilon"), ("n", "delta", "alpha"), ("rho",)),
}
#: The largest block of one class on a GPU (the classes a family holds whole excepted).
MAX_BLOCK = 64
#: The largest class a family may hold whole, or give one block (epsilon in the stream families).
MAX_WHOLE = 256
#: The smallest reduction of a ``tl.dot`` on a GPU for 16-bit inputs (fp32: half of it).
MIN_DOT_K = 16
#: Registers per thread (of 255) the tiles of one program may take, by :func:`footprint`.
#: Set so that every configuration compiles without spills (tests/test_triton_aot.py).
REGISTERS_PER_THREAD = 128
#: A loaded tile costs its values, their 64-bit addresses and masks.
LOAD_WEIGHT = 3
#: Every configuration launches with ``maxnreg`` this high: without a bound, ptxas (sm_90 most
#: often) chose 48 or 64 registers and spilled 4-32 bytes to reach a higher occupancy.
MAX_REGISTERS = 255
#: Interpreter policy: blocks of at most this many entries per class, and of tokens.
INTERPRETER_BLOCK = 8
INTERPRETER_BLOCK_N = 16
INTERPRETER_CHUNKS = 4
#: A factor gradient's programs each take at least SPLIT_TOKENS tokens, in at most MAX_SPLIT shares
#: (summed afterwards): enough programs to fill a GPU when the gradient has few blocks.
SPLIT_TOKENS = 512
MAX_SPLIT = 64
#: (num_warps, BLOCK_N) of the GPU configurations tried, in order.
_GPU_SHAPES = ((4, 32), (4, 64), (8, 64), (8, 128))
#: The classes that are a batch axis of a family's 3-D ``tl.dot`` s: a batch block of 2 made
#: ptxas spill at 72 registers (sm_90), so blocks of 4 halve straight to 1.
_BATCHES = {
    "chain_stream": ("gamma", "phi"),
    "chain_stationary": ("gamma", "phi"),
    "factor_stream": ("gamma", "phi"),
}
_SHRINK_ORDER = ("alpha", "delta", "phi", "gamma", "beta", "epsilon", "n")


@dataclass(frozen=True)
class Tiles:
    """One kernel configuration: a block per tiled class (``n`` for tokens), warps, stages."""

    blocks: tuple[tuple[str, int], ...]
    num_warps: int = 4
    num_stages: int = 2

    def block(self, cls: str) -> int:
        """The block of ``cls`` (1 for a class the kernel does not tile)."""
        return dict(self.blocks).get(cls, 1)


def pow2(n: int) -> int:
    """The smallest power of two at least ``n``."""
    return 1 << max(0, (n - 1).bit_length())


def footprint(blocks: dict[str, int], family: str) -> int:
    """Registers one program's tiles need: the intermediate and the accumulator once, every tile
    loaded from memory :data:`LOAD_WEIGHT` times (its values, 64-bit addresses, masks)."""
    names = ("n", "alpha", "beta", "gamma", "delta", "epsilon", "phi", "rho")
    n, a, bb, g, d, e, f, r = (blocks.get(c, 1) for c in names)
    x_tile, p_tile, t_tile = g * n * bb * a, g * a * f * d * r, g * n * bb * f * d * r
    if family == "factor_stream":  # loads x, p, dy; holds t and the gradient block
        return t_tile + f * g * bb * r * e + LOAD_WEIGHT * (x_tile + p_tile + f * n * d * e)
    return t_tile + f * n * d * e + LOAD_WEIGHT * (x_tile + p_tile + f * g * bb * r * e)


def _reductions(family: str) -> tuple[tuple[str, ...], ...]:
    """The classes each ``tl.dot`` of the family sums over (its K)."""
    if family == "factor_stream":
        return (("alpha",), ("n", "delta"))
    return (("alpha",), ("gamma", "beta", "rho"))


def _start(sizes: dict[str, int], family: str) -> dict[str, int] | None:
    grid, loops, whole = FAMILIES[family]
    blocks: dict[str, int] = {}
    for cls in (*grid, *loops, *whole):
        if cls == "n":
            continue
        size = sizes.get(cls, 1)
        if size == 1:
            continue
        full = pow2(size)
        if cls in whole or (cls == "epsilon" and family != "chain_stationary"):
            if full > MAX_WHOLE:
                return None
            blocks[cls] = full
        else:
            blocks[cls] = min(full, MAX_BLOCK)
    return blocks


def _raise_reductions(blocks: dict[str, int], family: str, sizes: dict[str, int], min_k: int) -> None:
    """Pad every dot's reduction to ``min_k`` (masked), growing its largest member."""
    for group in _reductions(family):
        members = [c for c in group if c == "n" or sizes.get(c, 1) > 1]
        if not members:
            continue
        while math.prod(blocks.get(c, 1) for c in members) < min_k:
            grow = max(members, key=lambda c: (sizes.get(c, 1), -group.index(c)))
            blocks[grow] = blocks.get(grow, 1) * 2


def _fits_k(blocks: dict[str, int], family: str, sizes: dict[str, int], min_k: int) -> bool:
    for group in _reductions(family):
        members = [c for c in group if c == "n" or sizes.get(c, 1) > 1]
        if members and math.prod(blocks.get(c, 1) for c in members) < min_k:
            return False
    return True


def _fit(sizes: dict[str, int], family: str, block_n: int, budget: int, min_k: int) -> dict[str, int] | None:
    start = _start(sizes, family)
    if start is None:
        return None
    blocks = {"n": block_n, **start}
    _raise_reductions(blocks, family, sizes, min_k)
    _, _, whole = FAMILIES[family]
    fixed = set(whole) | ({"epsilon"} if family != "chain_stationary" else set())
    while footprint(blocks, family) > budget:
        best = None
        for cls in _SHRINK_ORDER:
            if cls not in blocks or cls in fixed or blocks[cls] == 1 or (cls == "n" and blocks[cls] <= 16):
                continue
            smaller = 1 if cls in _BATCHES[family] and blocks[cls] == 4 else blocks[cls] // 2
            trial = {**blocks, cls: smaller}
            if not _fits_k(trial, family, sizes, min_k):
                continue
            saved = footprint(blocks, family) - footprint(trial, family)
            if best is None or saved > best[0]:
                best = (saved, cls)
        if best is None:
            return None
        cls = best[1]
        blocks[cls] = 1 if cls in _BATCHES[family] and blocks[cls] == 4 else blocks[cls] // 2
    return blocks


def gpu_tiles(sizes: dict[str, int], family: str, itemsize: int = 2) -> tuple[Tiles, ...]:
    """The GPU configurations to autotune over for inputs of ``itemsize`` bytes (2: fp16 and
    bf16, 4: fp32), empty when no tile fits. 4-byte operands take twice the registers, so
    their budget is half; their ``tl.dot`` needs a reduction of 8, not 16."""
    out: list[Tiles] = []
    budget = REGISTERS_PER_THREAD * 2 // itemsize
    for warps, block_n in _GPU_SHAPES:
        blocks = _fit(sizes, family, block_n, budget * 32 * warps, MIN_DOT_K * 2 // itemsize)
        if blocks is None:
            continue
        tiles = Tiles(tuple(sorted(blocks.items())), num_warps=warps, num_stages=2)
        if tiles not in out:
            out.append(tiles)
    return tuple(out)


def interpreter_tiles(sizes: dict[str, int], family: str) -> Tiles:
    """The interpreter's configuration: small blocks (a wide class in at most
    :data:`INTERPRETER_CHUNKS` chunks), whole where the family needs it."""
    _, _, whole = FAMILIES[family]
    blocks = {"n": INTERPRETER_BLOCK_N}
    for cls, size in sizes.items():
        if size == 1 or cls not in (c for group in FAMILIES[family] for c in group):
            continue
        small = max(INTERPRETER_BLOCK, pow2(-(-size // INTERPRETER_CHUNKS)))
        blocks[cls] = pow2(size) if cls in whole else min(pow2(size), small)
    return Tiles(tuple(sorted(blocks.items())), num_warps=1, num_stages=1)
