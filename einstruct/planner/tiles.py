"""Tile policies of the fused kernels: block sizes per class, for GPUs and for Triton's interpreter.

A kernel *family* fixes which classes a program tiles (grid), which it loops
over in chunks, and which it holds whole (:data:`FAMILIES`). A policy gives each
present class a power-of-two block:

- **GPU** (:func:`gpu_tiles`): a few configurations for autotuning. Of every
  choice of power-of-two blocks (at most :data:`MAX_BLOCK`; the classes the
  family holds whole are never cut; every ``tl.dot`` reduction at least
  :data:`MIN_DOT_K`, the tensor cores' K for 16-bit inputs, the masks zeroing
  the padding) whose tiles fit :data:`REGISTERS_PER_THREAD` fp32 values per
  thread, those whose programs request the fewest bytes per token
  (:func:`requested_per_token`: re-reads included), preferring step-1 dots
  with at least :data:`MIN_DOT_N` columns. ``tests/test_triton_aot.py``
  compiles every configuration for sm_80 and sm_90 and checks ptxas spills
  nothing; ``benchmarks/kernel_traffic.py`` counts the bytes.
- **Interpreter** (:func:`interpreter_tiles`): blocks of :data:`INTERPRETER_BLOCK`
  (tokens: :data:`INTERPRETER_BLOCK_N`), or larger where a class would need more
  than :data:`INTERPRETER_CHUNKS` chunks: the interpreter's cost grows with
  programs x loop iterations, and at test sizes these blocks still leave partial
  chunks, so every mask and loop runs.

    >>> btt = {"alpha": 64, "gamma": 64, "phi": 64, "epsilon": 64}
    >>> [dict(t.blocks)["phi"] for t in gpu_tiles(btt, "chain_stream")]
    [4]
"""

from __future__ import annotations

import functools
import itertools
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
    "GPU_CONFIGS",
    "MIN_DOT_N",
    "requested_per_token",
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
#: The smallest reduction of a ``tl.dot`` on a GPU (every dtype: Triton 3.6 refuses K < 16).
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
#: (num_warps, BLOCK_N) of the GPU configurations tried.
_GPU_SHAPES = ((4, 16), (4, 32), (4, 64), (8, 16), (8, 32), (8, 64), (8, 128))
#: Software-pipelining stages of every GPU configuration (loads of the next chunk in flight).
_STAGES = 3
#: How many configurations autotuning tries per kernel (the cheapest in bytes, one per warp count).
GPU_CONFIGS = 2
#: The smallest column count of step 1's ``tl.dot`` (tensor cores' N is 8).
MIN_DOT_N = 8
#: The classes that are a batch axis of a family's 3-D ``tl.dot`` s: a batch block of 2 made
#: ptxas spill at 72 registers (sm_90), so blocks of 4 halve straight to 1.
_BATCHES = {
    "chain_stream": ("gamma", "phi"),
    "chain_stationary": ("gamma", "phi"),
    "factor_stream": ("gamma", "phi"),
}


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


def _fits_k(blocks: dict[str, int], family: str, sizes: dict[str, int], min_k: int) -> bool:
    for group in _reductions(family):
        members = [c for c in group if c == "n" or sizes.get(c, 1) > 1]
        if members and math.prod(blocks.get(c, 1) for c in members) < min_k:
            return False
    return True


def requested_per_token(blocks: dict[str, int], family: str, sizes: dict[str, int]) -> float:
    """Entries per token one launch's programs request from memory (loads and stores), modelled
    from the family's loops: a tensor is read again once per block of each grid class it lacks
    (and once per chunk of a loop class it lacks that runs outside its own loop); the factors
    once per token tile. ``benchmarks/kernel_traffic.py`` counts the same in the interpreter.

        >>> sizes = {"alpha": 64, "gamma": 64, "phi": 64, "epsilon": 64}
        >>> blocks = {"n": 16, "alpha": 32, "gamma": 16, "phi": 1, "epsilon": 64}
        >>> requested_per_token(blocks, "chain_stream", sizes) / 4096  # x 64 times, factors, y
        73.0
    """
    z = {c: sizes.get(c, 1) for c in ("alpha", "beta", "gamma", "delta", "epsilon", "phi", "rho")}
    chunks = {c: -(-z[c] // blocks.get(c, 1)) for c in z}
    x, y = z["alpha"] * z["beta"] * z["gamma"], z["phi"] * z["delta"] * z["epsilon"]
    p = z["gamma"] * z["alpha"] * z["phi"] * z["delta"] * z["rho"]
    q = z["phi"] * z["gamma"] * z["beta"] * z["rho"] * z["epsilon"]
    n = blocks.get("n", 1)
    f, d, e, g, b = (chunks[c] for c in ("phi", "delta", "epsilon", "gamma", "beta"))
    if family == "chain_stream":
        return x * f * d * e + (p * b * e + q * d) / n + y
    if family == "chain_stationary":
        return x * f * d + (p + q * d) / n + y
    # factor_stream: x lacks phi, epsilon and the delta loop; dy lacks gamma, beta
    return x * f * e * d + y * g * b + p * b * e / n


def _choices(cls: str, size: int, family: str, fixed: set[str]) -> list[int]:
    full = pow2(size)
    if cls in fixed:  # whole, or padded up to a tensor-core K
        return [v for v in (full, 2 * full, 4 * full, 8 * full, 16 * full) if v <= max(full, MIN_DOT_K)]
    # up to the class (at most MAX_BLOCK), or to a tensor-core K where a dot must be padded
    options = [v for v in (1, 2, 4, 8, 16, 32, 64) if v <= max(min(full, MAX_BLOCK), MIN_DOT_K)]
    if cls in _BATCHES[family]:  # a batch block of 2 made ptxas spill (sm_90)
        options = [v for v in options if v != 2]
    return options


@functools.lru_cache(maxsize=1024)
def _ranked(sizes_key: tuple[tuple[str, int], ...], family: str, itemsize: int) -> tuple[Tiles, ...]:
    sizes = dict(sizes_key)
    start = _start(sizes, family)
    if start is None:
        return ()
    _, _, whole = FAMILIES[family]
    fixed = set(whole) | ({"epsilon"} if family != "chain_stationary" else set())
    classes = sorted(start)
    grids = [_choices(c, sizes[c], family, fixed) for c in classes]
    budget = REGISTERS_PER_THREAD * 2 // itemsize
    min_k = MIN_DOT_K  # also for fp32: Triton 3.6 (the floor) refuses a tl.dot with K < 16
    found: list[tuple[bool, float, int, Tiles]] = []
    for warps, block_n in _GPU_SHAPES:
        for values in itertools.product(*grids):
            blocks = {"n": block_n, **dict(zip(classes, values))}
            if not _fits_k(blocks, family, sizes, min_k):
                continue
            if footprint(blocks, family) > budget * 32 * warps:
                continue
            cost = requested_per_token(blocks, family, sizes)
            tiles = Tiles(tuple(sorted(blocks.items())), num_warps=warps, num_stages=_STAGES)
            padded = not _dots_unpadded(blocks, family, sizes)
            found.append((padded, cost, -footprint(blocks, family), tiles))
    found.sort(key=lambda item: item[:3])  # unpadded dots first where any fits, then fewest bytes
    return tuple(item[3] for item in found)


def _dots_unpadded(blocks: dict[str, int], family: str, sizes: dict[str, int]) -> bool:
    """No ``tl.dot`` dimension padded up from 1 where the chain has more than one entry for it:
    step 1's columns (phi, delta, rho) and rows (tokens, beta) are at least :data:`MIN_DOT_N`."""
    cols = [c for c in ("phi", "delta", "rho") if sizes.get(c, 1) > 1]
    need = min(MIN_DOT_N, math.prod(pow2(sizes[c]) for c in cols)) if cols else 1
    return math.prod(blocks.get(c, 1) for c in cols) >= need


def gpu_tiles(sizes: dict[str, int], family: str, itemsize: int = 2) -> tuple[Tiles, ...]:
    """The GPU configurations to autotune over for inputs of ``itemsize`` bytes (2: fp16 and
    bf16, 4: fp32), empty when no tile fits: of every block choice whose tiles fit the register
    budget (4-byte operands take twice the registers, so half of it), the :data:`GPU_CONFIGS`
    that request the fewest bytes per token (:func:`requested_per_token`), one per warp count."""
    ranked = _ranked(tuple(sorted((c, v) for c, v in sizes.items() if v > 1)), family, itemsize)
    out: list[Tiles] = []
    for tiles in ranked:
        if all(t.num_warps != tiles.num_warps for t in out):
            out.append(tiles)
        if len(out) == GPU_CONFIGS:
            break
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
