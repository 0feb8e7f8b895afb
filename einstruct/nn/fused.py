"""Running a layer's fused Triton path: when a call runs the kernels, the custom ops.

A generated module of the triton backend holds its chain's table (a
:class:`~einstruct.nn.kernels.FusedChain`: classes, layouts, launch
configurations); this module turns it into two custom ops (the forward, and the
backward: the input's and the factors' gradients in one op) with
their autograd and FLOP formulas (:func:`chain_ops`), decides when a call runs
them, and holds :class:`FusedStructuredLinear` (the ``kernels`` option). Without
Triton installed it still imports: CPU tensors run the planned torch steps.
"""

from typing import Any, ClassVar

import torch

# in a standalone file these names are defined by env.py's, layer.py's and
# kernels.py's text above
if "StructuredLinear" not in globals():
    from .layer import StructuredLinear, autocast_context, autocast_state
if "FusedChain" not in globals():
    from .kernels import _INTERPRET, FusedChain, triton

__all__ = [
    "FusedStructuredLinear",
    "chain_ops",
]


def _use_kernels(kernels: str, x: torch.Tensor, gpu_dtypes: tuple) -> bool:
    """Whether a call runs the fused kernels: kernels="fused" on CUDA tensors of a dtype
    the kernels have GPU configurations for, or on CPU tensors under
    TRITON_INTERPRET=1 (not in bfloat16: the interpreter's bfloat16 tl.dot is wrong).
    Under a torch.func transform (grad, vmap, jacrev), which custom ops do not
    support, the planned steps run."""
    if kernels != "fused" or torch._C._functorch.maybe_current_level() is not None:
        return False
    if x.is_cuda and triton is None:
        raise RuntimeError(
            "this layer runs fused Triton kernels on CUDA tensors: pip install triton "
            "(or pip install 'einstruct[triton]'), or construct it with kernels='torch'"
        )
    kind = x.device.type
    dtype = _run_dtype(x)
    if x.is_cuda:
        return dtype in gpu_dtypes
    interpreted = _INTERPRET and triton is not None and kind == "cpu"
    return interpreted and dtype != torch.bfloat16


#: What autocast casts to its dtype (as F.linear): float64 is never cast down.
_AUTOCAST_ELIGIBLE = (torch.float32, torch.float16, torch.bfloat16)


def _run_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a call runs in: autocast's when it is on and casts x's dtype, else x's."""
    kind = x.device.type
    if torch.is_autocast_enabled(kind) and x.dtype in _AUTOCAST_ELIGIBLE:
        return torch.get_autocast_dtype(kind)
    return x.dtype


def _kernel_operands(x: torch.Tensor, factors: tuple) -> tuple:
    """The input and the factors in one dtype: autocast's when it is on and casts the
    input's dtype (as F.linear), else the input's."""
    dtype = _run_dtype(x)
    if dtype != x.dtype:
        return (x.to(dtype), *(w.to(dtype) for w in factors))
    for w in factors:
        if w.dtype != x.dtype:
            raise RuntimeError(
                f"the input is {x.dtype} but a factor is {w.dtype}: cast one, or use autocast"
            )
    return (x, *factors)


def _check_operands(x: torch.Tensor, width: int, factors: tuple, chain: Any) -> None:
    """Raise ValueError unless x is (tokens, width) and the factors have the chain's
    entries, x's device and x's dtype."""
    if x.dim() != 2 or x.shape[1] != width:
        raise ValueError(
            f"expected a (tokens, {width}) tensor, got shape {tuple(x.shape)}"
        )
    for w, role in zip(factors, ("p", "q")):
        if w.numel() != chain.widths[role]:
            raise ValueError(f"expected {chain.widths[role]} entries, got {w.numel()}")
        if w.device != x.device or w.dtype != x.dtype:
            raise ValueError(
                f"operands differ: {w.device} {w.dtype} and {x.device} {x.dtype}"
            )


def chain_ops(
    name: str,
    chain: FusedChain,
    first: int,
    flops: int,
    factor_flops: tuple,
    reference: Any = None,
) -> Any:
    """The fused forward of a chain as a custom op ``einstruct::<name>_forward`` (with
    its backward op ``einstruct::<name>_backward``, autograd and FLOP formulas).

    The forward takes the input, the layer's two factors in the layer's order and
    ``save`` (keep the intermediate t for the backward, as the planned steps'
    ``save_intermediate``; else the backward recomputes it) and returns ``(y, t)``
    (t empty when not saved); first
    (0 or 1) says which meets the input (the chain's P). flops: FLOPs per token of the
    forward (what ``einstruct analyze`` counts; also the input's gradient's);
    factor_flops: of each factor's gradient, in the layer's order. reference:
    ``(x, f1, f2) -> (y, ...)``, the planned torch steps: a backward that builds a
    graph (``create_graph=True``: gradient penalties, Hessians) differentiates them,
    since the backward op has no derivative of its own. Defined once per name (a
    module's text is run once per process).
    """
    d_in, d_out = chain.widths["x"], chain.widths["y"]

    def ordered(f1: Any, f2: Any) -> tuple:
        return (f1, f2) if first == 0 else (f2, f1)

    @torch.library.custom_op(f"einstruct::{name}_forward", mutates_args=())
    def forward(
        x: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor, save: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _check_operands(x, d_in, ordered(f1, f2), chain)
        y, t = chain.forward_saving(x, *ordered(f1, f2))
        return y, t if save else x.new_empty(0)

    @forward.register_fake
    def forward_fake(x, f1, f2, save):  # type: ignore[no-untyped-def]
        t = x.new_empty((x.shape[0], chain.widths["t"])) if save else x.new_empty(0)
        return x.new_empty((x.shape[0], d_out)), t

    @torch.library.custom_op(f"einstruct::{name}_backward", mutates_args=())
    def backward(
        x: torch.Tensor,
        g: torch.Tensor,
        f1: torch.Tensor,
        f2: torch.Tensor,
        t: torch.Tensor,
        need_x: bool,
        need_f1: bool,
        need_f2: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _check_operands(g, d_out, ordered(f1, f2), chain)
        p, q = ordered(f1, f2)
        need_p, need_q = ordered(need_f1, need_f2)
        saved = t if t.numel() or not x.shape[0] else None
        g_x, g_p, g_q = chain.backward(x, g, p, q, (need_x, need_p, need_q), saved)
        g_f1, g_f2 = ordered(g_p, g_q)
        return (  # a new empty tensor for each: a custom op's outputs may not alias
            x.new_empty(0) if g_x is None else g_x,
            f1.new_empty(0) if g_f1 is None else g_f1.view(f1.shape),
            f2.new_empty(0) if g_f2 is None else g_f2.view(f2.shape),
        )

    @backward.register_fake
    def backward_fake(x, g, f1, f2, t, need_x, need_f1, need_f2):  # type: ignore[no-untyped-def]
        return (
            torch.empty_like(x) if need_x else x.new_empty(0),
            torch.empty_like(f1) if need_f1 else f1.new_empty(0),
            torch.empty_like(f2) if need_f2 else f2.new_empty(0),
        )

    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        x, f1, f2, _ = inputs
        ctx.save_for_backward(x, f1, f2, output[1])
        ctx.mark_non_differentiable(output[1])
        ctx.amp = autocast_state(x)

    def grads(ctx: Any, g_out: torch.Tensor, _: Any) -> tuple:
        x, f1, f2, t = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled() and reference is not None:  # create_graph=True
            with autocast_context(ctx.amp):
                y = reference(x, f1, f2)[0]
            wanted = [v for v, need in zip((x, f1, f2), needs) if need]
            got = iter(
                torch.autograd.grad(y, wanted, g_out.to(y.dtype), create_graph=True)
            )
            return (*(next(got) if need else None for need in needs), None)
        with autocast_context(ctx.amp):
            out = backward(x, g_out.to(x.dtype), f1, f2, t, *needs)
        return (*(v if need else None for v, need in zip(out, needs)), None)

    forward.register_autograd(grads, setup_context=setup_context)
    _register_flops(name, flops, factor_flops, first)
    return forward


def _register_flops(name: str, flops: int, per_factor: tuple, first: int) -> None:
    """FLOP formulas for torch's FLOP counter that count what ``einstruct analyze``
    reports: ``flops`` per token for the forward and for the input's gradient, and
    each needed factor's product (``per_factor``) for the factors' gradients; the
    intermediate's gradient (``g Q^T``, as many FLOPs as Q's gradient) is counted
    once, with the input's gradient or, without it, for P's."""
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    def forward_flops(
        x_shape: Any, *args: Any, out_shape: Any = None, **kw: Any
    ) -> int:
        return flops * x_shape[0]

    def backward_flops(
        x_shape: Any, g_shape: Any, *args: Any, out_shape: Any = None, **kw: Any
    ) -> int:
        need_x, *needs = args[3:]
        each = sum(c * int(n) for c, n in zip(per_factor, needs))
        intermediate = per_factor[1 - first] if needs[first] and not need_x else 0
        return (flops * int(need_x) + intermediate + each) * x_shape[0]

    for kind, formula in (("forward", forward_flops), ("backward", backward_flops)):
        target = getattr(torch.ops.einstruct, f"{name}_{kind}")
        if target not in flop_registry:
            register_flop_formula(target)(formula)


def _kernels_option(layer: Any, kernels: Any) -> str:
    """The ``kernels`` option checked against the layer's choices (None: its default)."""
    if kernels is not None and kernels not in layer.kernel_choices:
        choices = ", ".join(repr(k) for k in layer.kernel_choices)
        why = f" ({layer.kernels_note})" if layer.kernels_note else ""
        raise ValueError(f"kernels must be one of {choices}: {kernels!r:.40}{why}")
    return kernels or layer.default_kernels


class FusedStructuredLinear(StructuredLinear):
    """A structured layer whose forward and backward can run fused Triton kernels.

    Args (besides StructuredLinear's):
        kernels: "fused" runs the fused Triton kernels (CUDA tensors; CPU tensors
            when TRITON_INTERPRET=1 is set before import), "torch" the planned torch
            steps. Default: the planner's choice, ``default_kernels`` (why:
            ``kernels_note``).
    """

    #: The choices, the planner's default and why.
    kernel_choices: ClassVar[tuple[str, ...]] = ("torch",)
    default_kernels: ClassVar[str] = "torch"
    kernels_note: ClassVar[str] = ""
    #: The fused forward (a custom op: chain_ops) and the input dtypes it has GPU
    #: configurations for.
    fused_forward: ClassVar[Any] = None
    gpu_dtypes: ClassVar[tuple] = ()

    def __init__(
        self,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
        normalize: bool = False,
        zero_init_last: bool = False,
        gain: bool = False,
        strategy: str | None = None,
        save_intermediate: bool = True,
        kernels: str | None = None,
        **options: Any,
    ) -> None:
        """``options``: a routed layer's own (sparse_experts, aux_weight), passed on."""
        chosen = _kernels_option(self, kernels)
        super().__init__(
            bias,
            device,
            dtype,
            normalize,
            zero_init_last,
            gain,
            strategy,
            save_intermediate,
            **options,
        )
        self.kernels = chosen

    def _path_backend(self, x: torch.Tensor) -> str:
        """``fused`` where this call runs the kernels (``fused-interpreted`` under
        TRITON_INTERPRET=1, CPU or CUDA tensors: Triton's interpreter, whose timings hold
        for no real run), else ``torch``."""
        if self.fused_forward is None or not _use_kernels(
            self.kernels, x, self.gpu_dtypes
        ):
            return "torch"
        return "fused" if x.is_cuda and not _INTERPRET else "fused-interpreted"

    def _run(self, x: torch.Tensor, factors: tuple) -> torch.Tensor:
        fused = self.fused_forward is not None
        if fused and _use_kernels(self.kernels, x, self.gpu_dtypes):
            operands = _kernel_operands(x, factors)
            return self.fused_forward(*operands, self.save_intermediate)[0]
        return super()._run(x, factors)
