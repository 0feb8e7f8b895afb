"""The base class of routed (BTT-MoE) layers and their sparse path.

A router scores the experts (the entries of the routed index) per token; each
token goes through its top-k experts. The sparse path (:class:`SparseExperts`)
sorts the (token, expert) slots by expert; every expert gathers its block of
input rows, scales each by its gate, runs the one-expert steps on them and adds
its output into its tokens' rows. The generated class supplies the one-expert
steps, operands and backward (static methods) and how to slice each factor;
everything else is here. That path reads the experts' token counts on the host;
:func:`static_experts` does not (tiles of sorted slots, every shape known from
the token count: the default on CUDA, and traceable by torch.compile). Under
tracing, compiling, export and torch.func the layer otherwise takes the masked
path (every expert computed, then gated: the plan's own steps), whose shapes do
not depend on the router. With ``expert_group`` set, each rank holds its share
of the experts and tokens travel to them and back by all-to-all.
"""

import sys
from typing import Any, ClassVar

import torch
from torch import nn

# in a standalone file these names are defined by layer.py's text above
if "StructuredLinear" not in globals():
    from .layer import StructuredLinear, autocast_context, autocast_state

__all__ = [
    "AttachLoss",
    "RoutedStructuredLinear",
    "SparseExperts",
    "exchange_rows",
    "static_experts",
    "static_shapes",
]

#: How the sparse path dispatches tokens to experts (the expert_dispatch option).
DISPATCHES = ("auto", "counts", "static")

#: Arguments of SparseExperts.apply before the factors: x, weights, chosen, layer class, save.
_LEADING = 5


def static_shapes() -> bool:
    """Whether shapes must not depend on the data: under torch.jit.trace,
    torch.compile, torch.export or a torch.func transform (vmap, grad, jacrev)."""
    return (
        torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or torch._C._functorch.maybe_current_level() is not None
    )


def _width(layer: Any) -> int:
    """The output axes' product of a layer class."""
    width = 1
    for i in layer.output_axes:
        width *= layer.index_sizes[i]
    return width


def _expert_count(layer: Any, factors: tuple) -> int:
    """How many experts the factors hold (under expert parallelism: this rank's)."""
    for w, (dim, _, _) in zip(factors, layer.expert_slicing):
        if dim is not None:
            return int(w.shape[dim])
    return int(layer.experts)


def _is_dtensor(value: Any) -> bool:
    """Whether value is a DTensor (without importing torch.distributed.tensor when
    nothing has made one)."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(value, module.DTensor)


def _local(value: Any) -> Any:
    """A DTensor parameter as the whole tensor on this rank, its gradient this rank's
    contribution, summed over the ranks into the parameter's placement (a sharded
    one gets its shard of the sum); anything else as it is."""
    if not _is_dtensor(value):
        return value
    from torch.distributed.tensor import Partial, Replicate

    mesh = value.device_mesh
    whole = value.redistribute(mesh, [Replicate()] * mesh.ndim)
    return whole.to_local(grad_placements=[Partial()] * mesh.ndim)


def _expert_slice(w: torch.Tensor, e: int, how: tuple) -> torch.Tensor:
    """Expert e's slice of factor w, in the one-expert plan's layout."""
    dim, perm, _ = how
    part = w if dim is None else w.narrow(dim, e, 1)
    return part if perm is None else part.permute(perm)


def _add_slice_grad(grad: torch.Tensor, part: torch.Tensor, e: int, how: tuple) -> None:
    """Put expert e's slice gradient into the factor's: its own slice is written once,
    a factor every expert shares sums their gradients."""
    dim, _, back = how
    part = part if back is None else part.permute(back)
    if dim is None:
        grad.add_(part)
    else:
        grad.narrow(dim, e, 1).copy_(part)


class AttachLoss(torch.autograd.Function):
    """``y`` unchanged, with ``weight * loss`` joined to its graph: the backward sends
    ``weight`` as the loss's gradient whenever ``y`` gets one. So the loss trains what
    it depends on (the router) without the caller adding it, also where the forward
    is recomputed (reentrant activation checkpointing), as Megatron's aux-loss scaler
    does."""

    @staticmethod
    def forward(ctx, y, loss, weight):  # type: ignore[no-untyped-def]
        ctx.weight = weight
        ctx.save_for_backward(loss)
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g):  # type: ignore[no-untyped-def]
        (loss,) = ctx.saved_tensors
        return g, torch.full_like(loss, ctx.weight), None


class _Summed(torch.autograd.Function):
    """The sum of a tensor over the ranks of a process group; the backward sums the
    gradients the same way (every rank's loss reads the sum)."""

    @staticmethod
    def forward(ctx, value, group):  # type: ignore[no-untyped-def]
        ctx.group = group
        out = value.clone()
        torch.distributed.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, g):  # type: ignore[no-untyped-def]
        out = g.clone()
        torch.distributed.all_reduce(out, group=ctx.group)
        return out, None


def _token_means(sums: torch.Tensor, tokens: torch.Tensor, group: Any) -> torch.Tensor:
    """``sums`` (per-token values summed over this rank's tokens; ``tokens``: their
    count, shape (1,), a tensor so traces follow it) as means over every token of
    ``group``'s ranks (differentiable; a rank without tokens adds nothing),
    or over this rank's tokens without a group; 0 where there are no tokens at all."""
    both = torch.cat([sums, tokens])
    if group is not None:
        both = _Summed.apply(both, group)
    return both[:-1] / both[-1].clamp(min=1)


class SparseExperts(torch.autograd.Function):
    """Each token through its top-k experts only, with a planned backward.

    ``chosen`` is (tokens, k) expert indices into the factors' routed axis (its
    size is the number of experts: this rank's under expert parallelism). Saves
    the input, the gates, the slot order and the experts' intermediates (with
    ``save_intermediate=False`` it recomputes those in the backward); the
    backward runs under the forward's autocast state.
    """

    @staticmethod
    def forward(x, weights, chosen, layer, save_intermediate, *factors):  # type: ignore[no-untyped-def]
        slots = chosen.reshape(-1)
        order = slots.argsort(stable=True)
        experts = _expert_count(layer, factors)
        counts = tuple(torch.bincount(slots, minlength=experts).tolist())
        tokens = order.div(chosen.shape[-1], rounding_mode="floor")
        ws = weights.reshape(-1, 1).index_select(0, order)
        y = None
        kept = []
        start = 0
        for e, count in enumerate(counts):
            if count == 0:
                continue
            rows = slice(start, start + count)
            start += count
            # this expert's rows, each scaled by its gate (one block per expert: no
            # temporary of all tokens * k rows)
            xg = x.index_select(0, tokens[rows]).mul_(ws[rows])
            mine = [
                _expert_slice(w, e, how)
                for w, how in zip(factors, layer.expert_slicing)
            ]
            part, inner = layer.expert_steps(xg, *mine)
            if y is None:
                y = part.new_zeros(x.shape[0], _width(layer))
            y.index_add_(0, tokens[rows], part)
            if save_intermediate:
                kept.extend(inner)
        if y is None:
            y = x.new_zeros(x.shape[0], _width(layer))
        return (y, counts, order, *kept)

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def]
        x, weights, chosen, layer, save_intermediate, *factors = inputs
        _, ctx.counts, order, *kept = output
        ctx.layer = layer
        ctx.top_k = chosen.shape[-1]
        ctx.save_intermediate = save_intermediate
        ctx.amp = autocast_state(x)
        ctx.mark_non_differentiable(order, *kept)
        ctx.save_for_backward(x, weights, order, *factors, *kept)

    @staticmethod
    def backward(ctx, g_y, *_):  # type: ignore[no-untyped-def]
        layer = ctx.layer
        count_factors = len(layer.factor_axes)
        x, weights, order, *rest = ctx.saved_tensors
        factors, kept = rest[:count_factors], rest[count_factors:]
        flags = ctx.needs_input_grad
        needs = (flags[0] or flags[1], *flags[_LEADING:])
        with autocast_context(ctx.amp):
            tokens = order.div(ctx.top_k, rounding_mode="floor")
            ws = weights.reshape(-1, 1).index_select(0, order)
            g_x = None
            g_ws = torch.zeros_like(ws) if flags[1] else None
            grads = [
                torch.zeros_like(w) if need else None
                for w, need in zip(factors, needs[1:])
            ]
            inner = iter(kept)
            # a differentiated backward (grad mode on) runs the steps again: the
            # kept intermediates are outputs with no graph to x and the factors
            keep = ctx.save_intermediate and not torch.is_grad_enabled()
            start = 0
            for e, count in enumerate(ctx.counts):
                if count == 0:
                    continue
                rows = slice(start, start + count)
                start += count
                mine = [
                    _expert_slice(w, e, how)
                    for w, how in zip(factors, layer.expert_slicing)
                ]
                xs = x.index_select(0, tokens[rows])
                xg = xs * ws[rows]
                if keep:
                    saved = [next(inner) for _ in range(layer.expert_intermediates)]
                else:
                    _, saved = layer.expert_steps(xg, *mine)
                operands = layer.expert_operands(xg, *saved, *mine)
                g_part, *parts = layer.expert_grads(
                    g_y.index_select(0, tokens[rows]), operands, needs
                )
                if g_ws is not None:
                    g_ws[rows] = (g_part * xs).sum(1, keepdim=True)
                if flags[0]:
                    if g_x is None:
                        g_x = g_part.new_zeros(x.shape)
                    g_x.index_add_(0, tokens[rows], g_part * ws[rows])
                for grad, part, how in zip(grads, parts, layer.expert_slicing):
                    if grad is not None and part is not None:
                        _add_slice_grad(grad, part, e, how)
            if flags[0] and g_x is None:
                g_x = torch.zeros_like(x)
            g_w = None
            if g_ws is not None:  # back from slot order to (tokens, k)
                g_w = g_ws.index_copy(0, order, g_ws).view_as(weights)
        return (g_x, g_w, None, None, None, *grads)


def _tile(slots: int, experts: int) -> int:
    """Rows per tile of the static dispatch: the mean expert load, 1 to 128."""
    return max(1, min(128, -(-slots // max(experts, 1))))


def static_experts(
    x: torch.Tensor,
    weights: torch.Tensor,
    chosen: torch.Tensor,
    layer: Any,
    factors: Any,
) -> torch.Tensor:
    """Each token through its top-k experts, with no host synchronization: every
    shape follows from the token count, none from the router.

    The (token, expert) slots sorted by expert fill tiles of T rows (T = the mean
    expert load, at most 128), each expert's run padded with zero rows to whole
    tiles; there are ceil((slots + E (T - 1)) / T) tiles whatever the routing, so
    at most E (T - 1) rows are padding (at most the slots themselves). Every tile
    runs the one-expert steps with its expert's factor slices (``torch.func.vmap``
    over the tiles) and autograd differentiates it: the sparse path's numbers, as
    traceable ops (``torch.compile(fullgraph=True)``).
    """
    experts = _expert_count(layer, factors)
    slots = chosen.reshape(-1)
    total = slots.shape[0]
    tile = _tile(total, experts)
    tiles = max(1, -(-(total + experts * (tile - 1)) // tile))
    order = slots.argsort(stable=True)
    tokens = order.div(chosen.shape[-1], rounding_mode="floor")
    expert = slots.index_select(0, order)
    counts = slots.new_zeros(experts).index_add_(0, slots, torch.ones_like(slots))
    padded = counts.add(tile - 1).div(tile, rounding_mode="floor").mul(tile)
    ends = padded.cumsum(0)
    first = (counts.cumsum(0) - counts).index_select(0, expert)
    where = (ends - padded).index_select(0, expert)
    where = where + torch.arange(total, device=slots.device) - first
    # tile t runs the expert whose padded run holds its first row (spare tiles: the last)
    starts = torch.arange(tiles, device=slots.device) * tile
    owner = torch.searchsorted(ends, starts, right=True).clamp(max=experts - 1)
    rows = x.index_select(0, tokens) * weights.reshape(-1, 1).index_select(0, order)
    rows = rows.new_zeros(tiles * tile, x.shape[1]).index_copy(0, where, rows)
    parts: list[Any] = []
    dims: list[int | None] = []
    for w, (dim, _, _) in zip(factors, layer.expert_slicing):
        if dim is None:  # shared by every expert
            parts.append(w)
            dims.append(None)
        else:  # each tile's expert slice, the tiles first
            parts.append(w.index_select(dim, owner).movedim(dim, 0).unsqueeze(dim + 1))
            dims.append(0)

    def one(block: torch.Tensor, *slices: torch.Tensor) -> torch.Tensor:
        mine = [
            s if how[1] is None else s.permute(how[1])
            for s, how in zip(slices, layer.expert_slicing)
        ]
        return layer.expert_steps(block, *mine)[0]

    out = torch.func.vmap(one, in_dims=(0, *dims))(rows.view(tiles, tile, -1), *parts)
    out = out.reshape(tiles * tile, -1).index_select(0, where)
    return out.new_zeros(x.shape[0], out.shape[1]).index_add(0, tokens, out)


class _Exchange(torch.autograd.Function):
    """All-to-all of rows over a process group (``send[r]`` rows to rank r, ``recv[r]``
    from it); the backward sends the gradients back the same way."""

    @staticmethod
    def forward(ctx, rows, send, recv, group):  # type: ignore[no-untyped-def]
        ctx.sizes = (send, recv, group)
        out = rows.new_empty(sum(recv), *rows.shape[1:])
        torch.distributed.all_to_all_single(
            out, rows.contiguous(), recv, send, group=group
        )
        return out

    @staticmethod
    def backward(ctx, g):  # type: ignore[no-untyped-def]
        send, recv, group = ctx.sizes
        back = g.new_empty(sum(send), *g.shape[1:])
        torch.distributed.all_to_all_single(
            back, g.contiguous(), send, recv, group=group
        )
        return back, None, None, None


def exchange_rows(rows: torch.Tensor, send: list, recv: list, group: Any = None) -> Any:
    """All-to-all of ``rows`` over ``group``: ``send[r]`` rows (in order) to rank r,
    ``recv[r]`` rows from it, differentiable (the gradients go back the same way)."""
    return _Exchange.apply(rows, send, recv, group)


def _exchanged_experts(
    layer: Any,
    x: torch.Tensor,
    weights: torch.Tensor,
    chosen: torch.Tensor,
    factors: Any,
) -> torch.Tensor:
    """Expert parallelism: each (token, expert) slot's row and gate go to the rank of
    ``layer.expert_group`` holding that expert (rank r holds experts r * E / world
    to (r + 1) * E / world - 1, the factors' local slices), which runs them through
    its experts (:class:`SparseExperts`); the outputs come back and are summed into
    their tokens' rows. Four all-to-alls (counts, rows, gates, outputs), all
    differentiable but the counts; one host read of the counts."""
    group = layer.expert_group
    world = torch.distributed.get_world_size(group)
    local = _expert_count(layer, factors)
    slots = chosen.reshape(-1)
    order = slots.argsort(stable=True)  # by expert, so by rank
    tokens = order.div(chosen.shape[-1], rounding_mode="floor")
    counts = torch.bincount(slots, minlength=local * world)
    arrived = torch.empty_like(counts)  # [source rank, my expert]: rows coming here
    torch.distributed.all_to_all_single(arrived, counts, group=group)
    sizes = torch.stack(
        [counts.view(world, local).sum(1), arrived.view(world, local).sum(1)]
    )
    send, recv = sizes.tolist()
    rows = x.index_select(0, tokens)
    gates = weights.reshape(-1, 1).index_select(0, order)
    rows = _Exchange.apply(rows, send, recv, group)
    gates = _Exchange.apply(gates, send, recv, group)
    mine = torch.arange(local, device=x.device).repeat(world)
    mine = mine.repeat_interleave(arrived, output_size=sum(recv)).unsqueeze(1)
    keep = layer.save_intermediate
    out = SparseExperts.apply(rows, gates, mine, type(layer), keep, *factors)[0]
    back = _Exchange.apply(out, recv, send, group)
    return back.new_zeros(x.shape[0], back.shape[1]).index_add(0, tokens, back)


class RoutedStructuredLinear(StructuredLinear):
    """A routed structured layer (BTT-MoE): y = sum over each token's top-k experts of
    gate * expert(x) + b. There is no single dense matrix (the gate is per token).

    Args (besides StructuredLinear's; strategy can only be "structured"):
        aux_weight: None (default) leaves ``aux_loss`` for the caller to add to the
            loss; a number joins ``aux_weight * aux_loss`` to the output's graph
            (its gradient reaches the router whenever the output's does, under
            reentrant checkpointing too) and keeps ``aux_loss`` for logging,
            detached: do not add it again.
        balance_group: a torch.distributed process group: the aux loss (balance
            and z-loss) uses the router statistics over every token of its ranks
            (the global batch, however many tokens each rank holds; a rank
            without tokens adds none), not this rank's tokens alone. Not a
            constructor option a manifest saves: set the attribute after
            construction.
        expert_group: a torch.distributed process group over which the experts
            are sharded (set by ``einstruct.parallel.shard_experts``, which also
            makes the factors DTensors sharded on the routed axis): each rank
            holds E / world experts, and each token's rows go by all-to-all to
            the ranks holding its experts and back. Not a constructor option.
        sparse_experts: compute only each token's top-k experts (each expert on its
            tokens); False computes every expert and masks, as the paper's code does.
        expert_dispatch: how the sparse path finds each expert's tokens: "counts"
            reads the experts' token counts on the host (one synchronization per
            layer) and runs each expert on exactly its rows; "static" never reads
            them (tiles of sorted rows, at most E * (T - 1) of them padding, T the
            mean load up to 128: shapes from the token count alone, so also under
            torch.compile(fullgraph=True)); "auto" (default): "static" on CUDA,
            "counts" elsewhere. Under torch.jit.trace, torch.export, torch.func
            transforms and (except with "static") torch.compile the layer masks:
            the same numbers, with shapes that do not depend on the router.

    DTensor parameters (e.g. replicated by ``distribute_module``, or as FSDP2
    stores them between steps) are used whole: each rank gathers them and its
    gradient is summed over the ranks into the parameter's placement, as data
    parallelism (each rank its own tokens) needs.
    """

    strategies: ClassVar[tuple[str, ...]] = ("structured",)
    constructor_options: ClassVar[tuple[str, ...]] = (
        *StructuredLinear.constructor_options,
        "sparse_experts",
        "aux_weight",
        "expert_dispatch",
    )
    #: The values of expert_dispatch.
    expert_dispatches: ClassVar[tuple[str, ...]] = DISPATCHES
    #: The routed index's size and how many experts each token takes.
    experts: ClassVar[int] = 0
    top_k: ClassVar[int] = 0
    routed_index: ClassVar[str] = ""
    #: The masked path: steps(x, gate, *factors) -> (output, operands).
    gated_steps: ClassVar[Any] = None
    #: One expert: steps(x, *slices) -> (output, intermediates), operands(x,
    #: *intermediates, *slices), grads(g, operands, needs) -> (g_x, *g_slices).
    expert_steps: ClassVar[Any] = None
    expert_operands: ClassVar[Any] = None
    expert_grads: ClassVar[Any] = None
    expert_intermediates: ClassVar[int] = 0
    #: Per factor: (the routed index's axis or None, permute to the expert's layout
    #: or None, the permute back or None).
    expert_slicing: ClassVar[tuple] = ()

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
        sparse_experts: bool = True,
        aux_weight: float | None = None,
        expert_dispatch: str = "auto",
    ) -> None:
        if strategy is not None and strategy != "structured":
            raise ValueError(
                f"{type(self).__name__}: a routed layer runs structured only (its gate is "
                f"per token), got strategy={strategy!r:.40}"
            )
        if not isinstance(sparse_experts, bool):
            raise TypeError(
                f"{type(self).__name__}: sparse_experts must be True or False, got "
                f"{type(sparse_experts).__name__} {sparse_experts!r:.40}"
            )
        if not isinstance(expert_dispatch, str) or expert_dispatch not in DISPATCHES:
            raise ValueError(
                f"{type(self).__name__}: expert_dispatch must be 'auto', 'counts' or "
                f"'static', got {expert_dispatch!r:.40}"
            )
        super().__init__(
            bias,
            device,
            dtype,
            normalize,
            zero_init_last,
            gain,
            strategy,
            save_intermediate,
        )
        self.sparse_experts = sparse_experts
        if aux_weight is not None and (
            isinstance(aux_weight, bool)
            or not isinstance(aux_weight, int | float)
            or not abs(aux_weight) < float("inf")
            or aux_weight < 0
        ):
            raise TypeError(
                f"{type(self).__name__}: aux_weight must be None or a finite number >= 0, "
                f"got {aux_weight!r:.40}"
            )
        self.aux_weight = aux_weight
        self.expert_dispatch = expert_dispatch
        self.balance_group: Any = None
        self.expert_group: Any = None

    def _make_modules(self, factory: dict) -> None:
        # the router scores the experts (entries of the routed index) per token
        self.router = nn.Linear(self.in_features, self.experts, bias=False, **factory)
        self.aux_loss: torch.Tensor | None = None
        self._aux: torch.Tensor | None = None

    def _reset_modules(self) -> None:
        nn.init.zeros_(self.router.weight)

    def _route(self, x: torch.Tensor) -> tuple:
        """The gates of each token's top-k experts (the softmax of their logits) and
        those experts.

        Also sets ``aux_loss``: the load-balancing loss E * sum_e (mean router
        probability of e) * (share of routing slots given to e), plus 0.1 times
        the mean squared log-partition of the logits (z-loss); not under
        torch.export, whose program returns the output only.
        """
        logits = torch.nn.functional.linear(x, _local(self.router.weight))
        probs = logits.softmax(dim=-1)
        chosen = logits.topk(self.top_k, dim=-1).indices
        # the softmax of the top-k logits, as the kept probabilities renormalized: one
        # softmax for the gates and the loss (torch 2.13's inductor miscompiles the
        # backward of a second softmax over the top-k values next to this loss)
        weights = probs.gather(-1, chosen)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        if not torch.compiler.is_exporting():  # export keeps no attribute side effects
            # sums in at least float32 (fp16's range ends at 65504: a z-loss summed over
            # tens of thousands of tokens, or their count, overflowed)
            wide = torch.promote_types(logits.dtype, torch.float32)
            slots = torch.zeros_like(logits, dtype=wide).scatter(-1, chosen, 1.0)
            slots = slots.sum(0) / self.top_k
            z = logits.to(wide).logsumexp(dim=-1).pow(2).sum().reshape(1)
            # means over the group's tokens, however many each rank holds (none: 0, not NaN)
            ones = torch.ones_like(logits[:, :1], dtype=wide)
            tokens = ones.sum(0)  # a tensor, so traces follow it
            sums = torch.cat([probs.sum(0, dtype=wide), slots, z])
            means = _token_means(sums, tokens, self.balance_group)
            mean_probs, slots, z = (
                means[: self.experts],
                means[self.experts : -1],
                means[-1],
            )
            aux = self.experts * (mean_probs * slots).sum() + 0.1 * z
            self._aux = aux.to(logits.dtype)
            attached = self.aux_weight is not None
            self.aux_loss = self._aux.detach() if attached else self._aux
        return weights, chosen

    def _dispatch(self, x: torch.Tensor) -> str:
        """The expert_dispatch this input gets: "auto" is "static" on CUDA."""
        if self.expert_dispatch != "auto":
            return self.expert_dispatch
        return "static" if x.is_cuda else "counts"

    def _bias(self) -> torch.Tensor:
        return _local(self.bias)

    def _factors(self) -> tuple:
        if self.expert_group is not None:  # this rank's experts: the local shards
            return tuple(
                [w.to_local() if _is_dtensor(w) else w for w in super()._factors()]
            )
        return tuple([_local(w) for w in super()._factors()])

    def _structured(self, x: torch.Tensor) -> torch.Tensor:
        factors = self._factors()
        weights, chosen = self._route(x)
        pad = self.padded_in - self.in_features
        if pad:
            x = torch.nn.functional.pad(x, (0, pad))  # pad to the axes' product
        keep = self.save_intermediate
        if self.expert_group is not None:
            y = _exchanged_experts(self, x, weights, chosen, factors)
        elif self.sparse_experts and self._dispatch(x) == "static":
            y = static_experts(x, weights, chosen, type(self), factors)
        elif self.sparse_experts and not static_shapes():
            y = SparseExperts.apply(x, weights, chosen, type(self), keep, *factors)[0]
        else:
            # every expert, gated: the same numbers, shapes that do not depend on the router
            gate = weights.new_zeros(x.shape[0], self.experts)
            gate = gate.scatter(-1, chosen, weights)
            y, _ = self.gated_steps(x, gate, *factors)
        if self.padded_out != self.out_features:
            y = y[:, : self.out_features]  # drop the padded outputs
        if self.aux_weight is not None and not torch.compiler.is_exporting():
            y = AttachLoss.apply(y, self._aux, float(self.aux_weight))
        self._aux = None
        return y

    def to_dense(self) -> torch.Tensor:
        raise RuntimeError(
            "a routed layer has no single dense matrix: its gate is per token"
        )

    @property
    def weight(self) -> torch.Tensor:
        raise AttributeError(
            "a routed layer has no single dense weight: its gate is per token"
        )

    def from_dense(self, weight: Any, bias: Any = None, max_iter: int = 100) -> float:
        """Refused: a routed layer has no single dense matrix to project onto."""
        raise RuntimeError(
            "a routed layer has no single dense matrix to project onto: its gate is per token"
        )

    def lr_multipliers(self) -> dict:
        out = super().lr_multipliers()
        out["router.weight"] = 1.0
        return out

    def __getstate__(self) -> dict:
        """Copies and pickles leave out the last forward's aux_loss (it holds that
        step's graph)."""
        state = super().__getstate__()
        state["aux_loss"] = None
        state["_aux"] = None
        state["balance_group"] = None
        state["expert_group"] = None
        return state
