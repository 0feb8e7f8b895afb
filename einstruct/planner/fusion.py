"""Which fused Triton launches a plan gets, and whether they are the layer's default.

For a two-factor chain ``y = (x P) Q`` (:mod:`.chain`) a training step runs six
launches of the runtime's two kernels (:mod:`einstruct.nn.kernels`), each a
matrix product that reads its operands through their layouts (no permuting
copy) with the tokens as rows:

- forward: ``t = x P`` (``forward_first``), ``y = t Q`` (``forward_second``);
- backward: ``gt = gy Q^T`` (``grad_input_first``), ``gx = gt P^T``
  (``grad_input_second``), P's gradient from ``x`` and ``gt`` (``grad_first``),
  Q's from ``t`` (saved by the forward, as ``save_intermediate`` has the planned
  steps do, or recomputed) and ``gy`` (``grad_second``).

The two products are not fused into one kernel: a program that made a block of
``y`` from a token tile would need the tile's whole intermediate, which for the
structures this project targets (BTT, Monarch, Kronecker at d = 4096) is
thousands of entries per token, more than registers hold, so it would re-read
its input once per output block (what the earlier single-kernel chains did:
9-31x the input's bytes). Stored once in the input's dtype, the intermediate
costs what the planned torch steps pay, and each launch reads each operand
about once (:func:`.tiles.requested_per_token`, checked against the bytes
``benchmarks/kernel_traffic.py`` counts from the kernels).

The default (:func:`plan_fusion`'s ``default``) is the planned torch steps
until a GPU has timed the kernels (:data:`GPU_TIMED`); then ``fused`` only where
the launches request at most :data:`BYTES_RATIO` of the planned torch path's
bytes and do at most :data:`FLOPS_RATIO` of the layer's FLOPs.
``kernels="fused"`` always selects the kernels.

    >>> fusion = plan_fusion(make_plan(load("structure s = btt(d = 1024)")))
    >>> [launch.name for launch in fusion.launches][:2], fusion.default
    (['forward_first', 'forward_second'], 'torch')
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from .chain import Chain, chain_of
from .plan_data import Plan
from .tiles import Launch, gpu_rows, interpreter_row, requested_per_token

__all__ = [
    "BYTES_RATIO",
    "FLOPS_RATIO",
    "GPU_TIMED",
    "LAUNCHES",
    "LaunchPlan",
    "Fusion",
    "NotFused",
    "plan_fusion",
]

#: The fused path is the default only where it moves at most this share of the torch path's bytes...
BYTES_RATIO = Fraction(1, 1)
#: ...and does at most this multiple of the layer's FLOPs (forward + backward).
FLOPS_RATIO = Fraction(3, 2)
#: Whether a GPU has timed the fused kernels against the torch path. Until one has, the
#: default is the planned torch steps everywhere (``kernels="fused"`` still runs the kernels);
#: then the measured comparison replaces the byte rule above.
GPU_TIMED = False

#: Each launch: (kind, batch class, row class, summed classes, made classes), in the
#: forward chain's classes (the runtime's ``STEPS`` and ``FACTOR_GRADS``).
LAUNCHES: dict[str, tuple[str, str, str, tuple[str, ...], tuple[str, ...]]] = {
    "forward_first": ("step", "gamma", "beta", ("alpha",), ("phi", "delta", "rho")),
    "forward_second": ("step", "phi", "delta", ("gamma", "beta", "rho"), ("epsilon",)),
    "grad_input_first": ("step", "phi", "delta", ("epsilon",), ("gamma", "beta", "rho")),
    "grad_input_second": ("step", "gamma", "beta", ("phi", "delta", "rho"), ("alpha",)),
    "grad_first": ("factor", "gamma", "beta", ("alpha",), ("phi", "delta", "rho")),
    "grad_second": ("factor", "phi", "delta", ("gamma", "beta", "rho"), ("epsilon",)),
}
#: The launches of each role of a training step (with the intermediate saved: the
#: default; under ``save_intermediate=False`` grad_second runs forward_first again).
ROLES = {
    "forward": ("forward_first", "forward_second"),
    "grad_input": ("grad_input_first", "grad_input_second"),
    "grad_first": ("grad_first",),
    "grad_second": ("grad_second",),
}


@dataclass(frozen=True)
class LaunchPlan:
    """One launch of the fused path: its product and configurations.

    Attributes:
        launch: the product's sizes (:class:`.tiles.Launch`).
        gpu: the configurations autotuning chooses from, by bytes per entry (2: fp16
            and bf16; 4: fp32).
        interpreter: the configuration under ``TRITON_INTERPRET=1``.
    """

    launch: Launch
    gpu: dict[int, tuple[tuple, ...]]
    interpreter: tuple

    @property
    def name(self) -> str:
        return self.launch.name


@dataclass(frozen=True)
class Fusion:
    """The fused path of a chain: its launches and whether it is the default.

    Attributes:
        chain: the forward chain.
        launches: the six launches, in :data:`LAUNCHES` order.
        default: ``fused`` or ``torch`` (see the module docstring).
        bytes_ratio: entries the fused path requests per token over the torch path's
            (forward + backward, re-reads included).
        flops_ratio: FLOPs the fused path does over the layer's (forward + backward).
        reason: one line saying why ``default`` was chosen.
    """

    chain: Chain
    launches: tuple[LaunchPlan, ...]
    default: str
    bytes_ratio: Fraction
    flops_ratio: Fraction
    reason: str

    def launch(self, name: str) -> LaunchPlan:
        """The launch called ``name``."""
        return next(k for k in self.launches if k.name == name)


@dataclass(frozen=True)
class NotFused:
    """Why a plan has no fused path (a sentence without user names)."""

    reason: str


def _launch(name: str, chain: Chain) -> LaunchPlan:
    kind, batch, row, summed, made = LAUNCHES[name]
    s = chain.sizes
    launch = Launch(
        name,
        kind,
        rows=s[row],
        groups=s[batch],
        summed=math.prod(s[c] for c in summed),
        made=math.prod(s[c] for c in made),
    )
    return LaunchPlan(launch, {2: gpu_rows(launch, 2), 4: gpu_rows(launch, 4)}, interpreter_row(launch))


def plan_fusion(plan: Plan) -> Fusion | NotFused:
    """The fused launches for ``plan`` and the default path, or why there are none."""
    chain = chain_of(plan)
    if isinstance(chain, str):
        return NotFused(chain)
    launches = tuple(_launch(name, chain) for name in LAUNCHES)
    by_name = {k.name: k for k in launches}
    requested = Fraction(0)
    flops = 0
    for names in ROLES.values():
        for name in names:
            k = by_name[name]
            row = k.gpu[2][0]
            requested += requested_per_token(k.launch, row, plan.batch)
            if k.launch.kind == "step":  # and the step's output, stored once
                requested += Fraction(k.launch.rows * k.launch.groups * k.launch.made)
            flops += k.launch.flops_per_token(row)
    torch_entries = 3 * plan.traffic(1)
    step1, step2 = chain.flops_per_token()
    bytes_ratio = requested / torch_entries
    flops_ratio = Fraction(flops, 3 * (step1 + step2))
    numbers = (
        f"the fused launches request {float(bytes_ratio):.2f}x the bytes and do "
        f"{float(flops_ratio):.2f}x the FLOPs of the planned torch steps (forward + backward)"
    )
    limits = f"at most {float(BYTES_RATIO):.2f}x and {float(FLOPS_RATIO):.2f}x"
    if not GPU_TIMED:
        default, reason = "torch", f"{numbers}; no GPU has timed the fused kernels yet"
    elif bytes_ratio <= BYTES_RATIO and flops_ratio <= FLOPS_RATIO:
        default, reason = "fused", f"{numbers}, within {limits}"
    else:
        default, reason = "torch", f"{numbers}; fused needs {limits}"
    return Fusion(chain, launches, default, bytes_ratio, flops_ratio, reason)
