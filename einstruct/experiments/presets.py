"""The scaling experiment's presets and default structures.

- ``full``: the pilot's scale (3000 steps, four widths per structure, four
  learning rates, three seeds): roughly 30 minutes on 2 free cores (estimated).
- ``quick``: 800 steps, three widths, two learning rates, three seeds: under
  5 minutes on 2 cores (``docs/experiments.md`` has the timings).
- ``smoke``: a tiny teacher and 20 steps, for CI: seconds.

Widths are chosen so that d and 4d split exactly (36 = 6 x 6, 144 = 12 x 12):
no layer pads. The dense baseline gets smaller widths, so that its compute
overlaps the structured ones' (a dense layer of width d costs about d^2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ParameterError
from ..language.load import load, load_all, read_spec
from .scaling import Task

__all__ = ["Preset", "PRESETS", "DEFAULT_STRUCTURES", "DENSE", "structures"]

#: The structures compared by default (BACKGROUND §3): full-rank BTT (omega 0, psi 1),
#: Kronecker (omega 1/2) and low rank with rank sqrt(d) (psi 1/2), at equal FLOPs.
DEFAULT_STRUCTURES = """\
structure btt = btt(d_in = 64, d_out = 256)
structure kronecker = kronecker(d_in = 64, d_out = 256)
structure low_rank(d_in = 64, d_out = 256):
    y[o] = x[i] * U[i, r] * V[r, o]
    where i = d_in, o = d_out, r = ceil(min(d_in, d_out)^(1/2))
"""

#: The dense baseline: the catalog's dense form, so it gets the same spectral init.
DENSE = "structure dense = dense(d_in = 64, d_out = 256)\n"


@dataclass(frozen=True)
class Preset:
    """Sizes of a sweep: the task, widths (dense and structured), learning rates, seeds."""

    task: Task
    dense_widths: tuple[int, ...]
    widths: tuple[int, ...]
    lrs: tuple[float, ...]
    seeds: tuple[int, ...] = field(default=(0, 1, 2))


PRESETS = {
    "full": Preset(Task(steps=3000), (16, 28, 52, 96), (36, 64, 144, 256), (1e-3, 3e-3, 1e-2, 3e-2)),
    "quick": Preset(Task(steps=800), (16, 28, 40), (36, 64, 100), (3e-3, 1e-2)),
    "smoke": Preset(
        Task(steps=20, batch=32, teacher_width=32, teacher_depth=2, eval_samples=256, base_width=16),
        (8,),
        (16,),
        (1e-2,),
        (0,),
    ),
}


def structures(files: Sequence[str], dense: bool = True) -> dict[str, str]:
    """Label -> ``.ein`` source of each structure to compare (the defaults without files).

    Every structure must take ``d_in`` and ``d_out``: the experiment binds them
    per layer (d -> 4d and 4d -> d).
    """
    found = load_all(DEFAULT_STRUCTURES) if not files else []
    for name in files:
        found += load_all(read_spec(Path(name)))
    out = {"dense": load(DENSE).source} if dense else {}
    for structure in found:
        names = {p.name for p in structure.parameters}
        if not {"d_in", "d_out"} <= names:
            raise ParameterError(
                f"structure '{structure.name}' has no d_in and d_out parameters",
                structure.span,
                "the experiment binds them per layer (d -> 4d, 4d -> d): write e.g. "
                "`btt(d_in = 64, d_out = 256)`, or a header `(d_in = 64, d_out = 256)`",
            )
        if structure.name in out:
            raise ParameterError(
                f"two structures are called '{structure.name}'",
                structure.span,
                "give each structure its own name: it labels the curve",
            )
        out[structure.name] = structure.source
    return out
