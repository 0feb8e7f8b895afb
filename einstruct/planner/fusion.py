"""Which fused Triton kernels a plan gets, and whether they are the layer's default.

For a two-factor chain (:mod:`.chain`) four kernels run a training step:

- ``forward``: ``y = (x P) Q``; ``grad_input``: ``gx = (gy Q^T) P^T``, the
  same kernel text on the transposed chain. Family ``chain_stream`` when the
  last step's new class (epsilon) fits one block, so nothing is recomputed;
  else ``chain_stationary`` when the whole step-2 reduction fits in registers
  (low rank); else the layer gets no fused path.
- ``grad_second``: Q's gradient, ``sum over tokens, delta of t gy``, recomputing
  ``t = x P`` tile by tile (family ``factor_stream``); ``grad_first``: P's
  gradient, the same kernel on the transposed chain. When epsilon (alpha for
  P) does not fit one block, the recomputation would be repeated per block,
  so that gradient is taken by the planned torch steps instead (``gemm``).

Also when the fused gradient's tiles would request more bytes than the
planned steps move (each program re-reads the input and the output's gradient
once per block of the gradient it lacks: :func:`.tiles.requested_per_token`),
that gradient is ``gemm``: fusion cannot beat the two matmuls there.

The default (:func:`plan_fusion`'s ``default``) is the planned torch steps
until a GPU has timed the fused kernels (:data:`GPU_TIMED`); then ``fused``
only where the kernels request at most :data:`BYTES_RATIO` of the planned
torch path's bytes, re-reads included, and do at most :data:`FLOPS_RATIO` of
the layer's FLOPs. ``kernels="fused"`` always selects the kernels.

    >>> fusion = plan_fusion(make_plan(load("structure s = btt(d = 1024)")))
    >>> fusion.forward.family, fusion.grad_first.family, fusion.default
    ('chain_stream', 'gemm', 'torch')
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from .chain import CLASSES, Chain, chain_of, transposed
from .plan_data import Plan
from .tiles import Tiles, gpu_tiles, interpreter_tiles, requested_per_token

__all__ = ["BYTES_RATIO", "FLOPS_RATIO", "GPU_TIMED", "KernelPlan", "Fusion", "NotFused", "plan_fusion"]

#: The fused path is the default only where it moves at most this share of the torch path's bytes...
BYTES_RATIO = Fraction(1, 2)
#: ...and does at most this multiple of the layer's FLOPs (forward + backward).
FLOPS_RATIO = Fraction(3, 2)
#: Whether a GPU has timed the fused kernels against the torch path. Until one has, the
#: default is the planned torch steps everywhere (``kernels="fused"`` still runs the kernels);
#: then the measured comparison replaces the byte rule above.
GPU_TIMED = False


@dataclass(frozen=True)
class KernelPlan:
    """One kernel of the fused path.

    Attributes:
        role: ``forward``, ``grad_input``, ``grad_first`` (P) or ``grad_second`` (Q).
        family: ``chain_stream``, ``chain_stationary``, ``factor_stream``, or
            ``gemm`` (no kernel: the planned torch steps).
        chain: the chain it runs on (transposed for ``grad_input`` and ``grad_first``).
        gpu: the configurations autotuning chooses from for fp16 and bf16 inputs.
        gpu_fp32: the same for fp32 inputs (smaller tiles: twice the bytes per entry);
            empty when none fits, and then fp32 on a GPU runs the planned torch steps.
        interpreter: the configuration under ``TRITON_INTERPRET=1``.
    """

    role: str
    family: str
    chain: Chain
    gpu: tuple[Tiles, ...] = ()
    gpu_fp32: tuple[Tiles, ...] = ()
    interpreter: Tiles | None = None

    def flops_per_token(self) -> int:
        """FLOPs per token the kernel does on its first GPU configuration: padding to the
        blocks and recomputed intermediates included."""
        step1, step2 = self.chain.flops_per_token()
        if self.family == "gemm":  # the intermediate it needs, then its own product
            return step1 + step2
        pad = {c: _padded(self.chain.sizes[c], self.gpu[0].block(c)) for c in CLASSES}
        ratio = Fraction(math.prod(pad.values()), math.prod(self.chain.sizes.values()))
        no_eps = ratio / Fraction(pad["epsilon"], self.chain.sizes["epsilon"])
        no_alpha = ratio / Fraction(pad["alpha"], self.chain.sizes["alpha"])
        return int(step1 * no_eps + step2 * no_alpha)


@dataclass(frozen=True)
class Fusion:
    """The fused path of a chain: its four kernels and whether it is the default.

    Attributes:
        chain: the forward chain.
        forward, grad_input, grad_first, grad_second: the kernels.
        default: ``fused`` or ``torch`` (see the module docstring).
        bytes_ratio: entries the fused path moves per token over the torch path's (forward + backward).
        flops_ratio: FLOPs the fused path does over the layer's (forward + backward).
        reason: one line saying why ``default`` was chosen.
    """

    chain: Chain
    forward: KernelPlan
    grad_input: KernelPlan
    grad_first: KernelPlan
    grad_second: KernelPlan
    default: str
    bytes_ratio: Fraction
    flops_ratio: Fraction
    reason: str

    @property
    def kernels(self) -> tuple[KernelPlan, ...]:
        """The four kernels, in the order the module defines them."""
        return (self.forward, self.grad_input, self.grad_second, self.grad_first)


@dataclass(frozen=True)
class NotFused:
    """Why a plan has no fused path (a sentence without user names)."""

    reason: str


def _padded(size: int, block: int) -> int:
    return -(-size // block) * block


def _chain_kernel(role: str, chain: Chain) -> KernelPlan | None:
    for family in ("chain_stream", "chain_stationary"):
        configs = gpu_tiles(chain.sizes, family)
        if configs:
            wide = gpu_tiles(chain.sizes, family, itemsize=4)
            return KernelPlan(role, family, chain, configs, wide, interpreter_tiles(chain.sizes, family))
    return None


def _grad_kernel(role: str, chain: Chain, torch_entries: Fraction) -> KernelPlan:
    """``factor_stream`` where its best tiles request fewer entries per token than the planned
    torch steps move for that gradient (the forward again, then its backward: twice the
    forward's traffic); else ``gemm``: the recomputation and two matmuls."""
    configs = gpu_tiles(chain.sizes, "factor_stream")
    requested = requested_per_token(dict(configs[0].blocks), "factor_stream", chain.sizes) if configs else 0
    if not configs or requested > 2 * torch_entries:
        return KernelPlan(role, "gemm", chain)
    wide = gpu_tiles(chain.sizes, "factor_stream", itemsize=4)
    interpreter = interpreter_tiles(chain.sizes, "factor_stream")
    return KernelPlan(role, "factor_stream", chain, configs, wide, interpreter)


def plan_fusion(plan: Plan) -> Fusion | NotFused:
    """The fused kernels for ``plan`` and the default path, or why there are none."""
    chain = chain_of(plan)
    if isinstance(chain, str):
        return NotFused(chain)
    back = transposed(chain)
    forward = _chain_kernel("forward", chain)
    grad_input = _chain_kernel("grad_input", back)
    if forward is None or grad_input is None:
        return NotFused("no tile of the chain fits a program's registers")
    grad_second = _grad_kernel("grad_second", chain, plan.traffic(1))
    grad_first = _grad_kernel("grad_first", back, plan.traffic(1))
    kernels = (forward, grad_input, grad_second, grad_first)
    torch_bytes = 3 * plan.traffic(1)
    fused_bytes = Fraction(0)
    for k in kernels:
        if k.family == "gemm":
            fused_bytes += 2 * plan.traffic(1)
        else:
            fused_bytes += Fraction(requested_per_token(dict(k.gpu[0].blocks), k.family, k.chain.sizes))
    step1, step2 = chain.flops_per_token()
    layer_flops = 3 * (step1 + step2)
    bytes_ratio = fused_bytes / torch_bytes
    flops_ratio = Fraction(sum(k.flops_per_token() for k in kernels), layer_flops)
    numbers = (
        f"the fused kernels request {float(bytes_ratio):.2f}x the bytes and do {float(flops_ratio):.2f}x "
        "the FLOPs of the planned torch steps (forward + backward, re-reads modelled)"
    )
    limits = f"at most {float(BYTES_RATIO):.2f}x and {float(FLOPS_RATIO):.2f}x"
    if not GPU_TIMED:
        default, reason = "torch", f"{numbers}; no GPU has timed the fused kernels yet"
    elif bytes_ratio <= BYTES_RATIO and flops_ratio <= FLOPS_RATIO:
        default, reason = "fused", f"{numbers}, within {limits}"
    else:
        default, reason = "torch", f"{numbers}; fused needs {limits}"
    return Fusion(
        chain, forward, grad_input, grad_first, grad_second, default, bytes_ratio, flops_ratio, reason
    )
