"""The base class of routed (BTT-MoE) layers and their sparse path.

A router scores the experts (the entries of the routed index) per token; each
token goes through its top-k experts. The sparse path (:class:`SparseExperts`)
sorts the (token, expert) slots by expert; every expert gathers its block of
input rows, scales each by its gate, runs the one-expert steps on them and adds
its output into its tokens' rows. The generated class supplies the one-expert
steps, operands and backward (static methods) and how to slice each factor;
everything else is here. Under tracing, compiling, export and torch.func the
layer takes the masked path (every expert computed, then gated: the plan's own
steps), whose shapes do not depend on the router.
"""

from typing import Any, ClassVar

import torch
from torch import nn

# in a standalone file these names are defined by layer.py's text above
if "StructuredLinear" not in globals():
    from .layer import StructuredLinear, autocast_context, autocast_state

__all__ = ["AttachLoss", "RoutedStructuredLinear", "SparseExperts", "static_shapes"]

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


def _reduced(value: torch.Tensor, group: Any) -> torch.Tensor:
    """The mean of ``value`` over the ranks of ``group`` (differentiable), or ``value``
    itself without a group."""
    if group is None:
        return value
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(value, group=group) / torch.distributed.get_world_size(group)


class SparseExperts(torch.autograd.Function):
    """Each token through its top-k experts only, with a planned backward.

    Saves the input, the gates, the slot order and the experts' intermediates
    (with ``save_intermediate=False`` it recomputes those in the backward); the
    backward runs under the forward's autocast state.
    """

    @staticmethod
    def forward(x, weights, chosen, layer, save_intermediate, *factors):  # type: ignore[no-untyped-def]
        slots = chosen.reshape(-1)
        order = slots.argsort(stable=True)
        counts = tuple(torch.bincount(slots, minlength=layer.experts).tolist())
        tokens = order.div(layer.top_k, rounding_mode="floor")
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
        x, weights, _, layer, save_intermediate, *factors = inputs
        _, ctx.counts, order, *kept = output
        ctx.layer = layer
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
            tokens = order.div(layer.top_k, rounding_mode="floor")
            ws = weights.reshape(-1, 1).index_select(0, order)
            g_x = None
            g_ws = torch.zeros_like(ws) if flags[1] else None
            grads = [
                torch.zeros_like(w) if need else None
                for w, need in zip(factors, needs[1:])
            ]
            inner = iter(kept)
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
                if ctx.save_intermediate:
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


class RoutedStructuredLinear(StructuredLinear):
    """A routed structured layer (BTT-MoE): y = sum over each token's top-k experts of
    gate * expert(x) + b. There is no single dense matrix (the gate is per token).

    Args (besides StructuredLinear's; strategy can only be "structured"):
        aux_weight: None (default) leaves ``aux_loss`` for the caller to add to the
            loss; a number joins ``aux_weight * aux_loss`` to the output's graph
            (its gradient reaches the router whenever the output's does, under
            reentrant checkpointing too) and keeps ``aux_loss`` for logging,
            detached: do not add it again.
        balance_group: a torch.distributed process group: the balance term uses
            the router statistics averaged over its ranks (the global batch), not
            this rank's tokens alone. Not a constructor option a manifest saves:
            set the attribute after construction.
        sparse_experts: compute only each token's top-k experts (each expert on its
            tokens); False computes every expert and masks, as the paper's code does.
            Under torch.jit.trace, torch.compile, torch.export and torch.func the
            layer masks either way: the same numbers, with shapes that do not
            depend on the router.
    """

    strategies: ClassVar[tuple[str, ...]] = ("structured",)
    constructor_options: ClassVar[tuple[str, ...]] = (
        *StructuredLinear.constructor_options,
        "sparse_experts",
        "aux_weight",
    )
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
        self.balance_group: Any = None

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
        logits = self.router(x)
        probs = logits.softmax(dim=-1)
        chosen = logits.topk(self.top_k, dim=-1).indices
        # the softmax of the top-k logits, as the kept probabilities renormalized: one
        # softmax for the gates and the loss (torch 2.13's inductor miscompiles the
        # backward of a second softmax over the top-k values next to this loss)
        weights = probs.gather(-1, chosen)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        if not torch.compiler.is_exporting():  # export keeps no attribute side effects
            slots = torch.zeros_like(logits).scatter(-1, chosen, 1.0)
            slots = slots.mean(0) / self.top_k
            mean_probs = _reduced(probs.mean(0), self.balance_group)
            slots = _reduced(slots, self.balance_group)
            balance = self.experts * (mean_probs * slots).sum()
            self._aux = balance + 0.1 * logits.logsumexp(dim=-1).pow(2).mean()
            attached = self.aux_weight is not None
            self.aux_loss = self._aux.detach() if attached else self._aux
        return weights, chosen

    def _structured(self, x: torch.Tensor) -> torch.Tensor:
        factors = self._factors()
        weights, chosen = self._route(x)
        pad = self.padded_in - self.in_features
        if pad:
            x = torch.nn.functional.pad(x, (0, pad))  # pad to the axes' product
        if self.sparse_experts and not static_shapes():
            keep = self.save_intermediate
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
        return state
