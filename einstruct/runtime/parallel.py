"""Tensor parallelism for generated layers: column- and row-parallel styles read from the layer's axes.

    from torch.distributed.tensor.parallel import parallelize_module
    mesh = init_device_mesh("cpu", (world,))
    parallelize_module(model, mesh, {"0": einstruct.parallel.ColwiseStructured(),
                                     "2": einstruct.parallel.RowwiseStructured()})
    parallelize_module(hf_model, mesh, einstruct.parallel.tensor_parallel_plan(hf_model))

A generated layer computes ``y[out axes] = x[in axes] * factors`` (class
attributes ``input_axes``, ``output_axes``, ``factor_axes``, ``index_sizes``;
features are those axes flattened, the first one outermost). Sharding one axis
on every tensor that has it keeps the einsum exact:

- **column** (:class:`ColwiseStructured`): the first output axis. Each rank
  holds the factors' slices along it (factors without it whole) and computes
  its block of output features from the whole input: no communication
  forward; backward, the input's gradient is summed over the ranks (one
  all-reduce), as for ``nn.Linear``'s ``ColwiseParallel``;
- **row** (:class:`RowwiseStructured`): the first input axis. Each rank takes
  its block of input features and sums over its slice: the output is summed
  over the ranks (one all-reduce forward).

Factors that lack the sharded axis are replicated; their gradients are partial
sums, summed by DTensor when the optimizer reads them. The layer's forward is
replaced by one ``torch.einsum`` over the local slices (the same contraction).
A layer whose axes pad its widths, a sharded axis the mesh size does not
divide, a routed layer or ``normalize=True`` (a norm over the whole factor) is
refused with what to change. :mod:`einstruct.analysis.sharding` reports the
same choices and collectives without torch (``einstruct analyze``).
"""

from __future__ import annotations

import fnmatch
import functools
import math
import string
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DeviceMesh, DTensor, Partial, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel

from ..errors import ParameterError
from .groups import is_structured

__all__ = [
    "ColwiseStructured",
    "RowwiseStructured",
    "clip_grad_norm_",
    "shard_axis",
    "shard_experts",
    "tensor_parallel_plan",
]


def _name(layer: Any) -> str:
    return type(layer).__name__


def shard_axis(layer: Any, kind: str, ways: int) -> str:
    """The axis a ``kind`` (``"column"`` or ``"row"``) style shards ``ways`` ways, after every check.

    >>> shard_axis(einstruct.compile("structure b = btt(rank = 2, d = 16)")(), "column", 2)  # doctest: +SKIP
    'f'
    """
    if kind not in ("column", "row"):
        raise ParameterError(f"kind must be 'column' or 'row', got {kind!r:.40}", hint="e.g. kind='column'")
    if isinstance(ways, bool) or not isinstance(ways, int) or ways < 1:
        raise ParameterError(
            f"ways must be a positive integer (the ranks to shard over), got {ways!r:.40}",
            hint="e.g. ways=mesh.size()",
        )
    if not is_structured(layer):
        raise ParameterError(f"{_name(layer)} is not an einstruct layer", hint="use torch's styles for it")
    sizes = dict(layer.index_sizes)
    padded = math.prod(sizes[a] for a in layer.input_axes), math.prod(sizes[a] for a in layer.output_axes)
    if padded != (layer.in_features, layer.out_features):
        raise ParameterError(
            f"{_name(layer)} pads {layer.in_features} -> {layer.out_features} to its axes' "
            f"{padded[0]} -> {padded[1]}: ranks would split padding unevenly",
            hint="choose widths that its axes split exactly (e.g. powers of two)",
        )
    if getattr(layer, "normalize", False):
        raise ParameterError(
            f"{_name(layer)} has normalize=True, a norm over each whole factor",
            hint="shard layers built with normalize=False",
        )
    extra = {n for n, _ in layer.named_parameters(recurse=True)} - set(layer.factor_axes) - {"bias", "gain"}
    if extra:
        raise ParameterError(
            f"{_name(layer)} holds {', '.join(sorted(extra))} besides its factors (a routed layer?)",
            hint="tensor-parallel styles shard plain structured layers; shard experts instead",
        )
    axes = layer.output_axes if kind == "column" else layer.input_axes
    axis = axes[0]
    other = layer.output_axes if kind == "row" else layer.input_axes
    if axis in other:
        column_ok = layer.output_axes[0] not in layer.input_axes
        raise ParameterError(
            f"{_name(layer)}'s first {'input' if kind == 'row' else 'output'} axis '{axis}' is also an "
            f"{'output' if kind == 'row' else 'input'} axis",
            hint="shard it column-wise"
            if kind == "row" and column_ok
            else "a block index the input and output share: neither style shards this layer; "
            "leave it out of the plan (it stays whole on every rank)",
        )
    if sizes[axis] % ways:
        raise ParameterError(
            f"{_name(layer)}'s {kind} axis '{axis}' has {sizes[axis]} entries, not divisible by {ways} ranks",
            hint=f"use a mesh size that divides {sizes[axis]}, or other widths",
        )
    return axis


def _equation(layer: Any) -> str:
    """``torch.einsum``'s equation for the layer: batch, input axes, factors -> batch, output axes."""
    letters = dict(zip(layer.index_sizes, string.ascii_letters, strict=False))
    batch = string.ascii_letters[len(letters)]

    def term(axes: Any) -> str:
        return "".join(letters[a] for a in axes)

    inputs = [batch + term(layer.input_axes), *(term(a) for a in layer.factor_axes.values())]
    return ",".join(inputs) + "->" + batch + term(layer.output_axes)


def _local_factors(layer: Any) -> list[Any]:
    """Each factor's local tensor; a replicated factor's gradient is a partial sum over the ranks."""
    out = []
    for name in layer.factor_axes:
        p = layer.get_parameter(name)
        if isinstance(p, DTensor):
            sharded = any(isinstance(pl, Shard) for pl in p.placements)
            p = p.to_local() if sharded else p.to_local(grad_placements=[Partial()])
        out.append(p)
    return out


def _replicated_input(x: Any, mesh: DeviceMesh) -> Any:
    """The whole input; its gradient is summed over the ranks (each holds a part of it)."""
    if isinstance(x, DTensor):
        x = x.redistribute(mesh, [Replicate()])
    else:
        x = DTensor.from_local(x, mesh, [Replicate()], run_check=False)
    return x.to_local(grad_placements=[Partial()])


def _einsum(layer: Any, x: Any, in_axes_local: list[int], hint: str = "") -> Any:
    if x.dim() == 0 or x.shape[-1] != math.prod(in_axes_local):
        raise ValueError(
            f"{_name(layer)} (sharded) expects inputs whose last dimension is {math.prod(in_axes_local)} "
            f"on this rank, got shape {tuple(x.shape)}{hint}"
        )
    held = layer.get_parameter(next(iter(layer.factor_axes))).dtype  # as the unsharded layer's check
    if x.dtype != held and (not torch.is_autocast_enabled(x.device.type) or not x.is_floating_point()):
        raise TypeError(
            f"{_name(layer)} holds its factors in {held}, got an input in {x.dtype}; convert "
            "one to the other (x.to(...) or layer.to(...)) or run under torch.autocast"
        )
    lead = x.shape[:-1]
    y = torch.einsum(_equation(layer), x.reshape(-1, *in_axes_local), *_local_factors(layer))
    return y.reshape(*lead, -1)


def _column_forward(layer: Any, mesh: DeviceMesh, local_output: bool, x: Any) -> Any:
    sizes = layer.index_sizes
    y = _einsum(layer, _replicated_input(x, mesh), [sizes[a] for a in layer.input_axes])
    if layer.bias is not None:
        y = y + layer.bias.to_local().to(y.dtype)
    return y if local_output else DTensor.from_local(y, mesh, [Shard(-1)], run_check=False)


def _row_forward(layer: Any, mesh: DeviceMesh, ways: int, input_sharded: bool, x: Any) -> Any:
    sizes = dict(layer.index_sizes)
    axis = layer.input_axes[0]
    sizes[axis] //= ways
    if isinstance(x, DTensor):
        x = x.redistribute(mesh, [Shard(-1)]).to_local()
    elif not input_sharded:
        block = layer.in_features // ways
        rank = mesh.get_local_rank()
        x = _replicated_input(x, mesh)[..., rank * block : (rank + 1) * block]
    whole = " (the whole input? construct RowwiseStructured(input_sharded=False))" if input_sharded else ""
    partial = _einsum(layer, x, [sizes[a] for a in layer.input_axes], whole)
    summed = DTensor.from_local(partial, mesh, [Partial()], run_check=False).redistribute(mesh, [Replicate()])
    y = summed.to_local()
    if layer.bias is not None:
        y = y + layer.bias.to_local().to(y.dtype)
    return y


def _distribute(layer: Any, mesh: DeviceMesh, axis: str, shard_bias: bool) -> None:
    """Every parameter as a DTensor: factors with ``axis`` sharded along it, the rest replicated."""
    for name, axes in layer.factor_axes.items():
        p = layer.get_parameter(name)
        place = [Shard(axes.index(axis))] if axis in axes else [Replicate()]
        layer.register_parameter(name, nn.Parameter(distribute_tensor(p.data, mesh, place), p.requires_grad))
    if layer.bias is not None:
        place = [Shard(0)] if shard_bias else [Replicate()]
        p = layer.bias
        layer.register_parameter(
            "bias", nn.Parameter(distribute_tensor(p.data, mesh, place), p.requires_grad)
        )


def _ways(mesh: DeviceMesh) -> int:
    if mesh.ndim != 1:
        raise ParameterError(
            f"a structured tensor-parallel style takes a 1-D mesh, got {mesh.ndim}-D",
            hint="pass the tensor-parallel sub-mesh, e.g. mesh['tp']",
        )
    return int(mesh.size())


class ColwiseStructured(ParallelStyle):
    """Shard a generated layer's first output axis: each rank computes a block of output features.

    Args:
        use_local_output: return the local block as a plain tensor (default, as
            torch's ``ColwiseParallel``), else a DTensor sharded on the last dim.
    """

    def __init__(self, *, use_local_output: bool = True) -> None:
        super().__init__()
        self.use_local_output = use_local_output

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        ways = _ways(device_mesh)
        axis = shard_axis(module, "column", ways)
        _distribute(module, device_mesh, axis, shard_bias=True)
        module.forward = functools.partial(_column_forward, module, device_mesh, self.use_local_output)
        return module


class RowwiseStructured(ParallelStyle):
    """Shard a generated layer's first input axis: each rank sums its block of input features.

    Args:
        input_sharded: the input arrives as each rank's block of features (the
            output of a :class:`ColwiseStructured` layer; default), else whole.
    """

    def __init__(self, *, input_sharded: bool = True) -> None:
        super().__init__()
        self.input_sharded = input_sharded

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        ways = _ways(device_mesh)
        axis = shard_axis(module, "row", ways)
        _distribute(module, device_mesh, axis, shard_bias=False)
        module.forward = functools.partial(_row_forward, module, device_mesh, ways, self.input_sharded)
        return module


_STYLES: dict[str, tuple[type[ParallelStyle], type[ParallelStyle]]] = {
    "colwise": (ColwiseStructured, ColwiseParallel),
    "rowwise": (RowwiseStructured, RowwiseParallel),
}


def _transformers_kinds() -> set[str]:
    """The kinds of transformers' tensor-parallel plans (a config's ``base_model_tp_plan``
    passed as is): einstruct leaves the layers of those it does not shard whole."""
    try:
        from transformers.integrations.tensor_parallel import ALL_PARALLEL_STYLES
    except ImportError:
        return set()
    try:
        return {k for k in ALL_PARALLEL_STYLES.keys() if isinstance(k, str)}  # noqa: SIM118
    except Exception:  # noqa: BLE001 - transformers' own registry, any shape
        return set()


def _check_plan(plan: Any) -> None:
    """A plan the caller wrote: a dict of globs to "colwise" or "rowwise", nothing else."""
    if not isinstance(plan, dict):
        raise ParameterError(
            f"plan must be a dict of layer-name globs to 'colwise' or 'rowwise', got {type(plan).__name__}",
            hint="e.g. plan={'*.mlp.c_fc': 'colwise', '*.mlp.c_proj': 'rowwise'}",
        )
    known = _transformers_kinds()
    for pattern, kind in plan.items():
        if not isinstance(pattern, str) or not isinstance(kind, str) or kind not in set(_STYLES) | known:
            raise ParameterError(
                f"plan entry {pattern!r:.80}: {kind!r:.40} is not a kind einstruct shards",
                hint=f"use one of {', '.join(repr(k) for k in _STYLES)} (shard_axis's 'column' is "
                "'colwise', 'row' is 'rowwise'); transformers' other kinds are left whole",
            )


def tensor_parallel_plan(model: nn.Module, plan: dict[str, str] | None = None) -> dict[str, ParallelStyle]:
    """A ``parallelize_module`` plan for a converted model: structured layers get these styles.

    Args:
        model: the model (a Hugging Face model or any ``nn.Module``).
        plan: glob on qualified layer names -> ``"colwise"`` or ``"rowwise"``; default:
            the Hugging Face config's ``base_model_tp_plan`` under ``base_model_prefix``
            (its other kinds, e.g. ``"embedding"``, are left out: those layers stay whole).

    Returns:
        qualified name -> style, for every matched layer: a structured one gets
        :class:`ColwiseStructured` / :class:`RowwiseStructured`, an ``nn.Linear``
        torch's ``ColwiseParallel`` / ``RowwiseParallel``.
    """
    if plan is None:
        config = getattr(model, "config", None)
        base = getattr(config, "base_model_tp_plan", None)
        if not base:
            raise ParameterError(
                f"{type(model).__name__} has no tensor-parallel plan in its config",
                hint="pass plan={'*.mlp.c_fc': 'colwise', '*.mlp.c_proj': 'rowwise'}",
            )
        prefix = getattr(model, "base_model_prefix", "")
        plan = {(f"{prefix}.{k}" if prefix and hasattr(model, prefix) else k): v for k, v in base.items()}
    else:
        _check_plan(plan)
    styles: dict[str, ParallelStyle] = {}
    kinds: dict[str, tuple[str, str]] = {}
    for pattern, kind in plan.items():
        matched = [(n, m) for n, m in model.named_modules() if n and fnmatch.fnmatchcase(n, pattern)]
        if kind not in _STYLES:
            continue  # the config's kinds einstruct does not shard (embedding, ...): left whole
        for name, _ in matched:
            earlier = kinds.setdefault(name, (pattern, kind))
            if earlier[1] != kind:
                raise ParameterError(
                    f"plan entries '{earlier[0][:80]}' ({earlier[1]}) and '{pattern[:80]}' ({kind}) "
                    f"both match '{name[:80]}'",
                    hint="give each layer one kind: make the globs disjoint",
                )
        if not matched:
            raise ParameterError(f"plan entry '{pattern}' matches no layer", hint="check the qualified names")
        structured_style, linear_style = _STYLES[kind]
        for name, module in matched:
            if is_structured(module):
                styles[name] = structured_style()
            elif isinstance(module, nn.Linear):
                styles[name] = linear_style()
            else:
                raise ParameterError(
                    f"plan entry '{pattern}' matches '{name}', a {type(module).__name__}",
                    hint="plan entries name structured layers or nn.Linear",
                )
    return styles


def _routed_layers(model: nn.Module) -> list[tuple[str, Any]]:
    return [
        (n, m)
        for n, m in model.named_modules()
        if is_structured(m) and bool(getattr(m, "routed_index", None))
    ]


def shard_experts(model: nn.Module, group: Any = None) -> list[str]:
    """Expert parallelism: shard every routed (BTT-MoE) layer of ``model`` over ``group``.

    Rank ``r`` of the group keeps experts ``r * E / world`` to ``(r + 1) * E / world - 1``:
    each factor that has the routed axis becomes a DTensor ``Shard``-ed on that axis
    over a 1-D mesh of the group (rank 0's values are scattered), and the layer's
    ``expert_group`` is set, so its forward sends each (token, expert) row and gate to
    the rank holding the expert by all-to-all, runs it there and sends the output
    back (autograd goes back through both exchanges). The router, bias and factors
    without the routed axis stay ordinary (replicated) parameters.

    Each rank feeds its own tokens. An expert's gradient then sums every rank's
    tokens' contributions: the gradient of the sum of the ranks' losses. Reduce the
    other parameters' gradients as a sum too (or, under DDP, which averages them,
    leave the expert parameters out of DDP and divide their gradients by the world
    size). Returns the qualified names of the sharded parameters.

    Refused, before anything changes: no routed layer, a layer whose expert count
    the group size does not divide, ``normalize=True`` (a norm over each whole
    factor), a layer already sharded.
    """
    import torch.distributed as dist

    if not isinstance(model, nn.Module):
        raise ParameterError(f"shard_experts takes an nn.Module, got {type(model).__name__}")
    if not dist.is_initialized():
        raise ParameterError(
            "shard_experts needs torch.distributed", hint="call dist.init_process_group first"
        )
    if group is not None and not isinstance(group, dist.ProcessGroup):
        raise ParameterError(
            f"group must be a torch.distributed process group or None (the world), got "
            f"{type(group).__name__}",
            hint="e.g. group=dist.new_group([0, 1]), or mesh.get_group() of a 1-D DeviceMesh",
        )
    group = dist.group.WORLD if group is None else group
    world = dist.get_world_size(group)
    layers = _routed_layers(model)
    if not layers:
        raise ParameterError(
            f"{type(model).__name__} has no routed layer", hint="experts live in routed layers"
        )
    for name, layer in layers:
        where = name or _name(layer)
        if layer.experts % world:
            raise ParameterError(
                f"{where} has {layer.experts} experts, not divisible by {world} ranks",
                hint=f"use a group whose size divides {layer.experts}",
            )
        if layer.normalize:
            raise ParameterError(f"{where} has normalize=True, a norm over each whole factor",
                                 hint="shard layers built with normalize=False")  # fmt: skip
        if layer.expert_group is not None or any(isinstance(p, DTensor) for p in layer.parameters()):
            raise ParameterError(f"{where} is sharded already", hint="shard a model once")
    sharded = []
    for name, layer in layers:
        first = layer.get_parameter(next(iter(layer.factor_axes)))
        mesh = DeviceMesh.from_group(group, first.device.type)
        for factor, (dim, _, _) in zip(layer.factor_axes, layer.expert_slicing, strict=True):
            if dim is None:
                continue
            p = layer.get_parameter(factor)
            local = nn.Parameter(distribute_tensor(p.data, mesh, [Shard(dim)]), p.requires_grad)
            layer.register_parameter(factor, local)
            sharded.append(f"{name}.{factor}" if name else factor)
        layer.expert_group = group
    return sharded


def clip_grad_norm_(model: nn.Module, max_norm: float, eps: float = 1e-6) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` (2-norm) for a model whose gradients mix DTensors
    and plain tensors, as every expert-parallel (:func:`shard_experts`) or
    tensor-parallel model's do (torch's own refuses to mix them).

    The norm is the one-process model's: a gradient sharded over a mesh adds its
    shards' squares summed over the mesh's ranks, a replicated one (a plain tensor, or
    a replicated DTensor: every rank holds all of it) its own once, a partial one (a
    sum over the ranks) the square of that sum. Call it on every rank, after the
    gradients are reduced as :func:`shard_experts` says; each gradient is then scaled
    by ``max_norm / (norm + eps)`` where that is below 1. Returns the norm.

        loss.backward(); reduce(model)
        einstruct.parallel.clip_grad_norm_(model, 1.0); optimizer.step()
    """
    import torch.distributed as dist

    if isinstance(max_norm, bool) or not isinstance(max_norm, int | float) or not max_norm > 0:
        raise ParameterError(f"max_norm must be a positive number, got {max_norm!r:.40}", hint="e.g. 1.0")
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    total = torch.zeros((), dtype=torch.float64)
    for g in grads:
        if not isinstance(g, DTensor):
            total += g.detach().double().square().sum().cpu()
            continue
        if g.device_mesh.ndim != 1:
            raise ParameterError(
                "clip_grad_norm_ takes gradients on 1-D meshes", hint="clip each mesh dimension's model part"
            )
        placement = g.placements[0]
        local = g.redistribute(g.device_mesh, [Replicate()]) if isinstance(placement, Partial) else g
        squares = local.to_local().detach().double().square().sum()
        if isinstance(placement, Shard):  # each rank holds a part: the parts' squares, summed
            dist.all_reduce(squares, group=g.device_mesh.get_group())
        total += squares.cpu()
    norm = total.sqrt()
    scale = float(max_norm) / (float(norm) + eps)
    if scale < 1:
        with torch.no_grad():
            for g in grads:
                g.mul_(scale)
    return norm.to(torch.float32)
