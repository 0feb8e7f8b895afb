"""The fused path's table as source lines: the chain's classes, layouts and launch configurations.

The kernels themselves are the runtime's (:mod:`einstruct.nn.kernels`); a
generated module only describes its chain to them. The planner
(:mod:`einstruct.planner.fusion`) decides every configuration; this module
spells the decision out as the lines of the ``FusedChain(...)`` call in
``codegen_templates/triton/layer.py.j2``, each as ruff format leaves it.

    >>> from einstruct.planner.fusion import plan_fusion
    >>> fusion = plan_fusion(make_plan(load("structure s = btt(d = 64)")))
    >>> layout_lines(fusion.chain)[0]
    '"x": ("gamma", "alpha"),'
"""

from __future__ import annotations

from ...planner.chain import CLASSES, Chain
from ...planner.fusion import Fusion
from ..common import quoted, tuple_code

__all__ = ["size_lines", "layout_lines", "config_lines", "interpreter_lines"]


def _row_code(row: tuple) -> str:
    return tuple_code(repr(v) for v in row)


def size_lines(chain: Chain) -> list[str]:
    """``"alpha": 64,`` for each class the chain has."""
    return [f"{quoted(c)}: {chain.sizes[c]}," for c in CLASSES if chain.groups[c]]


def _classes(chain: Chain, role: str) -> tuple[str, ...]:
    """The classes of a tensor in memory order (a class's indices are one run)."""
    by_index = {i: c for c, members in chain.groups.items() for i in members}
    out: list[str] = []
    for index in chain.layouts[role]:
        cls = by_index.get(index)
        if cls is not None and (not out or out[-1] != cls):
            out.append(cls)
    return tuple(out)


def layout_lines(chain: Chain) -> list[str]:
    """``"x": ("gamma", "alpha"),`` for x, p (the factor met first), q and y."""
    lines = []
    for role in ("x", "p", "q", "y"):
        lines.append(f"{quoted(role)}: {tuple_code(quoted(c) for c in _classes(chain, role))},")
    return lines


def config_lines(fusion: Fusion) -> list[str]:
    """Each launch's GPU rows by bytes per entry, one row a line."""
    lines = []
    for launch in fusion.launches:
        lines.append(f"{quoted(launch.name)}: {{")
        for itemsize, rows in launch.gpu.items():
            lines.append(f"    {itemsize}: (")
            lines += [f"        {_row_code(row)}," for row in rows]
            lines.append("    ),")
        lines.append("},")
    return lines


def interpreter_lines(fusion: Fusion) -> list[str]:
    """Each launch's configuration under ``TRITON_INTERPRET=1``."""
    return [f"{quoted(k.name)}: {_row_code(k.interpreter)}," for k in fusion.launches]
