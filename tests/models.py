"""Small models for the conversion tests, importable by the tests and by the fresh processes they start."""

from __future__ import annotations

import torch
from torch import nn


class Conv1D(nn.Module):
    """A stand-in with Hugging Face Conv1D's contract: weight (nx, nf), y = x @ weight + bias."""

    def __init__(self, nf: int, nx: int):
        super().__init__()
        self.nf, self.nx = nf, nx
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(*x.shape[:-1], self.nf)


class Block(nn.Module):
    """Conv1D and Linear layers, square and rectangular, and a head tied to an embedding."""

    def __init__(self, d: int = 16, vocab: int = 11):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.up = Conv1D(4 * d, d)
        self.down = nn.Linear(4 * d, d)
        self.mix = nn.Linear(d, d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        h = self.embed(ids)
        h = h + self.down(torch.tanh(self.up(h)))
        return self.head(self.mix(h))
