"""One run of the scaling experiment: a student MLP learns a fixed random teacher.

The task is the papers' MLP regression in miniature (Qiu et al. 2024, §5):

- **Teacher**: a fixed random ReLU MLP (6 layers of width 512, Kaiming-normal
  weights, PyTorch-default biases) on inputs ~ N(0, I_8); its output is
  standardized (mean 0, variance 1 over 65,536 samples), so a student that
  predicts 0 has loss 1.
- **Data**: fresh samples every step (no sample is seen twice), the same
  stream for every run of a seed; a held-out set of 4,096 samples for the loss.
- **Student**: dense 8 -> d, GELU, LayerNorm, then 3 pre-LN residual blocks
  ``h + W2 GELU(W1 LN(h))`` with W1: d -> 4d and W2: 4d -> d, a final
  LayerNorm and a zero-initialized head d -> 1. The 6 hidden layers are the
  structure under test (``replace_linear``); the dense baseline is the
  catalog's ``dense`` form, so it gets the same spectral init.
- **Training**: Adam, :func:`einstruct.param_groups` (structured muP in the
  layers, width muP around them against the same student at ``base_width``
  64, as the papers), cosine decay to 0, batch 256, MSE.
- **Compute**: training FLOPs = steps x batch x the sum over the linear layers
  of ``train_flops`` from :func:`einstruct.analyze` (3 x the forward matmuls);
  norms and activations are not counted (they are the same for every structure
  and small at these widths).

Everything is seeded: the teacher and data by the seed, the student by (seed,
structure, width).
"""

from __future__ import annotations

import json
import math
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["Task", "Run", "build_teacher", "make_data", "build_student", "train_flops", "train_run"]


@dataclass(frozen=True)
class Task:
    """The regression task and training setup shared by every run."""

    in_dim: int = 8
    teacher_width: int = 512
    teacher_depth: int = 6
    blocks: int = 3
    batch: int = 256
    steps: int = 3000
    eval_samples: int = 4096
    base_width: int = 64


@dataclass(frozen=True)
class Run:
    """One point of the sweep: a structure at a width and learning rate, for one seed."""

    structure: str  # label
    spec: str  # .ein text of the hidden layers (widths bound per layer)
    width: int
    lr: float
    seed: int

    def key(self, task: Task) -> str:
        """A stable identity for resuming: the run and the task (a run of another task,
        say with other steps, is another run)."""
        setup = zlib.crc32(json.dumps(asdict(task), sort_keys=True).encode())
        spec = zlib.crc32(self.spec.encode())
        return f"{self.structure}|{self.width}|{self.lr!r}|{self.seed}|{spec:08x}|{setup:08x}"


def build_teacher(task: Task, seed: int) -> Any:
    """The fixed random ReLU MLP of ``seed``."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(10_000 + seed)
    widths = [task.in_dim] + [task.teacher_width] * (task.teacher_depth - 1) + [1]
    layers: list[Any] = []
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        linear = nn.Linear(a, b)
        with torch.no_grad():
            gain = math.sqrt(2.0) if k > 0 else 1.0  # inputs after a ReLU have half their variance
            linear.weight.copy_(torch.randn(b, a, generator=gen) * gain / math.sqrt(a))
            linear.bias.uniform_(-1 / math.sqrt(a), 1 / math.sqrt(a), generator=gen)
        layers += [linear, nn.ReLU()]
    return nn.Sequential(*layers[:-1]).requires_grad_(False)


def make_data(task: Task, seed: int, path: Path | None = None) -> dict[str, Any]:
    """The training stream (steps x batch samples) and the held-out set of ``seed``.

    With ``path``, the tensors are saved there (and read back when present), so a
    sweep computes each seed's teacher outputs once.
    """
    import torch

    if path is not None and path.exists():
        data: dict[str, Any] = torch.load(path)
        if data["task"] == asdict(task):
            return data
    teacher = build_teacher(task, seed)
    gen = torch.Generator().manual_seed(20_000 + seed)
    with torch.no_grad():
        probe = teacher(torch.randn(65536, task.in_dim, generator=gen))
        mean, std = probe.mean(), probe.std()
        x_eval = torch.randn(task.eval_samples, task.in_dim, generator=gen)
        x = torch.randn(task.steps * task.batch, task.in_dim, generator=gen)
        y = torch.cat([teacher(chunk) for chunk in x.split(65536)])
        data = {
            "task": asdict(task),
            "x": x,
            "y": (y - mean) / std,
            "x_eval": x_eval,
            "y_eval": (teacher(x_eval) - mean) / std,
        }
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(data, path)
    return data


def _student_class() -> Any:
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(width)
            self.up = nn.Linear(width, 4 * width)
            self.down = nn.Linear(4 * width, width)

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return h + self.down(nn.functional.gelu(self.up(self.norm(h))))

    class Student(nn.Module):
        def __init__(self, task: Task, width: int) -> None:
            super().__init__()
            self.inp = nn.Linear(task.in_dim, width)
            self.norm_in = nn.LayerNorm(width)
            self.blocks = nn.ModuleList(Block(width) for _ in range(task.blocks))
            self.norm_out = nn.LayerNorm(width)
            self.head = nn.Linear(width, 1)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.norm_in(nn.functional.gelu(self.inp(x)))
            for block in self.blocks:
                h = block(h)
            return self.head(self.norm_out(h))

    return Student


def build_student(task: Task, run: Run) -> Any:
    """The student of ``run``: its 6 hidden layers replaced by the run's structure."""
    import torch

    from ..runtime.groups import is_structured
    from ..runtime.replace import replace_linear

    torch.manual_seed(zlib.crc32(f"{run.seed}|{run.structure}|{run.width}".encode()))
    model = _student_class()(task, run.width)
    replace_linear(model, run.spec, select="blocks.*", init="random")  # structured muP init, as the papers
    for module in model.modules():
        if is_structured(module):
            module.strategy = "structured"  # run the counted steps, not a materialized W
    return model


def train_flops(task: Task, spec: str, width: int) -> int:
    """Training FLOPs per sample of the student: ``train_flops`` of each linear layer, summed."""
    from fractions import Fraction

    from ..analysis.analyze import analyze_structure
    from ..language.load import load

    dense = lambda a, b: 6 * a * b  # noqa: E731 - forward 2ab, input and weight gradients 2ab each
    total = dense(task.in_dim, width) + dense(width, 1)
    for d_in, d_out in ((width, 4 * width), (4 * width, width)):
        counts = analyze_structure(load(spec, d_in=d_in, d_out=d_out)).counts
        total += task.blocks * Fraction(counts.train_flops)
    return int(total)


def train_run(task: Task, run: Run, data: dict[str, Any]) -> dict[str, Any]:
    """Train one student; the result row written to the JSON-lines file."""
    import torch

    from ..runtime.groups import param_groups

    start = time.perf_counter()
    model = build_student(task, run)
    base = _student_class()(task, task.base_width)  # muP from the base width, as the papers
    opt = torch.optim.Adam(param_groups(model, run.lr, base=base))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, task.steps) / task.steps))
    )
    x_all, y_all = data["x"], data["y"]
    ema, diverged = None, False
    for step in range(task.steps):
        rows = slice(step * task.batch, (step + 1) * task.batch)
        loss = torch.nn.functional.mse_loss(model(x_all[rows]), y_all[rows])
        if not torch.isfinite(loss):
            diverged = True
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
    with torch.no_grad():
        eval_loss = torch.nn.functional.mse_loss(model(data["x_eval"]), data["y_eval"]).item()
    per_sample = train_flops(task, run.spec, run.width)
    return {
        "key": run.key(task),
        "structure": run.structure,
        "width": run.width,
        "lr": run.lr,
        "seed": run.seed,
        "steps": task.steps,
        "batch": task.batch,
        "params": sum(p.numel() for p in model.parameters()),
        "train_flops_per_sample": per_sample,
        "train_flops": per_sample * task.batch * task.steps,
        "eval_loss": None if diverged or not math.isfinite(eval_loss) else eval_loss,
        "train_loss_ema": ema,
        "diverged": diverged or not math.isfinite(eval_loss),
        "seconds": round(time.perf_counter() - start, 2),
    }
