"""Render contexts of the fused kernels: tiles, offsets, masks, shapes and launchers as source text.

The planner (:mod:`einstruct.planner.fusion`) decides each kernel's family and
tiles; this module spells the decision out for the family's template in
``codegen_templates/triton/``: which classes the grid tiles, the lines that
find a program's blocks, every tile's offsets and mask, the shapes each
``tl.dot`` sees and the permutation that regroups the intermediate between the
two products. Classes a chain does not have (size 1) get no axis at all, so
each kernel's tiles have exactly the axes its structure needs.

Names inside kernels are generated: one letter per class (``a`` alpha, ``b``
beta, ``g`` gamma, ``d`` delta, ``e`` epsilon, ``f`` phi, ``r`` rho, ``n``
tokens), ``offs_<letter>``, ``BLOCK_<LETTER>``, ``stride_<role><letter>``.

    >>> from einstruct.planner.fusion import plan_fusion
    >>> fusion = plan_fusion(make_plan(load("structure s = btt(d = 64)")))
    >>> kernel_context(fusion.forward, "_forward_kernel", "_forward_launch")["x_dot"]
    '(BLOCK_G, BLOCK_N, BLOCK_A)'
"""

from __future__ import annotations

import textwrap
from typing import Any

from ...classes import LETTERS as CLASS_LETTERS
from ...planner.chain import CLASSES, HOLDERS, Chain
from ...planner.fusion import KernelPlan
from ...planner.tiles import Tiles
from ..common import tuple_code

__all__ = ["LETTERS", "TEMPLATES", "kernel_context", "config_code"]

#: One letter per class (``n``: tokens).
LETTERS = {"n": "n", **CLASS_LETTERS}
#: The template of each kernel family.
TEMPLATES = {
    "chain_stream": "triton/chain_stream.py.j2",
    "chain_stationary": "triton/chain_stationary.py.j2",
    "factor_stream": "triton/factor_stream.py.j2",
}


def _letter(cls: str) -> str:
    return LETTERS[cls]


def _block(cls: str) -> str:
    return f"BLOCK_{_letter(cls).upper()}"


def _present(chain: Chain, dims: tuple[str, ...]) -> list[str]:
    return [d for d in dims if d == "n" or chain.groups[d]]


def _index(k: int, rank: int) -> str:
    """``[:, None]``-style indexing that puts a 1-D offset vector on axis ``k`` of ``rank``."""
    if rank == 1:
        return ""
    return "[" + ", ".join(":" if i == k else "None" for i in range(rank)) + "]"


def _tile_lines(name: str, chain: Chain, dims: list[str], role: str) -> list[str]:
    """Lines that build a tile's offsets (``<name>_offs``) and mask (``<name>_mask``), one axis a line."""
    lines = []
    for k, d in enumerate(dims):
        at = f"offs_{_letter(d)}{_index(k, len(dims))}"
        bound = "n_left" if d == "n" else str(chain.sizes[d])
        op = "=" if k == 0 else "+="
        lines.append(f"{name}_offs {op} {at} * stride_{role}{_letter(d)}")
        lines.append(f"{name}_mask {'=' if k == 0 else '&='} {at} < {bound}")
    return lines


def _shape(groups: list[list[str]], keep_empty: bool = True) -> str:
    """A tile shape whose axes are products of blocks: ``(BLOCK_G, BLOCK_N * BLOCK_B, 1)``."""
    axes = []
    for k, group in enumerate(groups):
        if not group and not keep_empty:
            continue
        if not group and k == 0 and len(groups) == 3:  # no batch axis: a 2-D product
            continue
        axes.append(" * ".join(_block(c) for c in group) if group else "1")
    return tuple_code(axes)


def _dims_shape(dims: list[str]) -> str:
    return tuple_code([_block(d) for d in dims])


def _chunk_lines(chain: Chain, classes: list[str], counter: str) -> tuple[list[str], list[str], str]:
    """Split a flat chunk counter into each class's block.

    Returns the lines that count each class's chunks (``chunks_<letter>``), the lines
    that find each block's offsets from ``counter``, and the number of chunks.
    """
    counts = [f"chunks_{_letter(c)} = tl.cdiv({chain.sizes[c]}, {_block(c)})" for c in classes]
    lines = []
    for k, cls in enumerate(classes):
        letter = _letter(cls)
        lines.append(
            f"offs_{letter} = ({counter} % chunks_{letter}) * {_block(cls)} + tl.arange(0, {_block(cls)})"
        )
        if k < len(classes) - 1:
            lines.append(f"{counter} = {counter} // chunks_{letter}")
    total = " * ".join(f"chunks_{_letter(c)}" for c in classes) or "1"
    return counts, lines, total


def _whole_lines(classes: list[str]) -> list[str]:
    return [f"offs_{_letter(c)} = tl.arange(0, {_block(c)})" for c in classes]


def _strides(chain: Chain, roles: dict[str, tuple[str, str, int]]) -> tuple[list[str], list[str]]:
    """Stride parameters of the kernel and the launcher's arguments for them.

    ``roles`` maps a kernel role (x, p, q, y, g) to the chain role whose layout it
    has, the launcher's local holding it, and how many axes that local has in front.
    """
    params, args = [], []
    for role, (source, local, offset) in roles.items():
        holds = [c for c in CLASSES if source in HOLDERS[c] and chain.groups[c]]
        if source in ("x", "y"):
            params.append(f"stride_{role}n")
            args.append(f"{local}.stride(0)")
        for cls in holds:
            params.append(f"stride_{role}{_letter(cls)}")
            args.append(f"{local}.stride({chain.axis(source, cls) + offset})")
    return params, args


def _grid_lines(chain: Chain, classes: list[str]) -> list[str]:
    """The launcher's lines that count the programs along the grid's second axis (``blocks``)."""
    return [f'blocks *= triton.cdiv({chain.sizes[c]}, meta["{_block(c)}"])' for c in classes]


def _view(chain: Chain, role: str) -> str:
    return ", ".join(["n", *(str(v) for v in chain.shape(role))])


def _block_classes(chain: Chain) -> list[str]:
    return [c for c in ("n", *CLASSES) if c == "n" or chain.groups[c]]


def config_code(tiles: Tiles, chain: Chain, with_launch: bool = True) -> str:
    """A configuration as a row of the kernel's block table: its blocks in :func:`_block_classes`
    order, then ``num_warps`` and ``num_stages``: ``(16, 16, 16, 8, 8, 4, 2)``."""
    row = [str(tiles.block(c)) for c in _block_classes(chain)]
    if with_launch:
        row += [str(tiles.num_warps), str(tiles.num_stages)]
    return tuple_code(row)


def _table_lines(kernel: KernelPlan) -> list[str]:
    """The GPU tables as lines of a dict display (by bytes per entry), one row a line; a
    one-row table on one line, as ``ruff format`` writes it."""
    lines = []
    for itemsize, tiles in ((2, kernel.gpu), (4, kernel.gpu_fp32)):
        rows = [config_code(t, kernel.chain) for t in tiles]
        if len(rows) == 1:
            lines.append(f"{itemsize}: ({rows[0]},),")
        elif rows:
            lines += [f"{itemsize}: (", *(f"    {row}," for row in rows), "),"]
    return lines


def _equation(chain: Chain) -> str:
    """The chain in class letters: ``y[n,f,e] = x[n,g,a] p[g,a,f] q[f,g,e]``."""
    order = {
        "x": ("n", "gamma", "alpha", "beta"),
        "p": ("gamma", "alpha", "phi", "delta", "rho"),
        "q": ("phi", "gamma", "beta", "rho", "epsilon"),
        "y": ("n", "phi", "delta", "epsilon"),
    }
    axes = {r: ",".join(_letter(d) for d in _present(chain, dims)) for r, dims in order.items()}
    return f"y[{axes['y']}] = x[{axes['x']}] p[{axes['p']}] q[{axes['q']}]"


#: What each family's program does, for the kernel's docstring.
_FAMILY_DOC = {
    "chain_stream": "A program: BLOCK_N tokens x one block of the classes the grid tiles; step 2's "
    "sum runs chunk by chunk, each chunk's intermediate made by step 1 in registers.",
    "chain_stationary": "A program: BLOCK_N tokens x one block of the classes the grid tiles; step 1 "
    "makes its whole intermediate in registers once, step 2 runs block by block of epsilon.",
    "factor_stream": "A program: one block of q's gradient and every split-th chunk of tokens (and "
    "delta); it recomputes t = x @ p in registers and sums t^T @ dy, dy the output's gradient.",
}


def _doc(kernel: KernelPlan) -> list[str]:
    roles = (
        "For the input's gradient: x is the output's gradient, p and q the factors in reverse."
        if kernel.chain.transposed
        else "For the layer: x is the input, p the factor applied first, q the second."
    )
    return textwrap.wrap(f"{roles} {_FAMILY_DOC[kernel.family]}", width=80)


def kernel_context(kernel: KernelPlan, name: str, launcher: str) -> dict[str, Any]:
    """Everything a family template needs for one kernel and its launcher."""
    chain = kernel.chain
    p = lambda dims: _present(chain, dims)  # noqa: E731
    x_dims, p_dims = p(("gamma", "n", "beta", "alpha")), p(("gamma", "alpha", "phi", "delta", "rho"))
    t_split = p(("gamma", "n", "beta", "phi", "delta", "rho"))
    context: dict[str, Any] = {
        "name": name,
        "launcher": launcher,
        "equation": _equation(chain),
        "doc": _doc(kernel),
        "size_a": chain.sizes["alpha"],
        "x_lines": _tile_lines("x", chain, x_dims, "x"),
        "x_dot": _shape([p(("gamma",)), p(("n", "beta")), p(("alpha",))]),
        "p_lines": _tile_lines("p", chain, p_dims, "p"),
        "p_dot": _shape([p(("gamma",)), p(("alpha",)), p(("phi", "delta", "rho"))]),
        "t_shape": _shape([p(("gamma",)), p(("n", "beta")), p(("phi", "delta", "rho"))]),
        "t_split": _dims_shape(t_split),
        "a_view": _view(chain, "x"),
        "p_shape": tuple_code(str(v) for v in chain.shape("p")),
        "q_shape": tuple_code(str(v) for v in chain.shape("q")),
        "d_in": chain.width("x"),
        "d_out": chain.width("y"),
        "out_view": _view(chain, "y"),
        "gpu_table_lines": _table_lines(kernel),
        "interpreter_config": config_code(kernel.interpreter, chain, with_launch=False)
        if kernel.interpreter
        else "()",
        "blocks": [_block(c) for c in _block_classes(chain)],
    }
    if kernel.family == "factor_stream":
        context.update(_factor_context(chain, t_split))
    else:
        context.update(_chain_context(chain, kernel.family, t_split))
    return context


def _chain_context(chain: Chain, family: str, t_split: list[str]) -> dict[str, Any]:
    p = lambda dims: _present(chain, dims)  # noqa: E731
    stream = family == "chain_stream"
    grid = p(("phi", "delta", "epsilon") if stream else ("phi", "delta"))
    chunk_counts, chunk, chunks = _chunk_lines(chain, p(("gamma", "beta")), "kc")
    step2 = p(("phi", "n", "delta", "gamma", "beta", "rho"))
    q_dims = p(("phi", "gamma", "beta", "rho", "epsilon"))
    y_dims = p(("phi", "n", "delta", "epsilon"))
    params, args = _strides(
        chain, {"x": ("x", "a", 0), "p": ("p", "p", 0), "q": ("q", "q", 0), "y": ("y", "o", 0)}
    )
    grid_counts, grid_lines, grid_total = _chunk_lines(chain, grid, "pid_c")
    whole = p(("rho",)) if stream else p(("gamma", "beta", "rho"))
    return {
        "grid_counts": grid_counts,
        "grid_total": grid_total,
        "grid_lines": grid_lines,
        "chunk_counts": chunk_counts,
        "whole_lines": _whole_lines(whole),
        "chunk_lines": chunk,
        "k2_chunks": chunks,
        "t_perm": tuple_code(str(t_split.index(d)) for d in step2),
        "t_dot": _shape([p(("phi",)), p(("n", "delta")), p(("gamma", "beta", "rho"))]),
        "q_lines": _tile_lines("q", chain, q_dims, "q"),
        "q_dot": _shape([p(("phi",)), p(("gamma", "beta", "rho")), p(("epsilon",))]),
        "acc_shape": _shape([p(("phi",)), p(("n", "delta")), p(("epsilon",))]),
        "y_split": _dims_shape(y_dims),
        "y_lines": _tile_lines("y", chain, y_dims, "y"),
        "stride_params": params,
        "stride_args": args,
        "grid_code": _grid_lines(chain, grid),
        "size_e": chain.sizes["epsilon"],
    }


def _factor_context(chain: Chain, t_split: list[str]) -> dict[str, Any]:
    p = lambda dims: _present(chain, dims)  # noqa: E731
    grid = p(("phi", "gamma", "beta", "epsilon"))
    grid_counts, grid_lines, _ = _chunk_lines(chain, grid, "pid_c")
    delta_counts, loop_lines, d_chunks = _chunk_lines(chain, p(("delta",)), "kc")
    reduce_order = p(("phi", "gamma", "beta", "rho", "n", "delta"))
    dy_dims = p(("phi", "n", "delta", "epsilon"))
    g_dims = p(("phi", "gamma", "beta", "rho", "epsilon"))
    roles = {"x": ("x", "a", 0), "p": ("p", "p", 0), "y": ("y", "dy", 0), "g": ("q", "part", 1)}
    params, args = _strides(chain, roles)
    return {
        "grid_lines": grid_counts + grid_lines,
        "chunk_counts": delta_counts,
        "whole_lines": _whole_lines(p(("rho",))),
        "delta_lines": loop_lines,
        "d_chunks": d_chunks,
        "t_perm": tuple_code(str(t_split.index(d)) for d in reduce_order),
        "t_dot": _shape([p(("phi",)), p(("gamma", "beta", "rho")), p(("n", "delta"))]),
        "dy_lines": _tile_lines("dy", chain, dy_dims, "y"),
        "dy_dot": _shape([p(("phi",)), p(("n", "delta")), p(("epsilon",))]),
        "acc_shape": _shape([p(("phi",)), p(("gamma", "beta", "rho")), p(("epsilon",))]),
        "g_split": _dims_shape(g_dims),
        "g_lines": _tile_lines("g", chain, g_dims, "g"),
        "stride_params": params,
        "stride_args": args,
        "grid_code": _grid_lines(chain, grid),
        "dy_view": _view(chain, "y"),
    }
