"""Bytes the fused Triton kernels load and store, counted from the kernels themselves.

Runs every kernel a layer's fused path launches (forward, grad_input and the
two factor gradients) with its SHIPPED GPU configurations (the rows of the
generated module's ``_CONFIGS`` tables for 2-byte inputs, exactly the
constexprs autotuning chooses from on a GPU) in Triton's interpreter, and
counts, per launch, the bytes every ``tl.load`` and ``tl.store`` moves (the
entries its mask lets through, times their size; each attributed to the tensor
it falls in). These are the bytes the programs *request* from the memory
system: what a GPU's L2 serves. Re-reads that hit L2 never reach DRAM, so the
DRAM traffic can be lower; the counts are an upper bound on it.

Beside them: the ideal (every operand read once, every result written once)
and what the planned torch steps move for the same role
(``Plan.traffic``: each step reads its operands and writes its result once,
copies twice; the backward's roles each as much as the forward).

The interpreter is slow at d = 4096, so each kernel is counted at two small
token counts (``--counts``, multiples of every shipped ``BLOCK_N``) and the
bytes are fitted as ``fixed + per_token * N`` (exact for these kernels: the
programs along the token axis do the same accesses), then reported per token
at ``--tokens`` (default 16384). A factor gradient runs with one share of the
tokens (``split = 1``); the shares a GPU launch splits the tokens into
(``_token_split``) only add their fp32 partial sums, which are added to the
stores and to the launcher's reduction (``epilogue``) by formula.

    python benchmarks/kernel_traffic.py                   # the table of docs/benchmarks.md
    python benchmarks/kernel_traffic.py --json            # one record per kernel and configuration
    python benchmarks/kernel_traffic.py --structures "btt(d = 1024)" --tokens 8192
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import argparse  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402

import torch  # noqa: E402

import einstruct  # noqa: E402
from einstruct.planner.fusion import KernelPlan, plan_fusion  # noqa: E402
from einstruct.planner.plan import make_plan  # noqa: E402
from einstruct.runtime import compile_structure  # noqa: E402

__all__ = ["STRUCTURES", "Record", "count_launch", "structure_records", "main"]

#: The issue's structures at d = 4096 (BTT rank 1 and 4, Monarch, Kronecker, low rank).
STRUCTURES = [
    "btt(d = 4096)",
    "btt(d = 4096, rank = 4)",
    "monarch(d = 4096)",
    "kronecker(d = 4096)",
    "low_rank(d = 4096, rank = 16)",
]
#: The kernel functions' names in a generated module -> the role they play.
ROLES = {
    "_forward_kernel": "forward",
    "_grad_input_kernel": "grad_input",
    "_grad_second_kernel": "grad_second",
    "_grad_first_kernel": "grad_first",
}


@dataclass
class Counts:
    """Bytes one launch loaded and stored, by the kernel argument whose tensor they fall in."""

    loaded: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    stored: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    programs: float = 0


@dataclass(frozen=True)
class Record:
    """One kernel and configuration of one structure: bytes per token at ``tokens``."""

    structure: str
    d: int
    kernel: str
    family: str
    config: dict
    dtype: str
    tokens: int
    counted_at: tuple[int, int]
    loaded_bytes_per_token: float
    stored_bytes_per_token: float
    epilogue_bytes_per_token: float
    ideal_bytes_per_token: float
    ideal_stored_bytes_per_token: float
    torch_bytes_per_token: float
    loaded_ratio: float
    loaded_by_operand: dict[str, float]
    programs: int
    #: False for a gradient the planned torch steps take: its bytes are modelled, not counted.
    counted: bool = True


class _Counter:
    """Patches the interpreter's load and store so every masked access is counted."""

    def __init__(self) -> None:
        from triton.runtime import interpreter

        self.interpreter = interpreter
        self.builder = type(interpreter.interpreter_builder)
        self.ranges: list[tuple[int, int, str]] = []
        self.counts = Counts()
        self.weight = 1.0

    def _owner(self, address: int) -> str:
        for lo, hi, name in self.ranges:
            if lo <= address < hi:
                return name
        return "?"

    def _add(self, table: dict[str, int], ptrs, mask) -> None:
        on = ptrs.data if mask is None else ptrs.data[mask.data.astype(bool)]
        if on.size:
            itemsize = ptrs.get_element_ty().primitive_bitwidth // 8
            table[self._owner(int(on.flat[0]))] += int(on.size) * itemsize * self.weight

    def __enter__(self) -> _Counter:
        executor = self.interpreter.GridExecutor
        saved = (executor._init_args_hst, self.builder.create_masked_load, self.builder.create_masked_store)
        self.saved = saved
        counter = self

        def init_args(executor_self, args, kwargs):
            host = saved[0](executor_self, args, kwargs)
            counter.ranges[:] = [
                (t.data_ptr(), t.data_ptr() + t.untyped_storage().nbytes(), name)
                for name, t in zip(executor_self.arg_names, host[0])
                if isinstance(t, torch.Tensor)
            ]
            return host

        def load(builder_self, ptrs, mask, *rest):
            counter._add(counter.counts.loaded, ptrs, mask)
            return saved[1](builder_self, ptrs, mask, *rest)

        def store(builder_self, ptrs, value, mask, *rest):
            counter._add(counter.counts.stored, ptrs, mask)
            return saved[2](builder_self, ptrs, value, mask, *rest)

        executor._init_args_hst = init_args
        self.builder.create_masked_load = load
        self.builder.create_masked_store = store
        return self

    def __exit__(self, *exc) -> None:
        executor = self.interpreter.GridExecutor
        executor._init_args_hst, self.builder.create_masked_load, self.builder.create_masked_store = (
            self.saved
        )


def _captured_launches(layer_class, tokens: int, dtype: torch.dtype) -> dict:
    """Each kernel's (grid, args) as its launcher passes them, for ``tokens`` tokens of ``dtype``."""
    module = sys.modules[layer_class.__module__]
    found: dict = {}

    def record(kernel, grid, args, dtype, config):
        found[kernel] = (grid, args)

    layer = layer_class(dtype=dtype, kernels="fused")
    factors = [getattr(layer, name).detach() for name in layer_class.factor_axes]
    x = torch.randn(tokens, layer.padded_in).to(dtype)  # the ops take the padded widths
    g = torch.randn(tokens, layer.padded_out).to(dtype)
    saved, module._launch = module._launch, record
    try:
        module._fused_forward._init_fn(x, *factors)
        module._fused_grad_input._init_fn(g, *factors)
        module._fused_grad_factors._init_fn(x, g, *factors, *(True for _ in factors))
    finally:
        module._launch = saved
    return found


#: Interior programs run per grid axis; the rest are counted as the sampled ones (see _sample).
SAMPLED = 3


def _sample(size: int) -> list[tuple[int, float]]:
    """(index, weight) along one grid axis: the first and last index run (edge blocks may be
    partial), and up to :data:`SAMPLED` evenly spaced interior ones, each standing for its share
    of the interior. Exact when the interior programs make the same accesses (shifted), as the
    kernels' regular tilings do; ``Counts.uniform`` records whether the sampled ones did."""
    if size <= 2 + SAMPLED:
        return [(k, 1.0) for k in range(size)]
    interior = size - 2
    picks = [1 + (interior - 1) * k // (SAMPLED - 1) for k in range(SAMPLED)]
    return [(0, 1.0), *((k, interior / SAMPLED) for k in picks), (size - 1, 1.0)]


def _run_sampled(executor, args_dev: tuple, kwargs: dict, counter: _Counter) -> None:
    """Triton's GridExecutor.__call__ (interpreter) over a sample of the grid, each program's
    bytes weighted by how many programs it stands for."""
    import itertools

    from triton.runtime import interpreter as it

    argspec = inspect.getfullargspec(executor.fn)
    kwargs = {k: v for k, v in kwargs.items() if k in argspec.args or k in argspec.kwonlyargs}
    args_hst, kwargs_hst = executor._init_args_hst(args_dev, kwargs)
    scope = it._patch_lang(executor.fn)
    try:
        args = inspect.getcallargs(executor.fn, *args_hst, **kwargs_hst)
        args = {n: a if n in executor.constexprs else it._implicit_cvt(a) for n, a in args.items()}
        grid = executor.grid(args) if callable(executor.grid) else executor.grid
        grid = tuple(grid) + (1,) * (3 - len(grid))
        it.interpreter_builder.set_grid_dim(*grid)
        axes = [_sample(g) for g in grid]
        for picks in itertools.product(*axes):
            counter.weight = float(math.prod(w for _, w in picks))
            it.interpreter_builder.set_grid_idx(*(k for k, _ in picks))
            executor.fn(**args)
            counter.counts.programs += counter.weight
    finally:
        scope.restore()


def count_launch(kernel, grid, args: tuple, config: dict, split: int | None = None) -> Counts:
    """Run one kernel in the interpreter with ``config``'s blocks and count its bytes.

    ``split`` replaces a factor gradient's run-time share count (argument ``split``).
    """
    import triton.language as tl

    names = list(inspect.signature(kernel.fn).parameters)
    args = tuple(split if (n == "split" and split is not None) else a for n, a in zip(names, args))
    constants = {"ACC_DTYPE": tl.float32, "DOT_PRECISION": "ieee"}
    with _Counter() as counter:
        from triton.runtime import interpreter

        executor = interpreter.GridExecutor(kernel.rewrite(), kernel.arg_names, grid, kernel.pre_run_hooks)
        _run_sampled(executor, args, {**constants, **config}, counter)
    return counter.counts


def _fit(small: float, large: float, n1: int, n2: int, tokens: int) -> float:
    """Bytes per token at ``tokens`` from counts at n1 and n2, fitted as fixed + slope * N."""
    slope = (large - small) / (n2 - n1)
    fixed = small - slope * n1
    return (fixed + slope * tokens) / tokens


def structure_records(source: str, tokens: int, counts: tuple[int, int], every_config: bool) -> list[Record]:
    """The records of one structure's fused kernels (bf16: the 2-byte GPU table)."""
    structure = einstruct.load(f"structure s = {source}")
    plan = make_plan(structure, batch=tokens)
    fusion = plan_fusion(plan)
    layer_class = compile_structure(structure, backend="triton")
    module = sys.modules[layer_class.__module__]
    if not getattr(module, "_CONFIGS", None) or not hasattr(fusion, "kernels"):
        return []
    plans = {k.role: k for k in fusion.kernels}
    launches = [_captured_launches(layer_class, n, torch.bfloat16) for n in counts]
    records = []
    from einstruct.nn import fused

    # the configuration table is the runtime's, shared by every layer compiled in this process
    for kernel, (blocks, tables, _) in module._CONFIGS.items():
        if kernel not in launches[0]:  # another layer's kernel
            continue
        role = ROLES[kernel.fn.__name__]
        rows = tables.get(ITEMSIZE, ())
        for row in rows if every_config else rows[:1]:
            config = dict(zip(blocks, row))
            measured = [count_launch(kernel, *found[kernel], config, split=1) for found in launches]
            shape = Shape(source, plans[role], int(structure.d_in), int(structure.d_out))
            torch_bytes = float(plan.traffic(ITEMSIZE)) / (2 if role in ("grad_first", "grad_second") else 1)
            split = fused._token_split(tokens)
            records.append(_record(shape, config, row, tokens, counts, measured, torch_bytes, split))
    for k in fusion.kernels:  # gradients the planned torch steps take: their modelled bytes
        if k.family == "gemm":
            records.append(_planned_record(source, k, plan, tokens))
    return records


def _planned_record(source: str, kernel: KernelPlan, plan, tokens: int) -> Record:
    """A gradient the module takes by the planned torch steps (no kernel to count): the plan's
    modelled bytes (``Plan.traffic``), half the recomputation and backward of both factors."""
    chain = kernel.chain
    torch_bytes = float(plan.traffic(ITEMSIZE))
    ideal = ITEMSIZE * (chain.width("x") + chain.width("y")) + ITEMSIZE * chain.width("p") / tokens
    return Record(
        structure=source,
        d=int(plan.structure.d_in),
        kernel=kernel.role,
        family="gemm",
        config={},
        dtype="bf16",
        tokens=tokens,
        counted_at=(0, 0),
        loaded_bytes_per_token=round(torch_bytes, 1),
        stored_bytes_per_token=0.0,
        epilogue_bytes_per_token=0.0,
        ideal_bytes_per_token=round(ideal, 1),
        ideal_stored_bytes_per_token=round(ITEMSIZE * chain.width("q") / tokens, 1),
        torch_bytes_per_token=round(torch_bytes / 2, 1),
        loaded_ratio=round(torch_bytes / ideal, 2),
        loaded_by_operand={},
        programs=0,
        counted=False,
    )


#: Bytes per entry of the counted dtype (bf16).
ITEMSIZE = 2


@dataclass(frozen=True)
class Shape:
    """What a record needs of the kernel: its plan (role, family, chain) and the layer's widths."""

    source: str
    kernel: KernelPlan
    d_in: int
    d_out: int


def _record(
    shape: Shape,
    config: dict,
    row: tuple,
    tokens: int,
    counts: tuple[int, int],
    measured: list[Counts],
    torch_bytes: float,
    split: int,
) -> Record:
    n1, n2 = counts
    chain = shape.kernel.chain
    role = shape.kernel.role
    factors = ITEMSIZE * (chain.width("p") + chain.width("q"))
    operands = sorted({*measured[0].loaded, *measured[1].loaded})
    by_operand = {
        name: _fit(measured[0].loaded.get(name, 0), measured[1].loaded.get(name, 0), n1, n2, tokens)
        for name in operands
    }
    loaded = sum(by_operand.values())
    stored = _fit(sum(measured[0].stored.values()), sum(measured[1].stored.values()), n1, n2, tokens)
    epilogue = 0.0
    if role in ("forward", "grad_input"):  # reads x and both factors, writes y
        ideal = ITEMSIZE * chain.width("x") + factors / tokens
        ideal_stored = float(ITEMSIZE * chain.width("y"))
    else:  # reads x, dy and the first factor, writes the second's gradient
        grad = chain.width("q")
        ideal = ITEMSIZE * (chain.width("x") + chain.width("y")) + ITEMSIZE * chain.width("p") / tokens
        ideal_stored = ITEMSIZE * grad / tokens
        stored += (split - 1) * 4 * grad / tokens  # the other shares' fp32 partial sums
        epilogue = (split * 4 + ITEMSIZE) * grad / tokens  # the launcher sums them
    return Record(
        structure=shape.source,
        d=shape.d_in,
        kernel=role,
        family=shape.kernel.family,
        config={**config, "num_warps": row[-2], "num_stages": row[-1]},
        dtype="bf16",
        tokens=tokens,
        counted_at=counts,
        loaded_bytes_per_token=round(loaded, 1),
        stored_bytes_per_token=round(stored, 1),
        epilogue_bytes_per_token=round(epilogue, 2),
        ideal_bytes_per_token=round(ideal, 1),
        ideal_stored_bytes_per_token=round(ideal_stored, 1),
        torch_bytes_per_token=round(torch_bytes, 1),
        loaded_ratio=round(loaded / ideal, 2),
        loaded_by_operand={k: round(v, 1) for k, v in by_operand.items()},
        programs=round(measured[1].programs),
    )


def _table(records: list[Record]) -> str:
    lines = [
        "| structure | kernel | family | config | loaded B/token | ideal | ratio | stored | torch B/token |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in records:
        config = " ".join(f"{k.removeprefix('BLOCK_')}={v}" for k, v in r.config.items()) or "(torch steps)"
        lines.append(
            f"| {r.structure} | {r.kernel} | {r.family} | {config} | {r.loaded_bytes_per_token:,.0f} "
            f"| {r.ideal_bytes_per_token:,.0f} | {r.loaded_ratio:.2f}x | {r.stored_bytes_per_token:,.0f} "
            f"| {r.torch_bytes_per_token:,.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structures", nargs="+", default=STRUCTURES, help="catalog calls")
    parser.add_argument("--tokens", type=int, default=16384, help="tokens the per-token bytes are for")
    parser.add_argument("--counts", type=int, nargs=2, default=(128, 256), help="token counts run")
    parser.add_argument("--all-configs", action="store_true", help="every shipped row, not the first")
    parser.add_argument("--json", action="store_true", help="print a JSON list of records")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    records = []
    for source in args.structures:
        records += structure_records(source, args.tokens, tuple(args.counts), args.all_configs)
    if args.json:
        print(json.dumps([asdict(r) for r in records], indent=1))
    else:
        print(_table(records))
        print(
            f"\n{len(records)} kernels counted in {time.perf_counter() - start:.0f} s "
            f"(at {args.counts[0]} and {args.counts[1]} tokens, per token at {args.tokens})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
