"""The experiments' presets and default structures.

Scaling (``einstruct experiment scaling``):

- ``full``: four widths per structure, four learning rates, 3000 steps, three
  seeds (not run for the docs; hours on 2 cores);
- ``quick``: three widths, each structure at the learning rate the probe in
  ``docs/experiments.md`` found best, 400 steps, three seeds: under 5 CPU
  minutes on 2 cores (measured there, with the command);
- ``moe-quick`` / ``moe`` (``--moe``): BTT-MoE, BTT, dense and the standard MoE;
- ``smoke``: a tiny teacher and 20 steps, for CI: seconds.

lr transfer (``einstruct experiment lr-transfer``): ``TRANSFER``'s presets,
five learning rates a factor of about 3 apart at three widths.

Widths are chosen so that d and 4d split exactly (36 = 6 x 6, 144 = 12 x 12):
no layer pads. The dense baseline gets smaller widths, so that its compute
overlaps the structured ones' (a dense layer of width d costs about d^2), and
the standard MoE (two whole FFNs per token) smaller still.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EinstructError, ParameterError
from ..language.load import load, load_all, read_spec
from .moe import moe_spec
from .scaling import Task

__all__ = [
    "Preset",
    "PRESETS",
    "TRANSFER",
    "DEFAULT_STRUCTURES",
    "DENSE",
    "MOE_STRUCTURES",
    "structures",
    "theta_structure",
]

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

#: BTT-MoE (its rank axis holds 8 experts, 2 per token) and plain BTT, for the MoE preset.
MOE_STRUCTURES = """\
structure btt_moe(d_in = 64, d_out = 256, experts = 8, k = 2):
    y[f, e] = x[g, a] * A[g, a, f, r] * B[f, g, r, e]
    where g = sqrt_hi(d_in), a = sqrt_lo(d_in), f = sqrt_lo(d_out), e = sqrt_hi(d_out), r = experts
    route r top k
structure btt = btt(d_in = 64, d_out = 256)
"""


@dataclass(frozen=True)
class Preset:
    """Sizes of a sweep: the task, widths (dense and structured), learning rates, seeds."""

    task: Task
    dense_widths: tuple[int, ...]
    widths: tuple[int, ...]
    lrs: tuple[float, ...]
    seeds: tuple[int, ...] = field(default=(0, 1, 2))
    moe_widths: tuple[int, ...] = ()  # widths of the standard MoE (MoE presets)
    #: learning rates of particular structures (by label), instead of ``lrs``
    structure_lrs: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    def lrs_of(self, label: str) -> tuple[float, ...]:
        """The learning rates swept for the structure labelled ``label``."""
        return self.structure_lrs.get(label, self.lrs)


#: Each structure's best learning rate in the probe of docs/experiments.md (1000 steps, width 64):
#: what the quick presets use instead of sweeping (user structures get 0.003).
PROBED_LRS = {"btt": (3e-3,), "dense": (3e-3,), "kronecker": (1e-2,), "low_rank": (1e-2,)}


PRESETS = {
    "full": Preset(Task(steps=3000), (16, 28, 52, 96), (36, 64, 144, 256), (1e-3, 3e-3, 1e-2, 3e-2)),
    "quick": Preset(Task(steps=400), (16, 28, 40), (36, 64, 100), (3e-3,), structure_lrs=PROBED_LRS),
    "moe-quick": Preset(
        Task(steps=200),
        (16, 28, 40),
        (36, 64, 100),
        (3e-3,),
        moe_widths=(12, 20, 28),
        structure_lrs=PROBED_LRS,
    ),
    "moe": Preset(
        Task(steps=3000),
        (16, 28, 52, 96),
        (36, 64, 144, 256),
        (1e-3, 3e-3, 1e-2),
        moe_widths=(12, 20, 36, 64),
    ),
    "smoke": Preset(
        Task(steps=20, batch=32, teacher_width=32, teacher_depth=2, eval_samples=256, base_width=16),
        (8,),
        (16,),
        (1e-2,),
        (0,),
    ),
}


#: lr-transfer sizes: the task, widths, learning rates (a factor of about 3.16 apart), seeds.
TRANSFER = {
    "full": Preset(Task(steps=1000), (), (36, 64, 144, 256), (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)),
    "quick": Preset(Task(steps=200, batch=128), (), (32, 64, 128), (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)),
    "smoke": Preset(PRESETS["smoke"].task, (), (16, 32), (1e-2, 3e-2, 1e-1), (0,)),
}


def theta_structure(text: str, number: int) -> str:
    """``.ein`` source of the point ``text`` (``alpha=1/2,gamma=1/2,...``) of the theta space,
    taking ``d_in`` and ``d_out``."""
    pairs = [part.strip() for part in text.split(",") if part.strip()]
    body = ", ".join(p.replace("=", " = ", 1) for p in pairs)
    return f"structure theta{number} = theta({body}, d_in = 64, d_out = 256)\n"


def structures(
    files: Sequence[str], dense: bool = True, thetas: Sequence[str] = (), moe: bool = False
) -> dict[str, str]:
    """Label -> ``.ein`` source of each structure to compare (the defaults without files,
    thetas or ``moe``); with ``moe``, BTT-MoE, BTT and the standard MoE (a spec line, not ``.ein``).

    Every structure must take ``d_in`` and ``d_out``: the experiment binds them
    per layer (d -> 4d and 4d -> d).
    """
    found = load_all(DEFAULT_STRUCTURES) if not files and not thetas and not moe else []
    if moe:
        found += load_all(MOE_STRUCTURES)
    for name in files:
        found += load_all(read_spec(Path(name)))
    labels: dict[str, str] = {}
    for number, text in enumerate(thetas, start=1):
        if f"theta({text})" in labels.values():
            raise ParameterError(
                f"--theta '{text}' is given twice", hint="give each point of the theta space once"
            )
        try:
            (structure,) = load_all(theta_structure(text, number))
        except EinstructError as exc:
            raise type(exc)(
                f"--theta '{text}': {exc.message}",
                None,
                "write classes and exponents, e.g. --theta 'alpha=1/2,gamma=1/2,epsilon=1/2,phi=1/2,rho=0'",
            ) from None
        found.append(structure)
        labels[structure.name] = f"theta({text})"
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
        label = labels.get(structure.name, structure.name)
        if label in out:
            raise ParameterError(
                f"two structures are called '{structure.name}'",
                structure.span,
                "give each structure its own name: it labels the curve",
            )
        out[label] = structure.source
    if moe:
        out["standard_moe"] = moe_spec()
    return out
