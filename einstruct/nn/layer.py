"""The base class of every generated layer, and the helpers its planned steps use.

A generated module holds only what is specific to its structure: the planned
steps and their backward (an autograd Function), ``dense_weight``, ``_project``
and the tables (axes, sizes, init, learning rates). Its class derives from
:class:`StructuredLinear`, which holds everything the layers share: init,
normalization, input checks, the dense strategy, ``from_dense``, optimizer
groups. ``einstruct compile -o`` copies this text verbatim into the file it
writes (after ``env.py``), so it needs only torch and the standard library.

    class Btt(StructuredLinear):       # what a generated module defines
        planned_function = _BttFunction
        factor_axes = {"A": ("g", "f", "r", "a"), "B": ("f", "g", "r", "e")}
        ...
"""

import contextlib
from typing import Any, ClassVar

import torch
from torch import nn

# in a standalone file this name is defined by env.py's text above
if "max_params" not in globals():
    from .env import LimitError, inside_transform, max_params

__all__ = [
    "StructuredLinear",
    "apply_function",
    "autocast_context",
    "autocast_state",
    "decayed",
    "matmul_into",
    "normalized",
    "planned_backward",
    "planned_setup",
]


def normalized(weight: torch.Tensor, sigma: float) -> torch.Tensor:
    """Divide by max(1, rms(weight) / sigma): keep the factor's scale at most its init.

    The rms carries an epsilon (1e-8, as the papers' code), so an all-zero
    factor (zero_init_last) gets a finite gradient; it is taken in at least
    float32 so the epsilon survives half precision.
    """
    wide = weight.to(torch.promote_types(weight.dtype, torch.float32))
    rms = (wide.pow(2).mean() + 1e-8).sqrt()
    return weight / torch.clamp(rms / sigma, min=1.0)


def decayed(param: torch.Tensor, weight_decay: float) -> float:
    """The weight decay a parameter gets: ``weight_decay`` for matrices (2 or more axes),
    0 for vectors and scalars (biases, gains). One rule for a layer's own
    ``param_groups`` and ``einstruct.param_groups``."""
    return weight_decay if param.dim() >= 2 else 0.0


def autocast_state(x: torch.Tensor) -> tuple:
    """x's device type with its autocast state (enabled, dtype), as torch.amp.custom_fwd
    records it."""
    device = x.device.type
    if not torch.amp.is_autocast_available(device):
        return device, False, None
    return device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)


def autocast_context(state: tuple) -> Any:
    """The forward's autocast state, to re-enter in the backward (custom_bwd's rule)."""
    device, enabled, dtype = state
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=dtype, enabled=enabled)


# what torch's own autograd.Function.apply uses; absent (an older or newer torch): the
# helpers below take the plain, always-correct path
_transforms_active = getattr(torch._C, "_are_functorch_transforms_active", None)
try:
    from torch._functorch.utils import unwrap_dead_wrappers as _unwrap_dead_wrappers
except ImportError:
    _transforms_active = None


def _plain_tensors_only() -> bool:
    """Whether nothing but eager tensors can flow here: no torch.func transform (vmap,
    grad) active, not compiling, not tracing."""
    return (
        _transforms_active is not None
        and not _transforms_active()
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
    )


def apply_function(function: Any, *args: Any) -> Any:
    """``function.apply(*args)`` for a Function whose forward takes every argument
    positionally, without defaults (the planned-steps Functions).

    ``apply`` binds the arguments with ``inspect.signature`` on every call of a
    Function that defines ``setup_context`` (which vmap support needs), 30-45 us
    that changes nothing here: outside torch.func, torch.compile and tracing this
    runs what ``apply`` then runs, without the binding.
    """
    if not _plain_tensors_only():
        return function.apply(*args)
    args = _unwrap_dead_wrappers(args)
    return super(torch.autograd.Function, function).apply(*args)


def _eager(tensor: torch.Tensor) -> bool:
    return (
        type(tensor) in (torch.Tensor, nn.Parameter) and tensor.layout == torch.strided
    )


def matmul_into(
    left: torch.Tensor, right: torch.Tensor, shape: tuple, axes: tuple
) -> torch.Tensor:
    """``torch.bmm(left, right)`` (``torch.mm`` for matrices), written (``out=``) into a
    new tensor of ``shape`` (-1: the tokens) whose dims, permuted by ``axes`` and merged,
    are the product's ``(batch, M, N)``: the product, laid out in memory in the order
    the planner chose (so that a permute after it is a view, or a copy after it reads
    contiguous blocks).

    Where ``out=`` is not allowed (autograd recording the product, torch.func
    transforms such as vmap, torch.compile, tracing, tensor subclasses) it is the plain
    product: the same values, in the product's own order; also for a column-major
    ``left``, whose strided write measured up to 1.3x slower than the plain product and
    its copy (CPU, MKL; a row-major ``left`` 0.76-0.93x), and off the CPU, until a GPU
    has timed it. Under autocast the operands are cast as autocast casts them.

        >>> a, b = torch.randn(4, 3, 5), torch.randn(4, 5, 2)
        >>> y = matmul_into(a, b, (3, 4, 2), (1, 0, 2))  # memory [m, b, n]
        >>> torch.equal(y, torch.bmm(a, b)), y.permute(1, 0, 2).is_contiguous()
        (True, True)
    """
    product = torch.bmm if left.dim() == 3 else torch.mm
    device = left.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        low = torch.get_autocast_dtype(device)
        left, right = [
            t.to(low) if t.is_floating_point() and t.dtype != torch.float64 else t
            for t in (left, right)
        ]
    recorded = torch.is_grad_enabled() and (left.requires_grad or right.requires_grad)
    if (
        recorded
        or left.device.type != "cpu"
        or left.stride(-1) != 1
        or left.dtype != right.dtype
        or not (_eager(left) and _eager(right))
        or not _plain_tensors_only()
    ):
        return product(left, right)
    matrix = (*left.shape[:-1], right.shape[-1])
    known = _product([s for s in shape if s != -1])
    full = [_product(list(matrix)) // known if s == -1 else s for s in shape]
    out = torch.empty(full, dtype=left.dtype, device=left.device).permute(axes)
    return product(left, right, out=out.view(matrix))


def planned_setup(ctx: Any, inputs: tuple, output: tuple) -> None:
    """setup_context of a layer's planned-steps Function, whose forward is
    ``(x, *factors, save_intermediate) -> (y, *operands)`` (operands only when saved).

    Saves the input and the factors, the steps' matmul operands when asked (views of
    the input and factors where no copy was needed, so the input costs nothing more
    in the planned layouts), and the autocast state. Gradients of the extra outputs
    are never materialized: the backward gets None for them (no zero-filled
    buffers).
    """
    x, *factors, save_intermediate = inputs
    ctx.save_intermediate = save_intermediate
    ctx.amp = autocast_state(x)
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)
    kept = output[1:] if save_intermediate else ()
    ctx.save_for_backward(x, *factors, *kept)
    ctx.arguments = 1 + len(factors)


def planned_backward(ctx: Any, g_out: Any, steps: Any, grads: Any) -> tuple:
    """The backward of a planned-steps Function under the forward's autocast state:
    ``grads(g_out, operands, needs)`` on the saved operands, or on ``steps`` run
    again from the saved input and factors; all None when the output got no
    gradient.

    A backward that is itself differentiated (``create_graph=True``, torch.func's
    nested transforms: grad mode is on) always runs the steps again, so its result
    has a graph back to the input and the factors (the saved operands are outputs
    without one). Example, a gradient penalty::

        >>> (g,) = torch.autograd.grad(layer(x).sum(), x, create_graph=True)
        >>> g.pow(2).sum().backward()  # reaches the factors through the steps
    """
    needs = ctx.needs_input_grad
    if g_out is None:
        return (None,) * len(needs)
    saved = ctx.saved_tensors
    arguments = saved[: ctx.arguments]
    with autocast_context(ctx.amp):
        if ctx.save_intermediate and not torch.is_grad_enabled():
            operands = saved[ctx.arguments :]
        else:
            _, operands = steps(*arguments)
        return (*grads(g_out, operands, needs), None)


def _wide(tensor: torch.Tensor) -> torch.dtype:
    """The tensor's dtype, at least float32."""
    return torch.promote_types(tensor.dtype, torch.float32)


def _exact(tensor: torch.Tensor) -> torch.dtype:
    """float64 where the tensor's device has it (for sums of squares that overflow)."""
    return _wide(tensor) if tensor.device.type == "mps" else torch.float64


def _product(values: list) -> int:
    """The product of ``values`` (a loop torch.compile traces, unlike math.prod over a
    generator)."""
    out = 1
    for v in values:
        out *= v
    return out


#: The key of a state dict's metadata (``state_dict()._metadata[prefix]``) that holds each
#: factor's stored axes.
AXES_KEY = "einstruct_factor_axes"


def _relaid(state: dict, prefix: str, saved: Any, axes: dict) -> str:
    """Permute the factors in ``state`` (a layer's part of a state dict) from their stored
    axes as the metadata ``saved`` gives them into ``axes``; what is wrong with ``saved``
    otherwise ("" when nothing is)."""
    names = list(axes)
    if not isinstance(saved, dict) or sorted(saved) != sorted(names):
        return (
            f"{prefix or 'the layer'}: the state dict was saved from a layer with factors "
            f"{sorted(saved)[:8] if isinstance(saved, dict) else saved!r:.80}, this one has "
            f"{names}: load weights of the same structure"
        )
    for name in names:
        order = saved[name]
        if not isinstance(order, list | tuple) or sorted(order) != sorted(axes[name]):
            return (
                f"{prefix}{name}: the state dict stores it with axes {order!r:.80}, not an "
                f"order of this layer's {list(axes[name])}: load weights of the same structure"
            )
        tensor = state.get(prefix + name)
        moved = list(order) != list(axes[name])
        if moved and isinstance(tensor, torch.Tensor) and tensor.dim() == len(order):
            permutation = [list(order).index(a) for a in axes[name]]
            state[prefix + name] = tensor.permute(permutation).contiguous()
    return ""


def _check_flag(layer: str, name: str, value: Any) -> None:
    """Refuse a constructor flag that is not a bool (the string "false" is truthy)."""
    if not isinstance(value, bool):
        raise TypeError(
            f"{layer}: {name} must be True or False, got {type(value).__name__} {value!r:.40}"
        )


def _padded_target(
    weight: Any, shape: tuple, padded: tuple, like: torch.Tensor
) -> torch.Tensor:
    """W checked, in at least float32 on the factors' device, zero-padded to the axes'
    product."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"from_dense needs a tensor W, got {type(weight).__name__}")
    if weight.is_meta:
        raise ValueError("from_dense needs W's values: it is on the meta device")
    if not weight.is_floating_point():
        raise TypeError(
            f"from_dense needs a real floating-point W, got dtype {weight.dtype}"
        )
    if tuple(weight.shape) != shape:
        got = tuple(weight.shape)
        raise ValueError(
            f"from_dense needs W of shape {shape} (out_features, in_features), got {got}"
        )
    target = weight.detach().to(device=like.device, dtype=_wide(like))
    if not bool(torch.isfinite(target).all()):
        raise ValueError("from_dense: W has NaN or infinite entries")
    rows, columns = padded[0] - shape[0], padded[1] - shape[1]
    return torch.nn.functional.pad(target, (0, columns, 0, rows))


def _check_extras(layer: "StructuredLinear", bias: Any, max_iter: Any) -> None:
    """from_dense's bias (None or a finite real tensor of shape (out_features,)) and
    max_iter."""
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(
            f"from_dense: max_iter must be a positive integer, got {max_iter!r:.40}"
        )
    if bias is None:
        return
    if not isinstance(bias, torch.Tensor) or not bias.is_floating_point():
        kind = (
            type(bias).__name__
            if not isinstance(bias, torch.Tensor)
            else f"dtype {bias.dtype}"
        )
        raise TypeError(
            f"from_dense: bias must be a real floating-point tensor or None, got {kind}"
        )
    if layer.bias is None:
        raise ValueError("from_dense got a bias; this layer has bias=False")
    if tuple(bias.shape) != (layer.out_features,):
        shape = tuple(bias.shape)
        raise ValueError(
            f"from_dense: bias must have shape ({layer.out_features},), got {shape}"
        )
    if not bool(torch.isfinite(bias).all()):
        raise ValueError("from_dense: bias has NaN or infinite entries")


def _relative_error(weight: torch.Tensor, approx: torch.Tensor) -> float:
    """||W - approx|| / ||W|| (Frobenius); the absolute error when W = 0 (in float64
    where the device has it: squares of float32 entries past 1e19 overflow)."""
    wide = _wide(approx) if approx.device.type == "mps" else torch.float64
    weight = weight.detach().to(device=approx.device, dtype=wide)
    diff = float((weight - approx.detach().to(wide)).norm())
    scale = float(weight.norm())
    return diff / scale if scale > 0 else diff


def _assign(layer: "StructuredLinear", factors: Any, bias: Any) -> None:
    """Store projected factors (None: the current ones), W unchanged, each at
    rms = init_std * t, with :func:`_revive`'s noise where they are dead.

    One common t (the geometric mean of rms / init_std) keeps the product, so the
    factors look like a rescaled init (what the learning rates assume) and, when
    t <= 1, a normalized layer computes them as they are; when t > 1 the gains
    (if any) absorb the normalization's division, else the factors are stored at
    t = 1, the most the normalization lets through (W scaled down). The gains are
    taken from the factors as stored, noise included, and without gains the noise
    takes only the room the normalization leaves (:func:`_within_reach`), so a
    normalized layer computes the same W as an unnormalized one.
    """
    names = tuple(layer.factor_axes)
    params = [getattr(layer, name) for name in names]
    with torch.no_grad():
        if factors is None:
            factors = [p.detach().to(_wide(p)) for p in params]
        factors = [f.reshape(p.shape) for f, p in zip(factors, params)]
        rms = [float(f.to(_exact(f)).pow(2).mean().sqrt()) for f in factors]
        sigma = [float(layer.init_std[name]) for name in names]
        if min(rms) > 0:
            t = 1.0
            for r, s in zip(rms, sigma):
                t *= r / s
            t **= 1.0 / len(rms)
            if layer.normalize and layer.gain is None:
                t = min(t, 1.0)  # beyond the normalization's reach: store at its cap
            factors = [f * (s * t / r) for f, r, s in zip(factors, rms, sigma)]
        revived = _revive(layer, factors)
        if layer.normalize and layer.gain is None:
            revived = [
                _within_reach(f, g, s) for f, g, s in zip(factors, revived, sigma)
            ]
        for p, f in zip(params, revived):
            p.copy_(f)
        if layer.gain is not None:
            for k, (p, s) in enumerate(zip(params, sigma)):
                rms_eps = (p.to(_wide(p)).pow(2).mean() + 1e-8).sqrt()  # as normalized
                layer.gain[k] = torch.clamp(rms_eps / s, min=1.0)
        if bias is not None:
            layer.bias.copy_(bias.detach().reshape(layer.bias.shape))


def _within_reach(
    factor: torch.Tensor, revived: torch.Tensor, sigma: float
) -> torch.Tensor:
    """``revived`` (``factor`` with noise where it is zero) with the noise scaled down,
    where needed, so that the factor's rms stays at most ``sigma``: what a normalized
    layer without gains computes as it is (at least 1e-3 sigma of noise is kept, a
    relative change of W below 1e-6, so training still has its way in)."""
    noise = revived - factor
    wide = _exact(factor)
    noise_ms = float(noise.to(wide).pow(2).mean())
    if noise_ms == 0.0:
        return revived
    # the normalization's rms carries an epsilon of 1e-8 (see normalized)
    mean_square = float(factor.to(wide).pow(2).mean()) + 1e-8
    room = max(sigma**2 - mean_square, (1e-3 * sigma) ** 2)
    if noise_ms <= room:
        return revived
    return factor + noise * (room / noise_ms) ** 0.5


def _revive(layer: "StructuredLinear", factors: list) -> list:
    """``factors`` (the layer's, in its stored shapes) with a way in for training where
    a projection left parts of them at zero, W unchanged: where every factor holding an
    index the input and output do not hold is zero at one of its values (a rank
    component of a rank-deficient W), and where several factors are zero whole (W = 0),
    all but one of them (the last applied if it is one) get their init's noise there.
    With every holder zero, no gradient could ever reach them; with one left zero, each
    term of W through them stays 0."""
    axes, sizes = layer.factor_axes, layer.index_sizes
    by_name = dict(zip(axes, factors))
    outer = set(layer.input_axes) | set(layer.output_axes)
    for index in sizes:
        holders = [f for f in axes if index in axes[f]]
        if index in outer or len(holders) < 2:
            continue
        dead = None
        for f in holders:
            p = by_name[f]
            dim = axes[f].index(index)
            others = [d for d in range(p.dim()) if d != dim]
            zero = p.abs().amax(dim=others) == 0 if others else p == 0
            dead = zero if dead is None else dead & zero
        if dead is None or not bool(dead.any()):
            continue
        kept = layer.last_factor if layer.last_factor in holders else holders[-1]
        for f in holders:
            if f != kept:
                p = by_name[f]
                shape = [1] * p.dim()
                shape[axes[f].index(index)] = -1
                noise = torch.randn_like(p) * layer.init_std[f]
                by_name[f] = torch.where(dead.reshape(shape), noise, p)
    zero = [f for f in axes if not bool(by_name[f].any())]
    if len(zero) > 1:
        kept = layer.last_factor if layer.last_factor in zero else zero[-1]
        for f in zero:
            if f != kept:
                by_name[f] = torch.randn_like(by_name[f]) * layer.init_std[f]
    return list(by_name.values())


def _fitted(layer: "StructuredLinear", mask: Any) -> torch.Tensor:
    """W as the fit sees it: dense_weight, on the entries ``mask`` keeps (all if None)."""
    weight = layer.dense_weight()
    return weight if mask is None else weight * mask


def _least_squares(
    layer: "StructuredLinear",
    param: torch.Tensor,
    target: torch.Tensor,
    steps: int,
    mask: Any = None,
) -> None:
    """Fit one factor exactly, the others fixed (W is linear in it): CGLS, conjugate
    gradients on the normal equations, with dense_weight (on the entries ``mask``
    keeps) as the operator and its gradient as the adjoint."""

    def adjoint(residual: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            return torch.autograd.grad(layer.dense_weight(), param, residual)[0]

    with torch.no_grad():
        x = param.detach().clone()
        r = target - _fitted(layer, mask)
        s = adjoint(r)
        p = s.clone()
        gamma = float(s.pow(2).sum())
        stop = (
            gamma * 1e-12
        )  # the normal equations' residual down 1e6: warm starts do the rest
        for _ in range(steps):
            if gamma <= stop or gamma == 0.0:
                break
            param.copy_(p)
            q = _fitted(layer, mask)
            qq = float(q.pow(2).sum())
            if qq == 0.0:
                break
            alpha = gamma / qq
            x += alpha * p
            r -= alpha * q
            s = adjoint(r)
            new = float(s.pow(2).sum())
            p = s + (new / gamma) * p
            gamma = new
        param.copy_(x)


def _fit(
    layer: "StructuredLinear", target: torch.Tensor, max_iter: int, mask: Any = None
) -> None:
    """Alternating least squares on the factors, unnormalized, in the target's
    precision: each sweep fits every factor exactly in turn; it stops when the error
    stops falling. ``mask``: fit only the entries it keeps (W's own in a padded
    target; the target is zero elsewhere)."""
    names = tuple(layer.factor_axes)
    params = [getattr(layer, name) for name in names]
    kept = [p.dtype for p in params]
    normalize, layer.normalize = layer.normalize, False
    try:
        with torch.no_grad():
            for p, name in zip(params, names):
                p.data = p.data.to(target.dtype)
                # a zero factor (zero_init_last) would stall the others
                if not bool(p.any()):
                    p.normal_(0.0, layer.init_std[name])
        scale = float(target.norm()) or 1.0
        best = float("inf")
        for _ in range(max_iter):
            for p in params:
                _least_squares(layer, p, target, min(16, p.numel()), mask)
            with torch.no_grad():
                error = float((_fitted(layer, mask) - target).norm()) / scale
            if error < 1e-13 or error > best * (1.0 - 1e-4):
                break
            best = error
    finally:
        layer.normalize = normalize
        for p, dtype in zip(params, kept):
            p.data = p.data.to(dtype)


def _refine(
    layer: "StructuredLinear",
    factors: Any,
    target: torch.Tensor,
    shape: tuple,
    max_iter: int,
) -> None:
    """The closed form's ``factors`` of the padded ``target`` (which fits the padding's
    zeros too), then alternating least squares on W's own entries (``shape``): the
    error on them only falls."""
    with torch.no_grad():
        for name, f in zip(layer.factor_axes, factors):
            getattr(layer, name).copy_(f.reshape(getattr(layer, name).shape))
    mask = torch.zeros_like(target)
    mask[: shape[0], : shape[1]] = 1.0
    _fit(layer, target, max_iter, mask)


def _can_import(module: str) -> bool:
    """Whether ``module`` can be imported here (a standalone file may run without einstruct)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _learns(module: nn.Module) -> bool:
    """Whether any parameter of ``module`` (or its children) requires grad: what
    ``any(p.requires_grad for p in module.parameters())`` says, without its generators."""
    for p in module._parameters.values():
        if p is not None and p.requires_grad:
            return True
    return any(m is not None and _learns(m) for m in module._modules.values())


class StructuredLinear(nn.Module):
    """A structured linear layer: y = x W^T + b, W an einsum of learned factors.

    Args:
        bias: learn an additive bias.
        device, dtype: where and how to allocate the factors.
        normalize: divide each factor by max(1, rms / init_std) in the forward.
        zero_init_last: start the last factor (``last_factor``) at zero.
        gain: learn a scalar gain per factor that multiplies the normalized factor
            (the papers' learnable gamma; needs normalize=True). Starts at 1.
        strategy: "structured" runs the planned steps; "dense" materializes W
            from the factors once per call and runs one dense matmul (gradients
            still reach the factors); "measured" times both on the first call for
            each device, dtype and token-count bucket and takes the faster
            (``path_choice`` says which and why; the choice is kept in memory and
            in the user's cache directory; needs einstruct installed). Default:
            the planner's choice, ``default_strategy`` (why: ``strategy_note``).
        save_intermediate: keep the steps' operands for the backward; False keeps
            only the input and recomputes the forward in the backward.
    """

    # What a generated class states about its structure (einstruct computes them).
    #: The structure's name and the sha256 (16 hex digits) of its resolved source.
    structure_name: ClassVar[str] = ""
    spec_hash: ClassVar[str] = ""
    #: The layer's widths (an nn.Linear's names); the axes' products may be larger.
    in_features: int = 0
    out_features: int = 0
    #: Learned entries of the factors (and router), before bias and gains.
    param_count: ClassVar[int] = 0
    #: The largest intermediate of the planned forward, in entries per token.
    peak_intermediate: ClassVar[int] = 0
    #: Exact numbers from the analysis along the planned order, as text: params,
    #: flops (per token at the compiled batch), omega, psi, nu where defined.
    layer_metrics: ClassVar[dict[str, str]] = {}
    #: The token count the contraction order was planned for, and the sha256 (16 hex
    #: digits) of the planned steps' code (a measured choice is kept per plan).
    planned_batch: ClassVar[int] = 0
    plan_hash: ClassVar[str] = ""
    #: The strategies this layer can run, the planner's choice and why.
    strategies: ClassVar[tuple[str, ...]] = ("structured", "dense", "measured")
    default_strategy: ClassVar[str] = "structured"
    strategy_note: ClassVar[str] = ""
    #: The cost model's forward + backward estimates (ms) at the planned batch: the
    #: prior of strategy="measured".
    strategy_estimate_ms: ClassVar[dict[str, float]] = {}
    #: How ``from_dense`` projects: "exact", "refined" (the closed form, then a fit to
    #: W's own entries: padding the closed form cannot leave out), "iterative" or
    #: "none", and a sentence.
    projection: ClassVar[str] = "none"
    projection_note: ClassVar[str] = ""
    #: Axes of the input and output features, each factor's stored axes, the sizes.
    input_axes: ClassVar[tuple[str, ...]] = ()
    output_axes: ClassVar[tuple[str, ...]] = ()
    factor_axes: ClassVar[dict[str, tuple[str, ...]]] = {}
    index_sizes: ClassVar[dict[str, int]] = {}
    #: Structured muP: each factor's init std and learning-rate multiplier.
    init_std: ClassVar[dict[str, float]] = {}
    lr_mult: ClassVar[dict[str, float]] = {}
    #: The factor applied last (zero_init_last zeroes it).
    last_factor: ClassVar[str] = ""
    #: The planned steps as an autograd Function: apply(x, *factors, save_intermediate).
    planned_function: ClassVar[Any] = None
    #: The constructor's options a manifest records and restores.
    constructor_options: ClassVar[tuple[str, ...]] = (
        "normalize",
        "zero_init_last",
        "gain",
        "strategy",
        "save_intermediate",
    )

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
    ) -> None:
        super().__init__()
        name = type(self).__name__
        flags = {
            "bias": bias,
            "normalize": normalize,
            "zero_init_last": zero_init_last,
            "gain": gain,
            "save_intermediate": save_intermediate,
        }
        for flag, value in flags.items():
            _check_flag(name, flag, value)
        if strategy is not None and strategy not in self.strategies:
            choices = " or ".join(repr(s) for s in self.strategies)
            raise ValueError(
                f"{name}: strategy must be {choices}, got {strategy!r:.40}"
            )
        if strategy == "measured" and not _can_import("einstruct.nn.measured"):
            raise ValueError(
                f"{name}: strategy='measured' times the paths with einstruct.nn.measured, "
                "which this standalone file does not carry: pip install einstruct, or "
                "choose strategy='structured' or 'dense'"
            )
        if dtype is not None and not (
            isinstance(dtype, torch.dtype) and dtype.is_floating_point
        ):
            raise TypeError(
                f"{name}: dtype must be a floating torch.dtype or None, got {dtype!r:.40}"
            )
        if device is not None:
            try:
                torch.device(device)
            except (TypeError, RuntimeError, ValueError) as error:
                raise TypeError(
                    f"{name}: device {device!r:.40} is not a torch device"
                ) from error
        limit = max_params()
        widest = max(self.padded_in, self.padded_out, self.peak_intermediate)
        if widest > limit:
            raise LimitError(
                f"{name} moves {widest:,} entries per token (its padded widths and largest "
                f"intermediate), more than EINSTRUCT_MAX_PARAMS = {limit:,}; set that variable "
                "to allow it",
                "EINSTRUCT_MAX_PARAMS",
            )
        if self.param_count > limit:
            raise LimitError(
                f"{name} has {self.param_count:,} parameters, more than "
                f"EINSTRUCT_MAX_PARAMS = {limit:,}; set that variable to allow it",
                "EINSTRUCT_MAX_PARAMS",
            )
        if gain and not normalize:
            raise ValueError(f"{name}: gain=True needs normalize=True")
        self.normalize = normalize
        self.zero_init_last = zero_init_last
        self.strategy = strategy or self.default_strategy
        self.save_intermediate = save_intermediate
        if self.strategy == "dense":
            self._check_dense_size()
        #: The last measured choice (strategy="measured"), else None; the PathChooser
        #: that measures (None: einstruct.nn.measured's process-wide one).
        self.path_choice: Any = None
        self.path_chooser: Any = None
        factory = {"device": device, "dtype": dtype}
        for factor, axes in self.factor_axes.items():
            shape = tuple(self.index_sizes[i] for i in axes)
            setattr(self, factor, nn.Parameter(torch.empty(shape, **factory)))
        self._make_modules(factory)
        if gain:
            self.gain = nn.Parameter(torch.ones(len(self.factor_axes), **factory))
        else:
            self.register_parameter("gain", None)
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    @property
    def padded_in(self) -> int:
        """The input axes' product (in_features, zero-padded up to it)."""
        return _product([self.index_sizes[i] for i in self.input_axes])

    @property
    def padded_out(self) -> int:
        """The output axes' product (outputs past out_features are dropped)."""
        return _product([self.index_sizes[i] for i in self.output_axes])

    def _make_modules(self, factory: dict) -> None:
        """Add the submodules a kind of layer needs besides its factors (routed: the router)."""

    def _check_dense_size(self) -> None:
        entries = self.padded_in * self.padded_out
        limit = max_params()
        if entries > limit:
            raise LimitError(
                f"{type(self).__name__}: W has {entries:,} entries, more than "
                f"EINSTRUCT_MAX_PARAMS = {limit:,}; use strategy='structured' or set "
                "that variable",
                "EINSTRUCT_MAX_PARAMS",
            )

    def reset_parameters(self) -> None:
        """Structured muP init: N(0, init_std^2) per factor, bias zero."""
        with torch.no_grad():
            for factor in self.factor_axes:
                nn.init.normal_(getattr(self, factor), 0.0, self.init_std[factor])
            if self.zero_init_last:
                nn.init.zeros_(getattr(self, self.last_factor))
            if self.gain is not None:
                nn.init.ones_(self.gain)
            if self.bias is not None:
                nn.init.zeros_(self.bias)
            self._reset_modules()

    def _reset_modules(self) -> None:
        """Initialize what _make_modules added."""

    def _factors(self) -> tuple:
        factors = tuple([getattr(self, factor) for factor in self.factor_axes])
        if not self.normalize:
            return factors
        factors = tuple(
            [
                normalized(w, self.init_std[factor])
                for factor, w in zip(self.factor_axes, factors)
            ]
        )
        if self.gain is None:
            return factors
        return tuple([g * w for g, w in zip(self.gain, factors)])

    def _run(self, x: torch.Tensor, factors: tuple) -> torch.Tensor:
        """The planned steps: (tokens, padded_in) -> (tokens, padded_out)."""
        return apply_function(
            self.planned_function, x, *factors, self.save_intermediate
        )[0]

    def _structured(self, x: torch.Tensor) -> torch.Tensor:
        """(tokens, in_features) -> (tokens, out_features), without bias."""
        factors = self._factors()
        pad = self.padded_in - self.in_features
        if pad:
            x = torch.nn.functional.pad(x, (0, pad))  # pad to the axes' product
        y = self._run(x, factors)
        if self.padded_out != self.out_features:
            y = y[:, : self.out_features]  # drop the padded outputs
        return y

    def _check(self, x: torch.Tensor) -> None:
        """Refuse, before computing, an input of the wrong width or (outside autocast)
        dtype."""
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"{name} takes a torch.Tensor input, got {type(x).__name__}; convert it "
                "with torch.as_tensor(...)"
            )
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{name} expects inputs whose last dimension is in_features = "
                f"{self.in_features}, got shape {tuple(x.shape)}"
            )
        held = getattr(self, next(iter(self.factor_axes))).dtype
        if x.dtype != held and (not autocast_state(x)[1] or not x.is_floating_point()):
            raise TypeError(
                f"{name} holds its factors in {held}, got an input in {x.dtype}; convert "
                "one to the other (x.to(...) or layer.to(...)) or run under torch.autocast"
            )

    def _measured_strategy(self, x: torch.Tensor) -> str:
        """The strategy measured fastest for x's device, dtype, token count, training or
        inference and autocast: timed on the first call for that key (the cost model's
        estimates as the prior where they hold: training at the planned batch's bucket),
        then remembered on the layer, so a later call costs a dict lookup. While tracing
        or compiling nothing is timed: the choice measured for this device, dtype and
        autocast if every token bucket and grad mode agreed on it, else the default."""
        grad = torch.is_grad_enabled() and (x.requires_grad or _learns(self))
        _, autocasts, amp_dtype = autocast_state(x)
        amp = amp_dtype if autocasts else None
        # the options the forward reads: changing one after a measurement measures again
        options = (
            int(self.save_intermediate),
            int(self.normalize),
            int(self.gain is not None),
            self._path_backend(x),
        )
        mode = (x.device, x.dtype, grad, amp, options)
        choices = self.__dict__.setdefault("_measured_choices", {})
        if (
            torch.jit.is_tracing()
            or torch.compiler.is_compiling()
            or inside_transform()
        ):
            # nothing to time here (a transform or checkpointing refuses a run of its own),
            # and one choice for every grad mode: jit.trace checks its graph under no_grad
            same = (x.device, x.dtype, amp, options)
            agreed = {
                c.winner for k, c in choices.items() if (k[0], k[1], k[3], k[4]) == same
            }
            return agreed.pop() if len(agreed) == 1 else self.default_strategy
        rows = x.numel() // self.in_features if self.in_features else 0
        key = (*mode, torch.get_num_threads(), (max(rows, 1) - 1).bit_length())
        known = choices.get(key)
        if known is None:
            known = self._measure_strategy(x, grad, amp, rows, options)
            # an untimed fallback (a tensor subclass, fake tensors) is asked again
            if known.source != "fallback":
                choices[key] = known
        if self.path_choice is not known:  # a plain attribute: no Module.__setattr__
            self.__dict__["path_choice"] = known
        return str(known.winner)

    def _path_backend(self, x: torch.Tensor) -> str:
        """What runs the structured path for ``x``, part of a measurement's key: the
        planned torch steps (a fused layer: its kernels, where this call runs them)."""
        return "torch"

    def __getstate__(self) -> dict:
        """Copies and pickles leave out what was measured: it holds for this machine
        (a loaded layer measures again where it runs)."""
        state = super().__getstate__()
        state["_measured_choices"] = {}
        state["path_choice"] = None
        return state

    def _measure_strategy(
        self, x: torch.Tensor, grad: bool, amp: Any, rows: int, options: tuple
    ) -> Any:
        """The measured choice for this call's key (the chooser's memory, its cache
        file, else timed now)."""
        try:
            from einstruct.nn.measured import (
                default_chooser,
                structure_key,
                token_bucket,
            )
        except ImportError as error:
            raise RuntimeError(
                "strategy='measured' times the paths with einstruct.nn.measured: "
                "pip install einstruct, or choose strategy='structured' or 'dense'"
            ) from error
        paths: dict[str, Any] = {"structured": self._structured}
        if self.padded_in * self.padded_out <= max_params():
            paths["dense"] = lambda a: torch.nn.functional.linear(a, self.to_dense())
        # what changes the candidates' code or cost besides the hardware: the spec,
        # the planned steps (their hash; the batch in a file older than the hash), the
        # options the forward reads, and the default path (always timed)
        plan = getattr(self, "plan_hash", "") or f"b{self.planned_batch}"
        save, norm, gain, backend = options  # backend: what runs the structured path
        code = f"{self.spec_hash}.{plan}.s{save}n{norm}g{gain}.{self.default_strategy}"
        key = structure_key(code, backend) + (f"/amp-{amp}" if amp is not None else "")
        # the prior is the model's forward + backward at the planned batch: it rules
        # paths out only where it holds
        holds = grad and token_bucket(rows) == token_bucket(self.planned_batch)
        chooser = self.__dict__.get("path_chooser") or default_chooser()
        return chooser.choose(
            key,
            paths,
            (x.reshape(-1, self.in_features),),
            wrt=tuple(p for p in self.parameters() if p.requires_grad),
            prior=self.strategy_estimate_ms if holds else None,
            fallback=self.default_strategy,
            # Triton's interpreter: timings that hold for no real run stay in memory
            persist=not backend.endswith("-interpreted"),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing():  # a traced graph keeps no Python checks
            self._check(x)
        strategy = self.strategy
        if strategy == "measured":
            strategy = self._measured_strategy(x)
        if strategy == "dense":
            return torch.nn.functional.linear(x, self.to_dense(), self.bias)
        lead = x.shape[:-1]
        y = self._structured(x.reshape(-1, self.in_features))
        y = y.reshape(*lead, self.out_features)
        if self.bias is not None:
            # under autocast y is in autocast's dtype: add the bias there, as F.linear does
            y = y + self._bias().to(y.dtype)
        return y

    def _bias(self) -> torch.Tensor:
        """The bias as the forward adds it (a routed layer: a DTensor's whole tensor)."""
        return self.bias

    def dense_weight(self) -> torch.Tensor:
        """W (padded_out, padded_in) from the factors; differentiable."""
        raise NotImplementedError(f"{type(self).__name__} has no dense weight")

    def to_dense(self) -> torch.Tensor:
        """The (out_features, in_features) matrix W with forward(x) = x W^T + bias."""
        self._check_dense_size()
        return self.dense_weight()[: self.out_features, : self.in_features]

    @property
    def weight(self) -> torch.Tensor:
        """W (out_features, in_features), computed from the factors on each access
        (detached, read-only: a copy, so changing it changes nothing). It costs a dense
        matrix's memory and the FLOPs of ``to_dense()``: for tools that read an
        nn.Linear's weight (inspection, export), not for a training loop."""
        with torch.no_grad():
            return self.to_dense().detach()

    def _project(self, target: torch.Tensor, max_iter: int) -> Any:
        """The factors closest to the padded target W (None: fitted in place)."""
        raise NotImplementedError

    def from_dense(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        max_iter: int = 100,
    ) -> float:
        """Set the factors to the best approximation of W (out_features, in_features),
        in place (how: ``projection_note``).

        A padded layer projects W zero-padded to its axes. The factors are stored
        at their init's relative scales (see _assign); with normalize=True a W
        beyond the normalized factors' reach is scaled down unless gain=True.
        `bias`, if given, is copied into the bias; `max_iter` bounds the sweeps
        of an iterative fit.

        Returns the relative error ||W - to_dense()|| / ||W|| (Frobenius).
        """
        _check_extras(self, bias, max_iter)
        first = getattr(self, next(iter(self.factor_axes)))
        if type(first).__name__ == "DTensor":  # sharded by a tensor-parallel style
            raise ValueError(
                f"from_dense: {type(self).__name__} is sharded over ranks (tensor "
                "parallelism); project W before parallelize_module"
            )
        shape = (self.out_features, self.in_features)
        target = _padded_target(weight, shape, (self.padded_out, self.padded_in), first)
        kept = [p.detach().clone() for p in self.parameters()]  # put back on failure
        try:
            factors = None
            if self.projection == "iterative":
                _fit(self, target, max_iter)
            else:
                with torch.no_grad():
                    factors = self._project(target, max_iter)
                if self.projection == "refined":
                    _refine(self, factors, target, shape, max_iter)
                    factors = None
            with torch.no_grad():
                _assign(self, factors, bias)
                error = _relative_error(weight, self.to_dense())
            if not float("-inf") < error < float("inf") or not all(  # NaN too
                bool(torch.isfinite(p).all()) for p in self.parameters()
            ):
                raise ValueError(
                    f"from_dense: W's entries (largest |w| = {float(weight.abs().max()):.3g}) "
                    f"are too large to project in {first.dtype}; scale W down (and the "
                    "layer's output back up), or use a wider dtype"
                )
        except BaseException:
            with torch.no_grad():
                for p, old in zip(self.parameters(), kept):
                    p.copy_(old)
            raise
        return error

    def lr_multipliers(self) -> dict:
        """Parameter name -> learning-rate multiplier against a dense layer's lr."""
        out: dict[str, float] = dict(self.lr_mult)
        if self.gain is not None:
            out["gain"] = 1.0
        if self.bias is not None:
            out["bias"] = 1.0
        return out

    def param_groups(self, lr: float, weight_decay: float = 0.0) -> list:
        """Optimizer groups with the structure-aware learning rates; weight decay on
        matrices only (as ``einstruct.param_groups``)."""
        for what, value in (("lr", lr), ("weight_decay", weight_decay)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(
                    f"param_groups: {what} must be a number, got "
                    f"{type(value).__name__} {value!r:.40}"
                )
            if not value >= 0 or value == float("inf"):
                raise ValueError(
                    f"param_groups: {what} must be finite and at least 0, got {value!r}"
                )
        return [
            {
                "params": [self.get_parameter(name)],
                "lr": lr * mult,
                "weight_decay": decayed(self.get_parameter(name), weight_decay),
            }
            for name, mult in self.lr_multipliers().items()
        ]

    def __prepare_scriptable__(self) -> Any:
        raise RuntimeError(
            f"{type(self).__name__} cannot be compiled by TorchScript (torch.jit.script): "
            "its forward runs a custom autograd Function; use torch.compile, torch.export "
            "or torch.jit.trace instead"
        )

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """The state dict, whose metadata (kept by ``torch.save``) also records each
        factor's stored axes: loading it into a layer of the same structure that stores
        them in another order (planned for another batch) permutes them."""
        out = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        metadata = getattr(out, "_metadata", None)
        own = metadata.get(prefix[:-1]) if isinstance(metadata, dict) else None
        if isinstance(own, dict):
            own[AXES_KEY] = {f: list(a) for f, a in self.factor_axes.items()}
        return out

    def _load_from_state_dict(
        self,
        state_dict: Any,
        prefix: str,
        local_metadata: Any,
        strict: bool,
        missing_keys: list,
        unexpected_keys: list,
        error_msgs: list,
    ) -> None:
        saved = (
            local_metadata.get(AXES_KEY) if isinstance(local_metadata, dict) else None
        )
        if saved is not None:
            problem = _relaid(state_dict, prefix, saved, self.factor_axes)
            if problem:
                error_msgs.append(problem)
                return
        super()._load_from_state_dict(
            state_dict,
            prefix,
            local_metadata,
            strict,
            missing_keys,
            unexpected_keys,
            error_msgs,
        )

    def extra_repr(self) -> str:
        numbers = "".join(f", {k}={v}" for k, v in self.layer_metrics.items())
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}{numbers}"
        )
