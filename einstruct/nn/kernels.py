"""The fused path's Triton kernels: one contraction step, one factor gradient.

A two-factor chain ``y = (x P) Q`` (the classes alpha..rho of the generated
module's ``chain`` table: which tensors hold each) runs a training step as six
launches of two kernels, each a matrix product whose operands are read
*through their layouts* (no permuting copy anywhere), with the tokens as the
rows of every 2-D ``tl.dot``:

- :func:`_step_kernel`: ``out[n, g, r, c] = sum_k a[n, g, r, k] w[g, k, c]``
  (``g`` a batch class, ``r`` a class carried from ``a`` to ``out``, ``k`` and
  ``c`` up to three classes each, decoded from one index). The forward is two
  steps (``t = x P``, ``y = t Q``), the input's gradient two more
  (``gt = gy Q^T``, ``gx = gt P^T``).
- :func:`_factor_grad_kernel`: ``gw[g, k, c] = sum over n, r of a[n, g, r, k]
  d[n, g, r, c]``, the tokens split into a fixed number of shares summed in a
  fixed order (deterministic). ``gQ`` from ``t`` and ``gy``, ``gP`` from ``x``
  and ``gt``; ``t`` is the forward's (saved) or recomputed once.

Each program of a step holds a tile of rows and loops either over row tiles with
its weight tile kept (``C_INNER`` false: the weight is read once per program,
the input once per block of columns) or over column blocks with its input tile
kept (``C_INNER`` true, when the summed classes fit one block: the input is read
once). Which, and the blocks, are the planner's (the module's ``configs``);
the intermediate is stored once in the input's dtype, as the planned torch
steps store it. Without Triton this module still imports: the layer then runs
the planned torch steps.

    >>> layouts = {"x": ("alpha",), "p": ("alpha", "rho"), "q": ("rho", "epsilon"),
    ...            "y": ("epsilon",)}  # low rank: x (n, 8) @ P (8, 2) @ Q (2, 8)
    >>> rows = {name: (32, 16, 16, False, 4, 1) for name in STEPS}
    >>> rows |= {name: (32, 16, 16, 4, 1) for name in FACTOR_GRADS}
    >>> chain = FusedChain({"alpha": 8, "rho": 2, "epsilon": 8}, layouts, {}, rows)
    >>> y = chain.forward(x, p, q)  # TRITON_INTERPRET=1 on CPU, or CUDA tensors
"""

import math
from typing import Any

import torch

# in a standalone file this name is defined by env.py's text above
if "env_flag" not in globals():
    from .env import env_flag

try:
    import triton
    import triton.language as tl
except ImportError:  # the module still works: CPU tensors run the planned torch steps
    triton = None

    class tl:  # type: ignore[no-redef]  # stands in where the kernels' signatures name it
        constexpr = None


__all__ = ["FusedChain", "launch"]

#: Run the kernels in Triton's interpreter on CPU tensors (read when this is imported),
#: if Triton itself runs interpreted: set after Triton was imported, the variable
#: leaves Triton's own functions compiled, which interpreted kernels cannot call (CPU
#: tensors then run the planned torch steps).
_INTERPRET = (
    env_flag("TRITON_INTERPRET")
    and triton is not None
    and not isinstance(tl.cdiv, triton.runtime.JITFunction)
)
#: A factor gradient gives each share at least this many rows, in at most _MAX_SPLIT
#: shares; a step's program loops over enough row tiles that a launch has about
#: _PROGRAMS programs.
_SPLIT_ROWS = 512
_MAX_SPLIT = 64
_PROGRAMS = 1024
#: Every GPU launch lets ptxas use this many registers (unbounded, it spills for
#: occupancy).
_MAX_REGISTERS = 255
#: Autotuned kernels by (configuration table, bytes per entry).
_TUNED: dict = {}

#: The classes of a chain (see the generated module's table).
CLASSES = ("alpha", "beta", "gamma", "delta", "epsilon", "phi", "rho")
#: The launches of a chain, in its classes: (input, weight, output, batch class, row
#: class, summed classes, made classes). ``t``/``gt``: the intermediates.
STEPS = {
    "forward_first": (
        "x",
        "p",
        "t",
        "gamma",
        "beta",
        ("alpha",),
        ("phi", "delta", "rho"),
    ),
    "forward_second": (
        "t",
        "q",
        "y",
        "phi",
        "delta",
        ("gamma", "beta", "rho"),
        ("epsilon",),
    ),
    "grad_input_first": (
        "y",
        "q",
        "gt",
        "phi",
        "delta",
        ("epsilon",),
        ("gamma", "beta", "rho"),
    ),
    "grad_input_second": (
        "gt",
        "p",
        "x",
        "gamma",
        "beta",
        ("phi", "delta", "rho"),
        ("alpha",),
    ),
}
#: The factor gradients: (input, output's gradient, factor, batch, row, summed into
#: the factor's rows, its columns).
FACTOR_GRADS = {
    "grad_second": (
        "t",
        "y",
        "q",
        "phi",
        "delta",
        ("gamma", "beta", "rho"),
        ("epsilon",),
    ),
    "grad_first": (
        "x",
        "gt",
        "p",
        "gamma",
        "beta",
        ("alpha",),
        ("phi", "delta", "rho"),
    ),
}
#: The intermediates' layouts (classes in memory order after the tokens): the next
#: step's summed classes innermost.
INTERMEDIATES = {
    "t": ("phi", "delta", "gamma", "beta", "rho"),
    "gt": ("gamma", "beta", "phi", "delta", "rho"),
}
#: The block names of each kernel's configuration rows (then num_warps, num_stages).
BLOCKS = {
    "step": ("BLOCK_M", "BLOCK_K", "BLOCK_C", "C_INNER"),
    "factor": ("BLOCK_M", "BLOCK_K", "BLOCK_C"),
}


def _jit(fn: Any) -> Any:
    """fn as a Triton kernel; unchanged (and never called) when Triton is not installed."""
    return fn if triton is None else triton.jit(fn)


@_jit
def _offsets(i, S2: tl.constexpr, S3: tl.constexpr, T1, T2, T3):  # type: ignore[no-untyped-def]
    """Memory offsets of flat indices i over three classes of sizes (., S2, S3) with
    strides (T1, T2, T3)."""
    return (i // (S2 * S3)) * T1 + ((i // S3) % S2) * T2 + (i % S3) * T3


@_jit
def _step_kernel(  # type: ignore[no-untyped-def]
    a_ptr,
    w_ptr,
    o_ptr,
    M,
    R: tl.constexpr,
    K1: tl.constexpr,
    K2: tl.constexpr,
    K3: tl.constexpr,
    C1: tl.constexpr,
    C2: tl.constexpr,
    C3: tl.constexpr,
    SA_N: tl.constexpr,
    SA_R: tl.constexpr,
    SA_G: tl.constexpr,
    SA_K1: tl.constexpr,
    SA_K2: tl.constexpr,
    SA_K3: tl.constexpr,
    SW_G: tl.constexpr,
    SW_K1: tl.constexpr,
    SW_K2: tl.constexpr,
    SW_K3: tl.constexpr,
    SW_C1: tl.constexpr,
    SW_C2: tl.constexpr,
    SW_C3: tl.constexpr,
    SO_N: tl.constexpr,
    SO_R: tl.constexpr,
    SO_G: tl.constexpr,
    SO_C1: tl.constexpr,
    SO_C2: tl.constexpr,
    SO_C3: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
    C_INNER: tl.constexpr,
):
    """out[n, g, r, c] = sum_k a[n, g, r, k] w[g, k, c]; rows m = n * R + r.

    Grid (programs, G). C_INNER: a program makes one row tile, its input tile loaded
    once (the summed classes fit BLOCK_K), looping over the column blocks. Else a
    program makes one column block for a run of consecutive row tiles (as many as the
    grid's programs leave it), its weight tile loaded once when the summed classes fit
    BLOCK_K.
    """
    K = K1 * K2 * K3
    C = C1 * C2 * C3
    g = tl.program_id(1)
    pid = tl.program_id(0)
    a_base = a_ptr + g * SA_G
    w_base = w_ptr + g * SW_G
    o_base = o_ptr + g * SO_G
    offs_k = tl.arange(0, BLOCK_K)
    if C_INNER:
        tl.static_assert(
            K1 * K2 * K3 <= BLOCK_K, "C_INNER needs every summed entry in one block"
        )
        offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        m_mask = offs_m < M
        n = (offs_m // R).to(tl.int64)
        r = offs_m % R
        a_offs = (n * SA_N + r * SA_R)[:, None]
        a_offs += _offsets(offs_k, K2, K3, SA_K1, SA_K2, SA_K3)[None, :]
        a_mask = m_mask[:, None] & (offs_k < K)[None, :]
        a_tile = tl.load(a_base + a_offs, mask=a_mask, other=0.0)
        o_rows = (n * SO_N + r * SO_R)[:, None]
        w_k = _offsets(offs_k, K2, K3, SW_K1, SW_K2, SW_K3)[:, None]
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            c_mask = offs_c < C
            w_offs = w_k + _offsets(offs_c, C2, C3, SW_C1, SW_C2, SW_C3)[None, :]
            w_mask = (offs_k < K)[:, None] & c_mask[None, :]
            w_tile = tl.load(w_base + w_offs, mask=w_mask, other=0.0)
            acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=ACC_DTYPE)
            acc = tl.dot(a_tile, w_tile, acc, input_precision=DOT_PRECISION)
            o_offs = o_rows + _offsets(offs_c, C2, C3, SO_C1, SO_C2, SO_C3)[None, :]
            o_mask = m_mask[:, None] & c_mask[None, :]
            tl.store(o_base + o_offs, acc.to(o_ptr.dtype.element_ty), mask=o_mask)
    else:
        c_tiles = tl.cdiv(C, BLOCK_C)
        offs_c = (pid % c_tiles) * BLOCK_C + tl.arange(0, BLOCK_C)
        c_mask = offs_c < C
        w_c = _offsets(offs_c, C2, C3, SW_C1, SW_C2, SW_C3)[None, :]
        o_c = _offsets(offs_c, C2, C3, SO_C1, SO_C2, SO_C3)[None, :]
        if K1 * K2 * K3 <= BLOCK_K:  # the weight tile stays for every row tile
            w_offs = _offsets(offs_k, K2, K3, SW_K1, SW_K2, SW_K3)[:, None] + w_c
            w_mask = (offs_k < K)[:, None] & c_mask[None, :]
            w_tile = tl.load(w_base + w_offs, mask=w_mask, other=0.0)
        tiles = tl.cdiv(M, BLOCK_M)
        per_run = tl.cdiv(tiles, tl.num_programs(0) // c_tiles)
        first = (pid // c_tiles) * per_run
        for tile in range(first, tl.minimum(first + per_run, tiles)):
            offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
            m_mask = offs_m < M
            n = (offs_m // R).to(tl.int64)
            r = offs_m % R
            a_rows = (n * SA_N + r * SA_R)[:, None]
            acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=ACC_DTYPE)
            if K1 * K2 * K3 <= BLOCK_K:
                a_offs = a_rows + _offsets(offs_k, K2, K3, SA_K1, SA_K2, SA_K3)[None, :]
                a_mask = m_mask[:, None] & (offs_k < K)[None, :]
                a_tile = tl.load(a_base + a_offs, mask=a_mask, other=0.0)
                acc = tl.dot(a_tile, w_tile, acc, input_precision=DOT_PRECISION)
            else:
                for k0 in range(0, K, BLOCK_K):
                    ks = k0 + offs_k
                    a_offs = a_rows + _offsets(ks, K2, K3, SA_K1, SA_K2, SA_K3)[None, :]
                    a_mask = m_mask[:, None] & (ks < K)[None, :]
                    a_tile = tl.load(a_base + a_offs, mask=a_mask, other=0.0)
                    w_offs = _offsets(ks, K2, K3, SW_K1, SW_K2, SW_K3)[:, None] + w_c
                    w_mask = (ks < K)[:, None] & c_mask[None, :]
                    w_tile = tl.load(w_base + w_offs, mask=w_mask, other=0.0)
                    acc = tl.dot(a_tile, w_tile, acc, input_precision=DOT_PRECISION)
            o_offs = (n * SO_N + r * SO_R)[:, None] + o_c
            o_mask = m_mask[:, None] & c_mask[None, :]
            tl.store(o_base + o_offs, acc.to(o_ptr.dtype.element_ty), mask=o_mask)


@_jit
def _factor_grad_kernel(  # type: ignore[no-untyped-def]
    a_ptr,
    d_ptr,
    o_ptr,
    M,
    ROWS,
    R: tl.constexpr,
    K1: tl.constexpr,
    K2: tl.constexpr,
    K3: tl.constexpr,
    C1: tl.constexpr,
    C2: tl.constexpr,
    C3: tl.constexpr,
    SA_N: tl.constexpr,
    SA_R: tl.constexpr,
    SA_G: tl.constexpr,
    SA_K1: tl.constexpr,
    SA_K2: tl.constexpr,
    SA_K3: tl.constexpr,
    SD_N: tl.constexpr,
    SD_R: tl.constexpr,
    SD_G: tl.constexpr,
    SD_C1: tl.constexpr,
    SD_C2: tl.constexpr,
    SD_C3: tl.constexpr,
    SO_S: tl.constexpr,
    SO_G: tl.constexpr,
    SO_K1: tl.constexpr,
    SO_K2: tl.constexpr,
    SO_K3: tl.constexpr,
    SO_C1: tl.constexpr,
    SO_C2: tl.constexpr,
    SO_C3: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """o[s, g, k, c] = sum over rows m in share s of a[m, g, k] d[m, g, c]; rows
    m = n * R + r, ROWS rows a share (a multiple of BLOCK_M). Grid (tiles, G, shares)."""
    K = K1 * K2 * K3
    C = C1 * C2 * C3
    c_tiles = tl.cdiv(C, BLOCK_C)
    pid = tl.program_id(0)
    g = tl.program_id(1)
    share = tl.program_id(2)
    offs_k = (pid // c_tiles) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_c = (pid % c_tiles) * BLOCK_C + tl.arange(0, BLOCK_C)
    k_mask = offs_k < K
    c_mask = offs_c < C
    a_k = _offsets(offs_k, K2, K3, SA_K1, SA_K2, SA_K3)[:, None] + g * SA_G
    d_c = _offsets(offs_c, C2, C3, SD_C1, SD_C2, SD_C3)[None, :] + g * SD_G
    acc = tl.zeros((BLOCK_K, BLOCK_C), dtype=ACC_DTYPE)
    first = share * ROWS
    for m0 in range(first, first + ROWS, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_mask = offs_m < M
        n = (offs_m // R).to(tl.int64)
        r = offs_m % R
        a_offs = a_k + (n * SA_N + r * SA_R)[None, :]
        a_tile = tl.load(
            a_ptr + a_offs, mask=k_mask[:, None] & m_mask[None, :], other=0.0
        )
        d_offs = (n * SD_N + r * SD_R)[:, None] + d_c
        d_tile = tl.load(
            d_ptr + d_offs, mask=m_mask[:, None] & c_mask[None, :], other=0.0
        )
        acc = tl.dot(a_tile, d_tile, acc, input_precision=DOT_PRECISION)
    o_offs = _offsets(offs_k, K2, K3, SO_K1, SO_K2, SO_K3)[:, None]
    o_offs += _offsets(offs_c, C2, C3, SO_C1, SO_C2, SO_C3)[None, :]
    o_offs += share * SO_S + g * SO_G
    tl.store(o_ptr + o_offs, acc, mask=k_mask[:, None] & c_mask[None, :])


def launch(
    kernel: Any, grid: Any, args: tuple, dtype: torch.dtype, table: Any, config: Any
) -> None:
    """Run kernel with args: with config (block -> value) when given, with the table's
    interpreter row under TRITON_INTERPRET=1, else autotuned over the table's GPU rows
    for dtype's bytes per entry. table: (block names, {itemsize: rows}, interpreter row);
    a row is the blocks' values, then num_warps and num_stages."""
    blocks, rows, interpreter = table
    tf32 = dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    constants = {
        "ACC_DTYPE": tl.float64 if dtype == torch.float64 else tl.float32,
        "DOT_PRECISION": "tf32" if tf32 else "ieee",
    }
    if config is None and not _INTERPRET:
        key = (id(table), dtype.itemsize)
        if key not in _TUNED or _TUNED[key][1] is not table:
            settings = [
                triton.Config(
                    dict(zip(blocks, row)),
                    num_warps=row[-2],
                    num_stages=row[-1],
                    maxnreg=_MAX_REGISTERS,
                )
                for row in rows[dtype.itemsize]
            ]
            _TUNED[key] = (triton.autotune(settings, key=["M"])(kernel), table)
        _TUNED[key][0][grid](*args, **constants)
        return
    chosen = dict(config or zip(blocks, interpreter))
    if _INTERPRET:  # the interpreter takes no launch options
        chosen.pop("num_warps", None)
        chosen.pop("num_stages", None)
    else:
        chosen.setdefault("maxnreg", _MAX_REGISTERS)
    kernel[grid](*args, **constants, **chosen)


def _shares(rows: int, entries: int) -> tuple:
    """How many shares a factor gradient splits its rows into, and the rows of a share
    (a multiple of 256, every BLOCK_M): at least _SPLIT_ROWS rows a share, at most
    _MAX_SPLIT shares, and no more than about _PROGRAMS programs in all (a program
    makes a block of about 128 x 128 of the gradient's entries per share)."""
    blocks = max(1, -(-entries // (128 * 128)))
    count = max(1, min(_MAX_SPLIT, rows // _SPLIT_ROWS, _PROGRAMS // blocks))
    per_share = -(-rows // count)
    per_share = max(256, -(-per_share // 256) * 256)
    return max(1, -(-rows // per_share)), per_share


def _strides(layout: tuple, sizes: dict) -> dict:
    """Each class's stride in a contiguous tensor whose axes are layout's classes (absent
    classes: stride 0)."""
    out = dict.fromkeys(CLASSES, 0)
    step = 1
    for cls in reversed(layout):
        out[cls] = step
        step *= sizes[cls]
    return out


def _three(classes: tuple, table: dict, absent: int) -> tuple:
    """table's values for up to three classes, padded to three with ``absent`` (a size
    of 1 or a stride of 0)."""
    return (*(table[c] for c in classes), *(absent,) * (3 - len(classes)))


class FusedChain:
    """The fused path of one two-factor chain: its classes, layouts and launch tables.

    Args:
        sizes: class -> size (1 or absent: the chain has no such index).
        layouts: role (x, p, q, y) -> its classes in memory order (x and y after the
            tokens).
        configs: launch (STEPS, FACTOR_GRADS) -> {bytes per entry: GPU rows}.
        interpreter: launch -> the row used under TRITON_INTERPRET=1.
    """

    def __init__(
        self, sizes: dict, layouts: dict, configs: dict, interpreter: dict
    ) -> None:
        self.sizes = {c: int(sizes.get(c, 1)) for c in CLASSES}
        self.layouts = {**layouts, **INTERMEDIATES}
        self.strides = {r: _strides(lay, self.sizes) for r, lay in self.layouts.items()}
        self.widths = {
            r: math.prod(self.sizes[c] for c in lay) for r, lay in self.layouts.items()
        }
        self.tables = {
            name: (
                BLOCKS["step" if name in STEPS else "factor"],
                configs.get(name, {}),
                interpreter[name],
            )
            for name in (*STEPS, *FACTOR_GRADS)
        }

    def _width(self, classes: tuple) -> int:
        return math.prod(self.sizes[c] for c in classes)

    def step(
        self, name: str, a: torch.Tensor, w: torch.Tensor, config: Any = None
    ) -> Any:
        """One step (a STEPS entry) on a (tokens, width) input: the (tokens, width)
        output, in the input's dtype."""
        src, weight, dst, batch, row, summed, made = STEPS[name]
        a, w = a.contiguous(), w.contiguous()
        n = a.shape[0]
        out = a.new_empty((n, self.widths[dst]))
        if n == 0:
            return out
        sa, sw, so = (self.strides[r] for r in (src, weight, dst))
        rows = n * self.sizes[row]
        groups = self.sizes[batch]
        width = self._width(made)

        def grid(meta: dict) -> tuple:
            tiles = triton.cdiv(rows, meta["BLOCK_M"])
            if meta["C_INNER"]:
                return (tiles, groups)
            c_tiles = triton.cdiv(width, meta["BLOCK_C"])
            chunks = min(tiles, max(1, _PROGRAMS // (c_tiles * groups)))
            return (c_tiles * chunks, groups)

        args = (
            a,
            w,
            out,
            rows,
            self.sizes[row],
            *_three(summed, self.sizes, 1),
            *_three(made, self.sizes, 1),
            self.widths[src],
            sa[row],
            sa[batch],
            *_three(summed, sa, 0),
            sw[batch],
            *_three(summed, sw, 0),
            *_three(made, sw, 0),
            self.widths[dst],
            so[row],
            so[batch],
            *_three(made, so, 0),
        )
        launch(_step_kernel, grid, args, a.dtype, self.tables[name], config)
        return out

    def factor_grad(
        self,
        name: str,
        a: torch.Tensor,
        d: torch.Tensor,
        factor: torch.Tensor,
        config: Any = None,
    ) -> Any:
        """A factor's gradient (a FACTOR_GRADS entry) from its input a and the
        gradient d of its output, both (tokens, width): shaped and typed as factor."""
        src, grad, _, batch, row, summed, made = FACTOR_GRADS[name]
        a, d, factor = a.contiguous(), d.contiguous(), factor.contiguous()
        rows = a.shape[0] * self.sizes[row]
        k_width, c_width = self._width(summed), self._width(made)
        shares, per_share = _shares(rows, self.sizes[batch] * k_width * c_width)
        acc = torch.float64 if a.dtype == torch.float64 else torch.float32
        partial = torch.empty((shares, *factor.shape), device=a.device, dtype=acc)
        if rows == 0:
            return torch.zeros_like(factor)
        sa, sd = self.strides[src], self.strides[grad]
        sw = self.strides[FACTOR_GRADS[name][2]]

        def grid(meta: dict) -> tuple:
            tiles = triton.cdiv(k_width, meta["BLOCK_K"])
            tiles *= triton.cdiv(c_width, meta["BLOCK_C"])
            return (tiles, self.sizes[batch], shares)

        args = (
            a,
            d,
            partial,
            rows,
            per_share,
            self.sizes[row],
            *_three(summed, self.sizes, 1),
            *_three(made, self.sizes, 1),
            self.widths[src],
            sa[row],
            sa[batch],
            *_three(summed, sa, 0),
            self.widths[grad],
            sd[row],
            sd[batch],
            *_three(made, sd, 0),
            factor.numel(),
            sw[batch],
            *_three(summed, sw, 0),
            *_three(made, sw, 0),
        )
        launch(_factor_grad_kernel, grid, args, a.dtype, self.tables[name], config)
        return partial.sum(0).to(factor.dtype)

    def forward(self, x: torch.Tensor, p: torch.Tensor, q: torch.Tensor) -> Any:
        """y = (x P) Q: (tokens, width of x) -> (tokens, width of y)."""
        return self.forward_saving(x, p, q)[0]

    def forward_saving(
        self, x: torch.Tensor, p: torch.Tensor, q: torch.Tensor
    ) -> tuple:
        """(y, t): the output and the intermediate t = x P (which Q's gradient needs)."""
        t = self.step("forward_first", x, p)
        return self.step("forward_second", t, q), t

    def backward(
        self,
        x: torch.Tensor,
        g: torch.Tensor,
        p: torch.Tensor,
        q: torch.Tensor,
        needs: tuple,
        t: Any = None,
    ) -> tuple:
        """The gradients of x, P and Q (None where needs says no) from the output's
        gradient g: gt = g Q^T once, for the input's and P's; for Q's, the forward's
        intermediate t, recomputed (t = x P) when not given."""
        need_x, need_p, need_q = needs
        g_x = g_p = g_q = None
        if need_x or need_p:
            gt = self.step("grad_input_first", g, q)
            if need_x:
                g_x = self.step("grad_input_second", gt, p)
            if need_p:
                g_p = self.factor_grad("grad_first", x, gt, p)
        if need_q:
            if t is None:
                t = self.step("forward_first", x, p)
            g_q = self.factor_grad("grad_second", t, g, q)
        return g_x, g_p, g_q
