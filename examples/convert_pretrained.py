"""Convert a trained model to structured layers: project, then fine-tune briefly.

Run: python examples/convert_pretrained.py [--minutes 2] [--finetune-steps 300] [--quick]

1. "Pretrain": a dense MLP (32 -> 256 -> 256 -> 256 -> 1, GELU) learns a
   synthetic regression task (a random teacher network) for a few minutes on CPU.
2. Convert its three hidden 256 x 256 layers, at about half their parameters,
   to BTT rank 4 (blocks of 16) and to low rank 64: `replace_linear` projects
   each trained weight (the exact optimum, `from_dense`) and reports the error.
3. Fine-tune each converted model briefly (same steps, same data), and, for
   comparison, the same structures from the structured muP init.

Prints the projection errors and the task loss (held-out MSE) after each stage.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

import einstruct

WIDTH, IN, BATCH = 256, 32, 512
STRUCTURES = {"BTT rank 4": "structure b = btt(rank = 4)", "low rank 64": "structure l = low_rank(rank = 64)"}


def mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(IN, WIDTH), nn.GELU(),
        nn.Linear(WIDTH, WIDTH), nn.GELU(),
        nn.Linear(WIDTH, WIDTH), nn.GELU(),
        nn.Linear(WIDTH, WIDTH), nn.GELU(),
        nn.Linear(WIDTH, 1),
    )  # fmt: skip


def task(seed: int = 0):
    """A random teacher: x -> tanh MLP -> y, and a fixed held-out set."""
    gen = torch.Generator().manual_seed(seed)
    w1, w2 = torch.randn(IN, 128, generator=gen) / IN**0.5, torch.randn(128, 1, generator=gen) / 128**0.5

    def sample(n: int, g: torch.Generator):
        x = torch.randn(n, IN, generator=g)
        return x, torch.tanh(2 * x @ w1) @ w2

    return sample, sample(4096, torch.Generator().manual_seed(seed + 1))


def train(model: nn.Module, sample, steps: int | None, seconds: float | None, lr: float, seed: int) -> int:
    """Adam with the papers' learning-rate rules (einstruct.param_groups), fresh batches each step."""
    opt = torch.optim.Adam(einstruct.param_groups(model, lr=lr))
    gen = torch.Generator().manual_seed(seed)
    start, step = time.perf_counter(), 0
    while (steps is None or step < steps) and (seconds is None or time.perf_counter() - start < seconds):
        x, y = sample(BATCH, gen)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
    return step


@torch.no_grad()
def held_out(model: nn.Module, data) -> float:
    x, y = data
    return nn.functional.mse_loss(model(x), y).item()


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="pretraining time (default 2)")
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="a smoke run: seconds, not minutes")
    args = parser.parse_args()
    seconds, finetune = (5.0, 20) if args.quick else (60 * args.minutes, args.finetune_steps)
    torch.manual_seed(0)
    sample, data = task()
    dense = mlp()
    untrained = held_out(dense, data)
    steps = train(dense, sample, None, seconds, 1e-3, seed=1)
    print(f"dense: {params(dense):,} params, held-out MSE {untrained:.5f} untrained -> "
          f"{held_out(dense, data):.5f} after {steps} steps ({seconds:.0f} s)")  # fmt: skip
    hidden = ["2", "4", "6"]
    for label, spec in STRUCTURES.items():
        projected = copy.deepcopy(dense)
        report = einstruct.replace_linear(projected, spec, select=hidden, strategy="structured")
        errors = ", ".join(f"{layer.error:.3f}" for layer in report.layers)
        loss = held_out(projected, data)
        train(projected, sample, finetune, None, 1e-3, seed=2)
        scratch = copy.deepcopy(dense)
        einstruct.replace_linear(scratch, spec, select=hidden, init="random", strategy="structured")
        train(scratch, sample, finetune, None, 1e-3, seed=2)
        print(
            f"{label}: {params(projected):,} params; projection errors {errors}; held-out MSE "
            f"{loss:.5f} projected -> {held_out(projected, data):.5f} after {finetune} fine-tune steps "
            f"(from the structured init instead: {held_out(scratch, data):.5f})"
        )


if __name__ == "__main__":
    main()
