"""Running fused Triton kernels from a generated layer: launch, autotune, custom ops.

A generated module of the triton backend holds its kernels, their launchers
and configuration tables, and three custom ops (forward, input gradient,
factor gradients); this module holds what they share: the launch with the
shipped configurations (autotuned per token count on GPUs, the interpreter's
blocks under ``TRITON_INTERPRET=1``), when a call runs the kernels, the ops'
autograd and FLOP formulas, and :class:`FusedStructuredLinear` (the ``kernels``
option). Without Triton installed it still imports: CPU tensors run the planned
torch steps.
"""

from typing import Any, ClassVar

import torch

# in a standalone file these names are defined by env.py's and layer.py's text above
if "StructuredLinear" not in globals():
    from .env import env_flag
    from .layer import StructuredLinear, autocast_context, autocast_state

try:
    import triton
    import triton.language as tl
except ImportError:  # the module still works: CPU tensors run the planned torch steps
    triton = None

    class tl:  # type: ignore[no-redef]  # stands in where the kernels' signatures name it
        constexpr = None


__all__ = [
    "FusedStructuredLinear",
    "fused_backward",
    "fused_setup",
    "register_flops",
]

#: Run the kernels in Triton's interpreter on CPU tensors (read when this is imported).
_INTERPRET = env_flag("TRITON_INTERPRET")
#: A factor gradient gives each program at least this many tokens, in at most
#: _MAX_SPLIT shares.
_SPLIT_TOKENS = 512
_MAX_SPLIT = 64
#: Every GPU launch lets ptxas use this many registers (unbounded, it spills for
#: occupancy).
_MAX_REGISTERS = 255
#: Each kernel's block names, GPU configurations by bytes per entry, interpreter
#: blocks (filled by the generated modules); its autotuned forms.
_CONFIGS: dict = {}
_TUNED: dict = {}


def _jit(fn: Any) -> Any:
    """fn as a Triton kernel; unchanged (and never called) when Triton is not installed."""
    return fn if triton is None else triton.jit(fn)


def _check_operands(a: torch.Tensor, width: int, tensors: tuple, shapes: tuple) -> None:
    """Raise ValueError unless a is (tokens, width) and each tensor has its shape,
    device and dtype."""
    if a.dim() != 2 or a.shape[1] != width:
        raise ValueError(
            f"expected a (tokens, {width}) tensor, got shape {tuple(a.shape)}"
        )
    for w, shape in zip(tensors, shapes):
        if tuple(w.shape) != tuple(shape):
            raise ValueError(f"expected shape {tuple(shape)}, got {tuple(w.shape)}")
        if w.device != a.device or w.dtype != a.dtype:
            raise ValueError(
                f"operands differ: {w.device} {w.dtype} and {a.device} {a.dtype}"
            )


def _token_split(n: int) -> int:
    """How many shares of the tokens a factor gradient's programs divide."""
    return max(1, min(_MAX_SPLIT, n // _SPLIT_TOKENS))


def _launch(
    kernel: Any, grid: Any, args: tuple, dtype: torch.dtype, config: Any
) -> None:
    """Run kernel: with config (block -> size) when given, with the interpreter's
    blocks under TRITON_INTERPRET=1, else autotuned over its GPU configurations."""
    blocks, tables, interpreter = _CONFIGS[kernel]
    tf32 = dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    constants = {
        "ACC_DTYPE": tl.float64 if dtype == torch.float64 else tl.float32,
        "DOT_PRECISION": "tf32" if tf32 else "ieee",
    }
    if config is None and not _INTERPRET:
        key = (kernel, dtype.itemsize)
        if key not in _TUNED:
            settings = [
                triton.Config(
                    dict(zip(blocks, row)),
                    num_warps=row[-2],
                    num_stages=row[-1],
                    maxnreg=_MAX_REGISTERS,
                )
                for row in tables[dtype.itemsize]
            ]
            _TUNED[key] = triton.autotune(settings, key=["N"])(kernel)
        _TUNED[key][grid](*args, **constants)
        return
    chosen = dict(config or zip(blocks, interpreter))
    if _INTERPRET:  # the interpreter takes no launch options
        chosen.pop("num_warps", None)
        chosen.pop("num_stages", None)
    else:
        chosen.setdefault("maxnreg", _MAX_REGISTERS)
    kernel[grid](*args, **constants, **chosen)


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
    autocast = torch.is_autocast_enabled(kind)
    dtype = torch.get_autocast_dtype(kind) if autocast else x.dtype
    if x.is_cuda:
        return dtype in gpu_dtypes
    interpreted = _INTERPRET and triton is not None and kind == "cpu"
    return interpreted and dtype != torch.bfloat16


def _kernel_operands(x: torch.Tensor, factors: tuple) -> tuple:
    """The input and the factors in one dtype: autocast's when it is on (as F.linear),
    else the input's."""
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        dtype = torch.get_autocast_dtype(kind)
        return (x.to(dtype), *(w.to(dtype) for w in factors))
    for w in factors:
        if w.dtype != x.dtype:
            raise RuntimeError(
                f"the input is {x.dtype} but a factor is {w.dtype}: cast one, or use autocast"
            )
    return (x, *factors)


def fused_setup(ctx: Any, inputs: tuple, output: Any) -> None:
    """Save the input and the factors (the backward recomputes the intermediate) and
    the autocast state."""
    ctx.save_for_backward(*inputs)
    ctx.amp = autocast_state(inputs[0])


def fused_backward(grad_input: Any, grad_factors: Any) -> Any:
    """The fused forward's backward: the input's gradient by the transposed chain
    (``grad_input``), the factors' by tiled reductions or the planned steps
    (``grad_factors``)."""

    def backward(ctx: Any, g_out: torch.Tensor) -> tuple:
        x, *factors = ctx.saved_tensors
        needs = ctx.needs_input_grad
        g_x = None
        grads: list = [None] * len(factors)
        with autocast_context(ctx.amp):
            g = g_out.to(x.dtype)
            if needs[0]:
                g_x = grad_input(g, *factors)
            if any(needs[1:]):
                out = grad_factors(x, g, *factors, *needs[1:])
                grads = [w if need else None for w, need in zip(out, needs[1:])]
        return (g_x, *grads)

    return backward


def register_flops(op: str, forward: int, per_factor: tuple) -> None:
    """FLOP formulas for torch's FLOP counter that count what ``einstruct analyze``
    reports: ``forward`` per token for the forward and the input's gradient, and each
    needed factor's product (``per_factor``) for the factors' gradients."""
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    def forward_flops(
        x_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any
    ) -> int:
        return forward * x_shape[0]

    def factor_flops(
        x_shape: Any, g_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any
    ) -> int:
        needs = args[len(per_factor) :]
        return sum(c * int(n) for c, n in zip(per_factor, needs)) * x_shape[0]

    formulas = (
        ("forward", forward_flops),
        ("grad_input", forward_flops),
        ("grad_factors", factor_flops),
    )
    for kind, formula in formulas:
        target = getattr(torch.ops.einstruct, f"{op}_{kind}")
        if target not in flop_registry:
            register_flop_formula(target)(formula)


def _kernels_option(layer: Any, kernels: Any) -> str:
    """The ``kernels`` option checked against the layer's choices (None: its default)."""
    if kernels is not None and kernels not in layer.kernel_choices:
        choices = ", ".join(repr(k) for k in layer.kernel_choices)
        raise ValueError(f"kernels must be one of {choices}: {kernels!r:.40}")
    return kernels or layer.default_kernels


class FusedStructuredLinear(StructuredLinear):
    """A structured layer whose forward and backward can run fused Triton kernels.

    Args (besides StructuredLinear's):
        kernels: "fused" runs the fused Triton kernels (CUDA tensors; CPU tensors
            when TRITON_INTERPRET=1 is set before import), "torch" the planned torch
            steps. Default: the planner's choice, ``default_kernels`` (why:
            ``kernels_note``).
    """

    #: The choices, the planner's default and why; which family runs each kernel.
    kernel_choices: ClassVar[tuple[str, ...]] = ("torch",)
    default_kernels: ClassVar[str] = "torch"
    kernels_note: ClassVar[str] = ""
    kernel_families: ClassVar[dict[str, str]] = {}
    #: The fused forward (a custom op) and the input dtypes it has GPU configurations
    #: for.
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

    def _run(self, x: torch.Tensor, factors: tuple) -> torch.Tensor:
        fused = self.fused_forward is not None
        if fused and _use_kernels(self.kernels, x, self.gpu_dtypes):
            return self.fused_forward(*_kernel_operands(x, factors))
        return super()._run(x, factors)
