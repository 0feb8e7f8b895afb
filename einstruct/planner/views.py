"""Memory layouts: how a tensor is viewed as a matmul operand, and what a copy costs.

A step's operand is ``source.permute(...).reshape(...)`` (then maybe
``.transpose(-1, -2)``). Whether that needs a copy, and how costly the copy is,
depends only on the axes' order in memory and their sizes:

- no copy when each group of axes (batch, rows, columns) is one block in
  memory and the innermost axis is a matrix axis: BLAS takes that strided view
  as a row- or column-major matrix with any batch stride (axes of size 1 never
  matter);
- a copy that keeps runs of :data:`MIN_RUN` entries weighs 1 per entry, a local
  block transpose :data:`LOCAL_PENALTY`, moving the innermost axis far
  :data:`TRANSPOSE_PENALTY`.

    >>> sizes = {"__batch": 2048, "g": 32, "a": 32}
    >>> copy_weight(("__batch", "g", "a"), ("g", "__batch", "a"), sizes)
    1
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

from .order import BATCH, fresh_name

__all__ = [
    "TRANSPOSE_PENALTY",
    "LOCAL_PENALTY",
    "WIDE_PENALTY",
    "MIN_RUN",
    "LOCAL_STRIDE",
    "OperandView",
    "copy_weight",
    "is_local_transpose",
    "is_strided",
    "written_axes",
    "view_operand",
    "drop_batch",
    "axes_text",
    "layout_einsum",
    "token_name",
]

#: Weight of a copy that moves the innermost axis (measured ~10x slower on CPU).
TRANSPOSE_PENALTY = 8
#: Weight of a copy that only transposes small inner blocks (measured ~1.5x a plain copy).
LOCAL_PENALTY = 2
#: Weight per result entry of an ``mm`` step with tokens as columns.
WIDE_PENALTY = 3
#: Entries (fp32: one 64-byte cache line) a copy must move contiguously to be fast.
MIN_RUN = 16
#: Entries within which a transpose of the innermost axes stays in cache (a "local" transpose).
LOCAL_STRIDE = 256


@dataclass(frozen=True)
class OperandView:
    """How one operand of a step is viewed as a 2-D or 3-D matmul operand.

    The view is ``source.permute(permute).reshape(shape)``, then
    ``.transpose(-1, -2)`` if ``transposed``. When ``copy`` is false torch
    returns a strided view (each group of axes is one block in memory and the
    innermost axis is a matrix axis, which BLAS takes as row- or column-major);
    otherwise ``reshape`` copies, into ``order``.

    Attributes:
        name: ``x``, ``t<k>`` or a factor name.
        is_factor: whether it is a stored factor (its layout is the stored layout).
        layout: the operand's axis order in memory before the step.
        order: the axis order of the (pre-transpose) view: batch, rows, columns
            groups, or batch, columns, rows when ``transposed``.
        permute: positions to permute ``layout`` into ``order``; ``None`` if identity.
        shape: the (pre-transpose) view's shape; ``-1`` stands for the token dimension.
        transposed: the matmul operand is the view with its last two axes swapped.
        copy: whether ``reshape`` has to copy (the view is not expressible by strides).
        entries: elements per token (or in all, without tokens) a copy moves; 0 if none.
        copy_weight: the copy's cost per entry: 1 when it moves contiguous runs of
            at least :data:`MIN_RUN` entries, :data:`LOCAL_PENALTY` when it only
            transposes small inner blocks, :data:`TRANSPOSE_PENALTY` when it moves
            the innermost axis far; 0 without a copy.
        grad_transposed: the planned backward computes this operand's gradient as
            the transposed product, so it lands with the source's innermost axis
            innermost.
        row_major: whether the matmul operand is row-major in memory (its innermost
            axis a column axis), as copied or viewed.
    """

    name: str
    is_factor: bool
    layout: tuple[str, ...]
    order: tuple[str, ...]
    permute: tuple[int, ...] | None
    shape: tuple[int, ...]
    transposed: bool = False
    copy: bool = False
    entries: int = 0
    copy_weight: int = 0
    grad_transposed: bool = False
    row_major: bool = True

    @property
    def inner_moved(self) -> bool:
        """Whether the copy is slower than a plain one (it transposes the innermost axis)."""
        return self.copy_weight > 1

    @property
    def copies(self) -> bool:
        """Whether viewing this operand needs a copy."""
        return self.copy

    @property
    def matmul_shape(self) -> tuple[int, ...]:
        """The operand's shape as the matmul sees it (after a free transpose)."""
        if self.transposed:
            return (*self.shape[:-2], self.shape[-1], self.shape[-2])
        return self.shape

    @property
    def inverse_permute(self) -> tuple[int, ...] | None:
        """The permutation that takes ``order`` back to ``layout`` (for a planned backward)."""
        if self.permute is None:
            return None
        return tuple(self.permute.index(i) for i in range(len(self.permute)))


def _real(axes: Iterable[str], sizes: dict[str, int]) -> list[str]:
    """Axes that matter for memory order: size-1 axes never do; tokens always do."""
    return [i for i in axes if i == BATCH or sizes[i] != 1]


def copy_weight(layout: tuple[str, ...], order: tuple[str, ...], sizes: dict[str, int]) -> int:
    """The cost per entry of making ``layout`` contiguous as ``order`` (0: no copy).

    A copy is cheap (1) when it moves contiguous runs of at least :data:`MIN_RUN`
    entries (the trailing axes both orders share); runs of a quarter of that, or
    a transpose of small inner blocks that stays in cache, cost
    :data:`LOCAL_PENALTY`; moving the innermost axis far touches a cache line per
    entry (:data:`TRANSPOSE_PENALTY`).
    """
    a, b = _real(layout, sizes), _real(order, sizes)
    if a == b:
        return 0
    run = 1
    for x, y in zip(reversed(a), reversed(b)):
        if x != y:
            break
        run *= sizes[x]
    if run >= MIN_RUN:
        return 1
    if run >= MIN_RUN // 4 or is_local_transpose(layout, order, sizes):
        return LOCAL_PENALTY
    return TRANSPOSE_PENALTY


def is_local_transpose(layout: tuple[str, ...], order: tuple[str, ...], sizes: dict[str, int]) -> bool:
    """Whether making ``layout`` contiguous as ``order`` only transposes small inner blocks."""
    a, b = _real(layout, sizes), _real(order, sizes)
    if not a or not b or a[-1] == b[-1]:
        return False
    after = lambda axes, axis: math.prod(sizes[i] for i in axes[axes.index(axis) + 1 :])  # noqa: E731
    return after(b, a[-1]) <= LOCAL_STRIDE and after(a, b[-1]) <= LOCAL_STRIDE


def is_strided(layout: tuple[str, ...], groups: list[list[str]], sizes: dict[str, int]) -> bool:
    """Whether ``groups`` (batch, rows, cols) of ``layout`` form a view BLAS takes without a copy.

    Each group must be one block of consecutive axes in memory, in the group's
    order, and the innermost axis must end the rows or the cols group (a row- or
    column-major matrix); the batch axis may have any stride.
    """
    real = _real(layout, sizes)
    if not real:
        return True
    position = {axis: k for k, axis in enumerate(real)}
    for group in groups:
        places = [position[i] for i in _real(group, sizes)]
        if places and places != list(range(places[0], places[0] + len(places))):
            return False
    *_, rows, cols = groups
    real_rows, real_cols = _real(rows, sizes), _real(cols, sizes)
    if not real_rows or not real_cols:  # a vector or 1x1 matrix: any stride works
        return True
    return real[-1] in (real_rows[-1], real_cols[-1])


def written_axes(
    memory: tuple[str, ...], groups: list[list[str]], sizes: dict[str, int]
) -> tuple[int, ...] | None:
    """Where a matmul can write its product ``groups`` (batch, rows, cols) straight into a
    tensor laid out as ``memory`` (``out=``): the permutation of ``memory``'s axes whose
    groups merge into the product's ``(batch, M, N)``; ``None`` when BLAS cannot write
    there (see :func:`is_strided`) or the product already comes in that order.

        >>> sizes = {"__batch": 2048, "f": 4, "e": 256}
        >>> written_axes(("__batch", "f", "e"), [["f"], ["__batch"], ["e"]], sizes)
        (1, 0, 2)
    """
    order = tuple(i for g in groups for i in g)
    if sorted(order) != sorted(memory) or _real(order, sizes) == _real(memory, sizes):
        return None
    if not is_strided(memory, groups, sizes):
        return None
    return tuple(memory.index(i) for i in order)


def view_operand(
    name: str, is_factor: bool, layout: tuple[str, ...], groups: list[list[str]], sizes: dict[str, int]
) -> OperandView:
    """View ``layout`` as the concatenation of ``groups`` (batch, rows, cols)."""
    *lead, rows, cols = [list(g) for g in groups]
    real = _real(layout, sizes)
    inner = real[-1] if real else None
    # the gradient lands like the source when the innermost axis is a row axis
    grad_t = inner is not None and inner in rows and inner not in cols
    transposed = False
    if not is_strided(layout, [*lead, rows, cols], sizes) and inner in rows:
        # a copy is needed: into (batch, cols, rows), then a transposed view, keeps the
        # innermost runs; into (batch, rows, cols) is a local transpose when both
        # innermost axes are small, and then the matmul gets a row-major operand
        plain = tuple(i for g in (*lead, rows, cols) for i in g)
        transposed = not is_local_transpose(layout, plain, sizes)
    use = [*lead, cols, rows] if transposed else [*lead, rows, cols]
    order = tuple(i for g in use for i in g)
    shape = tuple(-1 if BATCH in g else math.prod(sizes[i] for i in g) for g in use)
    permute = None if order == layout else tuple(layout.index(i) for i in order)
    copy = not is_strided(layout, use, sizes)
    # the view before its transpose is row-major when copied, or when the innermost axis
    # ends its last group; the transpose swaps that
    row = copy or inner is None or inner in use[-1]
    if not copy:
        return OperandView(
            name,
            is_factor,
            layout,
            order,
            permute,
            shape,
            transposed,
            grad_transposed=grad_t,
            row_major=row != transposed,
        )
    weight = copy_weight(layout, order, sizes)
    entries = math.prod(sizes[i] for i in layout if i != BATCH)
    return OperandView(
        name,
        is_factor,
        layout,
        order,
        permute,
        shape,
        transposed,
        True,
        entries,
        weight,
        grad_t,
        row != transposed,
    )


def drop_batch(view: OperandView) -> OperandView:
    """The view without its (empty) batch group: a 2-D ``mm`` operand."""
    return replace(view, shape=view.shape[1:])


def token_name(index_names: Iterable[str]) -> str:
    """How plans print the token axis: ``n``, primed while an index has that name.

    >>> token_name(["g", "a"]), token_name(["n", "o"])
    ('n', "n'")
    """
    return fresh_name("n", set(index_names))


def axes_text(layout: tuple[str, ...], token: str = "n") -> str:
    """Axes as ``n,g,a``: the token axis printed as ``token``."""
    return ",".join(token if i == BATCH else i for i in layout)


def layout_einsum(*layouts: tuple[str, ...], token: str = "n") -> str:
    """A readable einsum with index names: ``[n,g,a] * [g,a,f,r] -> [g,n,f,r]``."""
    *ins, out = (axes_text(lay, token) for lay in layouts)
    return f"{' * '.join(f'[{s}]' for s in ins)} -> [{out}]"
