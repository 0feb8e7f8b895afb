"""Mixture-of-experts plumbing for routed (BTT-MoE) layers, as plain functions a layer calls.

- :func:`attach_aux_loss`: put an auxiliary loss in the autograd graph of the
  layer's output, so its gradient flows whenever the output's does: under
  reentrant activation checkpointing (which recomputes the forward and drops
  anything kept on the side), ``torch.compile`` and DDP alike, with no
  ``loss + aux`` for the user to remember;
- :func:`balance_loss`: the Switch-Transformer load-balancing loss
  ``E * sum_i f_i * P_i``, with the routing counts ``f`` summed over a process
  group (one all-reduce of ``E + 1`` numbers, no gradient), so every rank
  balances the global batch: averaged over the ranks (as DDP averages
  gradients) its value and gradient are the whole batch's;
- :func:`all_to_all_experts`: expert parallelism: each rank holds
  ``E / world`` experts; tokens go to the rank that holds their expert and
  come back (two differentiable all-to-alls), so no rank holds every expert.

    y = attach_aux_loss(y, balance_loss(probs, chosen, group=dp_group), weight=0.01)
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from ..errors import ParameterError
from ..nn.routed import AttachLoss, exchange_rows

__all__ = ["attach_aux_loss", "balance_loss", "all_to_all_experts"]


def attach_aux_loss(output: torch.Tensor, aux: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """``output``, unchanged, carrying ``weight * aux`` into the backward pass.

    The gradient of ``loss(output)`` then also holds ``weight * d aux``, as if
    the loss were ``loss + weight * aux``, provided the output reaches the loss
    (every layer's does). ``aux`` must be a scalar tensor.

    >>> y = attach_aux_loss(y, router_entropy, weight=0.01)  # doctest: +SKIP
    """
    if not isinstance(aux, torch.Tensor) or aux.numel() != 1:
        raise ParameterError("aux must be a scalar tensor", hint="reduce it first, e.g. aux.mean()")
    if not aux.requires_grad:
        return output
    return AttachLoss.apply(output, aux, float(weight))


def _check_tensor(name: str, value: Any, floating: bool, dims: tuple) -> None:
    """A ParameterError unless ``value`` is a tensor of the right kind and number of axes."""
    if not isinstance(value, torch.Tensor):
        raise ParameterError(
            f"{name} must be a tensor, got {type(value).__name__}", hint="pass a torch.Tensor"
        )
    kind_ok = value.is_floating_point() if floating else not (value.is_floating_point() or value.is_complex())
    if not kind_ok or value.dtype == torch.bool:
        kind = "a floating" if floating else "an integer"
        raise ParameterError(
            f"{name} must be {kind} tensor, got {value.dtype}",
            hint="probabilities and token rows are floating; expert indices are integers",
        )
    if value.dim() not in dims:
        raise ParameterError(
            f"{name} must have {' or '.join(map(str, dims))} axes, got shape {tuple(value.shape)}",
            hint="see the docstring for each argument's shape",
        )


def _check_indices(name: str, value: torch.Tensor, experts: int) -> None:
    """A ParameterError unless every index lies in 0 .. experts - 1: read on the CPU; on
    an accelerator an asynchronous device assert (no host synchronization each step);
    not under torch.compile (no graph break)."""
    if not value.numel() or torch.compiler.is_compiling():
        return
    outside = ((value < 0) | (value >= experts)).any()
    if value.device.type != "cpu":
        torch._assert_async(~outside)
    elif bool(outside):
        raise ParameterError(
            f"{name} holds an expert index outside 0 .. {experts - 1}",
            hint="pass the indices the router chose (e.g. probs.topk(k).indices)",
        )


def balance_loss(
    probs: torch.Tensor, chosen: torch.Tensor, num_experts: int | None = None, group: Any = None
) -> torch.Tensor:
    """The load-balancing loss ``E * sum_i f_i * P_i`` of a router.

    Args:
        probs: ``(tokens, E)`` router probabilities (differentiable).
        chosen: ``(tokens, k)`` (or ``(tokens,)``) the experts each token was sent to.
        num_experts: E, if given: must equal ``probs.shape[-1]`` (the default).
        group: a process group: ``f`` (the fraction of assignments per expert) is
            then counted over every rank's tokens (one all-reduce); ``P`` (the mean
            probability) stays this rank's, so averaging the ranks' losses, or
            their gradients as DDP does, gives the global batch's when every rank
            has as many tokens. A rank without tokens adds 0 (and still joins
            the all-reduce).
    """
    _check_tensor("probs", probs, floating=True, dims=(2,))
    _check_tensor("chosen", chosen, floating=False, dims=(1, 2))
    experts = probs.shape[-1]
    if num_experts is not None and (
        isinstance(num_experts, bool)
        or not isinstance(num_experts, numbers.Integral)
        or num_experts != experts
    ):
        raise ParameterError(
            f"num_experts is {num_experts!r:.40} but probs has {experts} experts (its last axis)",
            hint="leave num_experts out, or pass probs.shape[-1]",
        )
    if chosen.shape[0] != probs.shape[0]:
        raise ParameterError(
            f"chosen has {chosen.shape[0]} tokens but probs has {probs.shape[0]}",
            hint="pass the router's probabilities and choices for the same tokens",
        )
    _check_indices("chosen", chosen, experts)
    picks = chosen.reshape(-1)
    counts = torch.zeros(experts + 1, dtype=torch.float64, device=probs.device)
    counts[:experts] = torch.bincount(picks, minlength=experts)[:experts].to(counts.dtype)
    counts[experts] = picks.numel()
    if group is not None:  # every rank joins, also one without tokens
        dist.all_reduce(counts, group=group)
    fraction = (counts[:experts] / counts[experts].clamp(min=1)).to(probs.dtype)
    mean = probs.sum(dim=0) / max(probs.shape[0], 1)  # a rank without tokens adds 0, not NaN
    return experts * (fraction * mean).sum()


def all_to_all_experts(
    tokens: torch.Tensor,
    expert: torch.Tensor,
    local_experts: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    experts_per_rank: int,
    group: Any = None,
) -> torch.Tensor:
    """Run each token through its expert on the rank that holds it; the outputs in token order.

    Args:
        tokens: ``(n, d)`` this rank's token rows (one row per assignment: repeat a
            token's row for each of its top-k experts).
        expert: ``(n,)`` the global expert index of each row; rank ``r`` holds
            experts ``r * experts_per_rank`` to ``(r + 1) * experts_per_rank - 1``.
        local_experts: ``(rows, local_index) -> outputs``: runs this rank's experts.
        experts_per_rank: experts per rank.
        group: the expert-parallel process group (default: the world).

    Two all-to-alls (the rows, then their outputs) plus one of the counts; the
    gradient flows back through the same exchanges.
    """
    _check_tensor("tokens", tokens, floating=True, dims=(2,))
    _check_tensor("expert", expert, floating=False, dims=(1,))
    if expert.shape[0] != tokens.shape[0]:
        raise ParameterError(
            f"expert has {expert.shape[0]} entries but tokens has {tokens.shape[0]} rows",
            hint="one expert index per token row (repeat a token's row for each of its experts)",
        )
    if (
        isinstance(experts_per_rank, bool)
        or not isinstance(experts_per_rank, numbers.Integral)
        or experts_per_rank < 1
    ):
        raise ParameterError(
            f"experts_per_rank must be a positive integer, got {experts_per_rank!r:.40}",
            hint="the number of experts each rank holds, e.g. num_experts // world_size",
        )
    experts_per_rank = int(experts_per_rank)
    if not callable(local_experts):
        raise ParameterError(
            "local_experts must be a function (rows, local_index) -> outputs",
            hint="pass the function that runs this rank's experts",
        )
    world = dist.get_world_size(group)
    dest = torch.div(expert, experts_per_rank, rounding_mode="floor")
    if bool(((dest < 0) | (dest >= world)).any()):
        raise ParameterError(
            f"an expert index is outside the {world * experts_per_rank} experts of the group",
            hint="check experts_per_rank and the router's output",
        )
    order = torch.argsort(dest, stable=True)
    send = torch.bincount(dest, minlength=world)
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    send_sizes, recv_sizes = send.tolist(), recv.tolist()
    rows = tokens[order]
    local = (expert[order] - dest[order] * experts_per_rank).to(torch.int64)
    arrived = exchange_rows(rows, send_sizes, recv_sizes, group)
    local_index = torch.empty(sum(recv_sizes), dtype=torch.int64, device=tokens.device)
    dist.all_to_all_single(local_index, local, recv_sizes, send_sizes, group=group)
    done = local_experts(arrived, local_index)
    back = exchange_rows(done, recv_sizes, send_sizes, group)
    return back[torch.argsort(order)]  # back in this rank's token order
