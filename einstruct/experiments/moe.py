"""The standard mixture of experts over whole FFNs: the baseline BTT-MoE is compared against.

A router (dense d -> E, no bias, zero-initialized, as the routed layers') scores
E experts per token; each token goes to its top-k, each expert a whole FFN
``down(GELU(up(h)))`` with up: d -> 4d and down: 4d -> d, and the outputs are
summed with the softmax of the kept logits. Only the chosen experts run (each
on its tokens), so a token costs k FFNs plus the router: its active FLOPs. The
load-balancing loss is the routed layers' (E x sum_e mean router probability
x share of slots, plus 0.1 x the squared log-partition), left in ``aux_loss``
after each forward, as they do.

In the experiment's specs this baseline is the line ``MOE_FFN`` (not ``.ein``):

    >>> spec = moe_spec(experts=8, top_k=2)
    >>> parse_moe(spec)
    (8, 2)
"""

from __future__ import annotations

from typing import Any

__all__ = ["MOE_MARK", "moe_spec", "parse_moe", "moe_ffn_class", "moe_flops_per_sample"]

#: The first word of a spec that stands for the standard MoE (a ``.ein`` file cannot start so).
MOE_MARK = "standard-moe"


def moe_spec(experts: int = 8, top_k: int = 2) -> str:
    """The spec line of a standard MoE with ``experts`` whole FFNs, ``top_k`` per token."""
    return f"{MOE_MARK} experts={experts} top_k={top_k}\n"


def parse_moe(spec: str) -> tuple[int, int] | None:
    """``(experts, top_k)`` of a standard-MoE spec, ``None`` for any other (``.ein``) spec."""
    words = spec.split()
    if not words or words[0] != MOE_MARK:
        return None
    values = dict(word.split("=", 1) for word in words[1:])
    return int(values["experts"]), int(values["top_k"])


def moe_flops_per_sample(width: int, experts: int, top_k: int) -> int:
    """Active training FLOPs per token of one MoE FFN: 3 x (router + k experts' two matmuls)."""
    return 3 * (2 * width * experts + top_k * 2 * (2 * width * 4 * width))


def moe_ffn_class() -> Any:
    """The ``nn.Module`` class of the MoE FFN (torch is imported here, not at module load)."""
    import torch
    from torch import nn

    class MoEFFN(nn.Module):
        """top-k of E whole FFNs per token, with the routed layers' load-balancing loss."""

        def __init__(self, width: int, experts: int, top_k: int) -> None:
            super().__init__()
            self.experts, self.top_k = experts, top_k
            self.router = nn.Linear(width, experts, bias=False)
            nn.init.zeros_(self.router.weight)
            self.up = nn.ModuleList(nn.Linear(width, 4 * width) for _ in range(experts))
            self.down = nn.ModuleList(nn.Linear(4 * width, width) for _ in range(experts))
            self.aux_loss: torch.Tensor | None = None

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            logits = self.router(h)
            probs = logits.softmax(dim=-1)
            chosen = logits.topk(self.top_k, dim=-1).indices
            gates = probs.gather(-1, chosen)
            gates = gates / gates.sum(dim=-1, keepdim=True)
            slots = torch.zeros_like(logits).scatter(-1, chosen, 1.0).mean(0) / self.top_k
            balance = self.experts * (probs.mean(0) * slots).sum()
            self.aux_loss = balance + 0.1 * logits.logsumexp(dim=-1).pow(2).mean()
            out = torch.zeros_like(h)
            for e in range(self.experts):
                token, slot = (chosen == e).nonzero(as_tuple=True)
                if token.numel():
                    y = self.down[e](nn.functional.gelu(self.up[e](h[token])))
                    out = out.index_add(0, token, y * gates[token, slot].unsqueeze(-1))
            return out

    return MoEFFN
