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
  64, as the papers; or one global lr, ``Run.params = "global"``), cosine
  decay to 0, batch 256, MSE plus ``aux_weight`` x the routed layers'
  load-balancing losses (read from each layer's ``aux_loss`` after the
  forward). The second layer of each block starts with its last factor at zero
  (the papers' ``zero_init``).
- **Compute**: training FLOPs = steps x batch x the sum over the linear layers
  of ``train_flops`` from :func:`einstruct.analyze` (3 x the forward matmuls);
  a routed layer is charged its active FLOPs (top-k of E experts and the
  router), as is the standard MoE (:mod:`.moe`); norms and activations are not
  counted (they are the same for every structure and small at these widths).
- **Curves**: the held-out loss is recorded at ``evals`` log-spaced steps
  (from steps/32 to the end), with the training FLOPs spent so far.
- **Divergence**: a run diverged if its loss stopped being finite, or if its
  final held-out loss is above :data:`DIVERGED_LOSS` (10: ten times the loss
  of predicting 0, which is 1 on the standardized teacher): a loss that
  exploded but stayed finite (1e8 at lr 100) is no measurement. Its
  ``eval_loss`` is null; :func:`final_loss` applies the same rule to rows
  written before it, and curve points above the bound are left out.

Everything is seeded: the teacher and data by the seed, the student by (seed,
structure, width).
"""

from __future__ import annotations

import json
import math
import time
import warnings
import zlib
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "Task",
    "Run",
    "build_teacher",
    "make_data",
    "data_shapes",
    "stream_bytes",
    "construction_bytes",
    "build_student",
    "eval_steps",
    "layer_train_flops",
    "train_flops",
    "train_run",
    "DIVERGED_LOSS",
    "final_loss",
    "finite_loss",
]


#: A final held-out loss above this is a diverged run: ten times the loss of predicting 0 (which is
#: 1, the teacher's outputs being standardized).
DIVERGED_LOSS = 10.0


def finite_loss(loss: float | None) -> bool:
    """Whether ``loss`` is a measurement: a number, finite, at most :data:`DIVERGED_LOSS`."""
    return loss is not None and math.isfinite(loss) and loss <= DIVERGED_LOSS


def final_loss(row: Any) -> float:
    """A row's final held-out loss; infinity for a run that diverged (by the rule above)."""
    loss = row["eval_loss"]
    return float(loss) if finite_loss(loss) else math.inf


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
    evals: int = 8  # held-out losses recorded along training, log-spaced in steps
    aux_weight: float = 0.01  # weight of routed layers' load-balancing loss
    zero_init_last: bool = True  # each block's second layer starts with its last factor at 0


@dataclass(frozen=True)
class Run:
    """One point of the sweep: a structure at a width and learning rate, for one seed."""

    structure: str  # label
    spec: str  # .ein text of the hidden layers (widths bound per layer)
    width: int
    lr: float
    seed: int
    params: str = "mup"  # "mup": einstruct.param_groups; "global": one lr for every parameter

    def key(self, task: Task) -> str:
        """A stable identity for resuming: the run and the task (a run of another task,
        say with other steps, is another run)."""
        setup = zlib.crc32(json.dumps(asdict(task), sort_keys=True).encode())
        spec = zlib.crc32(self.spec.encode())
        mode = "" if self.params == "mup" else f"|{self.params}"
        return f"{self.structure}|{self.width}|{self.lr!r}|{self.seed}|{spec:08x}|{setup:08x}{mode}"


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


def make_data(task: Task, seed: int) -> dict[str, Any]:
    """The training stream (steps x batch samples) and the held-out set of ``seed``, in memory.

    The sweep caches it per seed (:mod:`.data_cache`), so each seed's teacher
    outputs are computed once. Its size is :func:`stream_bytes`.
    """
    import torch

    teacher = build_teacher(task, seed)
    gen = torch.Generator().manual_seed(20_000 + seed)
    with torch.no_grad():
        probe = teacher(torch.randn(65536, task.in_dim, generator=gen))
        mean, std = probe.mean(), probe.std()
        x_eval = torch.randn(task.eval_samples, task.in_dim, generator=gen)
        x = torch.randn(task.steps * task.batch, task.in_dim, generator=gen)
        y = torch.cat([teacher(chunk) for chunk in x.split(65536)])
        return {
            "task": asdict(task),
            "x": x,
            "y": (y - mean) / std,
            "x_eval": x_eval,
            "y_eval": (teacher(x_eval) - mean) / std,
        }


def data_shapes(task: Task) -> dict[str, tuple[int, int]]:
    """The shape of each tensor :func:`make_data` returns."""
    samples = task.steps * task.batch
    return {
        "x": (samples, task.in_dim),
        "y": (samples, 1),
        "x_eval": (task.eval_samples, task.in_dim),
        "y_eval": (task.eval_samples, 1),
    }


def stream_bytes(task: Task) -> int:
    """Bytes of one seed's data (float32), held whole by every process that trains."""
    return 4 * sum(rows * cols for rows, cols in data_shapes(task).values())


def construction_bytes(task: Task, spec: str, width: int) -> int:
    """Bytes (float32) of the student as first built, before its hidden layers are replaced:
    every block's dense W1 and W2 (or the standard MoE's whole experts) exist at once."""
    from .moe import parse_moe

    moe = parse_moe(spec)
    experts = 1 if moe is None else moe[0]
    ffn = experts * (8 * width * width + 5 * width)  # W1: d -> 4d and W2: 4d -> d, with biases
    outer = (task.in_dim + 1) * width + width + 1 + 2 * (task.blocks + 2) * width
    return 4 * (task.blocks * ffn + outer)


def _student_class() -> Any:
    import torch
    from torch import nn

    from .moe import moe_ffn_class

    class Block(nn.Module):
        def __init__(self, width: int, moe: tuple[int, int] | None) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(width)
            if moe is None:
                self.up = nn.Linear(width, 4 * width)
                self.down = nn.Linear(4 * width, width)
            else:
                self.ffn = moe_ffn_class()(width, *moe)

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            if hasattr(self, "ffn"):
                return h + self.ffn(self.norm(h))
            return h + self.down(nn.functional.gelu(self.up(self.norm(h))))

    class Student(nn.Module):
        def __init__(self, task: Task, width: int, moe: tuple[int, int] | None = None) -> None:
            super().__init__()
            self.inp = nn.Linear(task.in_dim, width)
            self.norm_in = nn.LayerNorm(width)
            self.blocks = nn.ModuleList(Block(width, moe) for _ in range(task.blocks))
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


def build_student(task: Task, run: Run, width: int | None = None) -> Any:
    """The student of ``run`` (at ``width``, default the run's): its 6 hidden layers replaced by
    the run's structure, or its FFNs by the standard MoE."""
    import torch
    from torch import nn

    from ..errors import NoSavingsWarning
    from ..runtime.groups import is_structured
    from ..runtime.replace import replace_linear
    from .moe import parse_moe

    width = run.width if width is None else width
    torch.manual_seed(zlib.crc32(f"{run.seed}|{run.structure}|{width}".encode()))
    moe = parse_moe(run.spec)
    model = _student_class()(task, width, moe)
    if moe is not None:
        if task.zero_init_last:
            for block in model.blocks:
                for down in block.ffn.down:
                    nn.init.zeros_(down.weight)
        return model
    # structured muP init, as the papers; the second layer of each block starts with its last factor
    # at 0. A scaling sweep includes widths where a structure saves nothing: that is data, not advice.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoSavingsWarning)
        replace_linear(model, run.spec, select="blocks.*.up", init="random")
        replace_linear(
            model, run.spec, select="blocks.*.down", init="random", zero_init_last=task.zero_init_last
        )
    for module in model.modules():
        if is_structured(module):
            module.strategy = "structured"  # run the counted steps, not a materialized W
    return model


def layer_train_flops(spec: str, d_in: int, d_out: int) -> Any:
    """Training FLOPs per token of one layer: 3 x its forward matmuls; for a routed layer its
    active forward (top-k of E experts, plus the router), not every expert's."""
    from fractions import Fraction

    from ..analysis.analyze import analyze_structure
    from ..language.load import load

    result = analyze_structure(load(spec, d_in=d_in, d_out=d_out))
    if result.routing is not None:
        return 3 * Fraction(result.routing["active_flops"])
    return Fraction(result.counts.train_flops)


def train_flops(task: Task, spec: str, width: int) -> int:
    """Training FLOPs per sample of the student: ``train_flops`` of each linear layer, summed
    (active FLOPs for routed layers and the standard MoE)."""
    from .moe import moe_flops_per_sample, parse_moe

    dense = lambda a, b: 6 * a * b  # noqa: E731 - forward 2ab, input and weight gradients 2ab each
    total = dense(task.in_dim, width) + dense(width, 1)
    moe = parse_moe(spec)
    if moe is not None:
        return int(total + task.blocks * moe_flops_per_sample(width, *moe))
    for d_in, d_out in ((width, 4 * width), (4 * width, width)):
        total += task.blocks * layer_train_flops(spec, d_in, d_out)
    return int(total)


def eval_steps(task: Task) -> list[int]:
    """The steps after which the held-out loss is recorded: log-spaced from steps/32 to steps."""
    first = max(1, task.steps // 32)
    if task.evals <= 1 or first >= task.steps:
        return [task.steps]
    ratio = (task.steps / first) ** (1 / (task.evals - 1))
    return sorted({min(task.steps, round(first * ratio**k)) for k in range(task.evals)} | {task.steps})


def _aux_loss(model: Any) -> Any:
    """The sum of the routed layers' load-balancing losses of the last forward (0 without)."""
    losses = [m.aux_loss for m in model.modules() if getattr(m, "aux_loss", None) is not None]
    return sum(losses) if losses else 0.0


def _optimizer(task: Task, run: Run, model: Any) -> Any:
    import torch

    from ..runtime.groups import param_groups

    if run.params == "global":
        return torch.optim.Adam(model.parameters(), lr=run.lr)
    base = build_student(task, run, width=task.base_width)  # muP from the base width, as the papers
    return torch.optim.Adam(param_groups(model, run.lr, base=base))


def train_run(task: Task, run: Run, data: dict[str, Any]) -> dict[str, Any]:
    """Train one student; the result row written to the JSON-lines file."""
    import torch

    start, cpu = time.perf_counter(), time.process_time()
    model = build_student(task, run)
    opt = _optimizer(task, run, model)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, task.steps) / task.steps))
    )
    per_sample = train_flops(task, run.spec, run.width)
    checkpoints = set(eval_steps(task))
    x_all, y_all = data["x"], data["y"]
    ema, diverged, curve = None, False, []
    for step in range(task.steps):
        rows = slice(step * task.batch, (step + 1) * task.batch)
        mse = torch.nn.functional.mse_loss(model(x_all[rows]), y_all[rows])
        if not torch.isfinite(mse):
            diverged = True
            break
        opt.zero_grad(set_to_none=True)
        (mse + task.aux_weight * _aux_loss(model)).backward()
        opt.step()
        schedule.step()
        ema = mse.item() if ema is None else 0.98 * ema + 0.02 * mse.item()
        if step + 1 in checkpoints:
            with torch.no_grad():
                held_out = torch.nn.functional.mse_loss(model(data["x_eval"]), data["y_eval"]).item()
            curve.append([step + 1, per_sample * task.batch * (step + 1), held_out])
    eval_loss = curve[-1][2] if curve and not diverged else math.nan
    diverged = diverged or not finite_loss(eval_loss)  # not finite, or exploded (above DIVERGED_LOSS)
    return {
        "key": run.key(task),
        "structure": run.structure,
        "width": run.width,
        "lr": run.lr,
        "seed": run.seed,
        "params_rule": run.params,
        "steps": task.steps,
        "batch": task.batch,
        "params": sum(p.numel() for p in model.parameters()),
        "train_flops_per_sample": per_sample,
        "train_flops": per_sample * task.batch * task.steps,
        "eval_loss": None if diverged else eval_loss,
        "curve": [c for c in curve if math.isfinite(c[2])],
        "train_loss_ema": ema,
        "diverged": diverged,
        "seconds": round(time.perf_counter() - start, 2),
        "cpu_seconds": round(time.process_time() - cpu, 2),  # this process's CPU (single-threaded)
    }
