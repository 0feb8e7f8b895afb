"""Bytes the fused Triton kernels load and store, counted from the kernels themselves.

Runs every launch a layer's fused path makes in a training step (the runtime's
two kernels, :mod:`einstruct.nn.kernels`: the forward's two steps, the input
gradient's two, the factors' gradients) with its SHIPPED GPU configurations
(the rows of the generated module's ``FusedChain`` table for 2-byte inputs,
exactly the constexprs autotuning chooses from on a GPU) in Triton's
interpreter at the real token count, and counts the bytes every ``tl.load`` and
``tl.store`` moves (the entries its mask lets through, times their size; each
attributed to the tensor it falls in). These are the bytes the programs
*request* from the memory system (what a GPU's L2 serves); DRAM traffic can
only be lower.

The interpreter would take hours for a full grid at d = 4096, so each grid axis
runs its first and last stretches of programs and a few evenly spaced interior
ones, each standing for its share; a stretch on axis 0 is one cycle through the
column blocks (the last one partial). Interior stretches make the same
accesses, shifted; ``count_launch(..., exact=True)`` runs every program, and
the tests compare the two.

Beside each launch: the ideal (each operand read once: the input, and the
weight once per call), and per role of the training step (forward, input
gradient, each factor's gradient) what the planned torch steps move
(``Plan.traffic``: each step reads its operands and writes its result once,
copies twice; the backward's roles each as much as the forward, a factor's
gradient half).

    python benchmarks/kernel_traffic.py                   # the table of docs/benchmarks.md
    python benchmarks/kernel_traffic.py --json            # one record per launch and configuration
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
from einstruct.nn import kernels as runtime_kernels  # noqa: E402
from einstruct.planner.fusion import LAUNCHES, ROLES, plan_fusion  # noqa: E402
from einstruct.planner.plan import make_plan  # noqa: E402
from einstruct.planner.tiles import ideal_per_token  # noqa: E402

__all__ = ["STRUCTURES", "Record", "count_launch", "structure_records", "main"]

#: The issue's structures at d = 4096 (BTT rank 1 and 4, Monarch, Kronecker, low rank).
STRUCTURES = [
    "btt(d = 4096)",
    "btt(d = 4096, rank = 4)",
    "monarch(d = 4096)",
    "kronecker(d = 4096)",
    "low_rank(d = 4096, rank = 16)",
]
#: Bytes per entry of the counted dtype (bf16).
ITEMSIZE = 2


@dataclass
class Counts:
    """Bytes one launch loaded and stored, by the kernel argument whose tensor they fall in."""

    loaded: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    stored: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    programs: float = 0


@dataclass(frozen=True)
class Record:
    """One launch (or, with ``kernel`` a role, a role's launches together) of one
    structure with one configuration: bytes per token at ``tokens``."""

    structure: str
    d: int
    kernel: str
    role: str
    config: dict
    dtype: str
    tokens: int
    loaded_bytes_per_token: float
    stored_bytes_per_token: float
    ideal_bytes_per_token: float
    #: What the planned torch steps move for the same role (role records only: a launch has
    #: no one torch step to stand beside, so it is None there).
    torch_bytes_per_token: float | None
    loaded_ratio: float
    #: (loaded + stored) over (each operand read once + each result written once).
    moved_ratio: float
    loaded_by_operand: dict[str, float]
    programs: int


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


#: Interior stretches run per grid axis; the rest are counted as the sampled ones (see _sample).
SAMPLED = 3


def _sample(size: int, period: int = 1) -> list[tuple[int, float]]:
    """(index, weight) along one grid axis, in whole stretches of ``period`` programs (axis 0
    of both kernels cycles through the column blocks, the last one partial, every
    ``period`` programs): the first and the last stretch run (edge blocks and the last run
    of row tiles may be partial), and up to :data:`SAMPLED` evenly spaced interior
    stretches, each standing for its share of the interior. Exact where the interior
    stretches make the same accesses, shifted, as the kernels' tilings do; a sample can be
    checked against every program (``count_launch(..., exact=True)``)."""
    period = max(1, min(period, size))
    stretches = -(-size // period)
    if stretches <= 2 + SAMPLED:
        return [(k, 1.0) for k in range(size)]
    interior = stretches - 2
    picks = [1 + (interior - 1) * k // (SAMPLED - 1) for k in range(SAMPLED)]
    chosen = [(0, 1.0), *((k, interior / SAMPLED) for k in picks), (stretches - 1, 1.0)]
    return [
        (index, weight)
        for stretch, weight in chosen
        for index in range(stretch * period, min(size, (stretch + 1) * period))
    ]


def _period(args: dict) -> int:
    """How many programs of grid axis 0 cycle through the column blocks (1 when a program
    loops over them itself, C_INNER)."""
    if args.get("C_INNER") or not all(k in args for k in ("C1", "C2", "C3", "BLOCK_C")):
        return 1
    columns = int(args["C1"]) * int(args["C2"]) * int(args["C3"])
    return max(1, -(-columns // int(args["BLOCK_C"])))


def _run_sampled(executor, args_dev: tuple, kwargs: dict, counter: _Counter, exact: bool = False) -> None:
    """Triton's GridExecutor.__call__ (interpreter) over a sample of the grid (every program
    when ``exact``), each program's bytes weighted by how many programs it stands for."""
    import itertools

    from triton.runtime import interpreter as it

    argspec = inspect.getfullargspec(executor.fn)
    kwargs = {k: v for k, v in kwargs.items() if k in argspec.args or k in argspec.kwonlyargs}
    args_hst, kwargs_hst = executor._init_args_hst(args_dev, kwargs)
    scope = it._patch_lang(executor.fn)
    try:
        args = inspect.getcallargs(executor.fn, *args_hst, **kwargs_hst)
        period = _period(args)
        args = {n: a if n in executor.constexprs else it._implicit_cvt(a) for n, a in args.items()}
        grid = executor.grid(args) if callable(executor.grid) else executor.grid
        grid = tuple(grid) + (1,) * (3 - len(grid))
        it.interpreter_builder.set_grid_dim(*grid)
        if exact:
            axes = [[(k, 1.0) for k in range(g)] for g in grid]
        else:
            axes = [_sample(g, period if axis == 0 else 1) for axis, g in enumerate(grid)]
        for picks in itertools.product(*axes):
            counter.weight = float(math.prod(w for _, w in picks))
            it.interpreter_builder.set_grid_idx(*(k for k, _ in picks))
            executor.fn(**args)
            counter.counts.programs += counter.weight
    finally:
        scope.restore()


def count_launch(kernel, grid, args: tuple, config: dict, exact: bool = False) -> Counts:
    """Run one kernel in the interpreter with ``config``'s blocks and count its bytes (over a
    sample of its programs; every program when ``exact``)."""
    import triton.language as tl

    constants = {"ACC_DTYPE": tl.float32, "DOT_PRECISION": "ieee"}
    with _Counter() as counter:
        from triton.runtime import interpreter

        executor = interpreter.GridExecutor(kernel.rewrite(), kernel.arg_names, grid, kernel.pre_run_hooks)
        _run_sampled(executor, args, {**constants, **config}, counter, exact)
    return counter.counts


def _captured_launches(layer_class, factors: tuple[str, str], tokens: int, dtype: torch.dtype) -> dict:
    """Each launch's (kernel, grid, args, table) as the runtime passes them for a training
    step of ``tokens`` tokens of ``dtype`` (nothing runs: outputs stay uninitialized)."""
    chain = layer_class.fused_forward and sys.modules[layer_class.__module__]._CHAIN
    names = {id(table): name for name, table in chain.tables.items()}
    found: dict = {}

    def record(kernel, grid, args, dtype, table, config):
        found[names[id(table)]] = (kernel, grid, args, table)

    layer = layer_class(dtype=dtype, kernels="fused", strategy="structured")
    p, q = (getattr(layer, n).detach() for n in factors)
    x = torch.randn(tokens, chain.widths["x"]).to(dtype)  # the ops take the padded widths
    g = torch.randn(tokens, chain.widths["y"]).to(dtype)
    saved, runtime_kernels.launch = runtime_kernels.launch, record
    try:
        chain.forward(x, p, q)
        chain.backward(x, g, p, q, (True, True, True))
    finally:
        runtime_kernels.launch = saved
    return found


def structure_records(
    source: str, tokens: int = 16384, every_config: bool = False, exact: bool = False
) -> list[Record]:
    """The records of one structure's fused launches (bf16: the 2-byte GPU rows), then one
    record per role of the training step (its launches' first rows together); ``exact``
    runs every program of every launch instead of a sample."""
    structure = einstruct.load(f"structure s = {source}")
    plan = make_plan(structure, batch=tokens)
    fusion = plan_fusion(plan)
    if not hasattr(fusion, "launches"):
        return []
    layer_class = einstruct.compile(f"structure s = {source}", backend="triton", batch=tokens)
    factors = (fusion.chain.first, fusion.chain.second)
    launches = _captured_launches(layer_class, factors, tokens, torch.bfloat16)
    torch_forward = float(plan.traffic(ITEMSIZE))
    records = []
    first_rows: dict[str, Record] = {}
    for launch in fusion.launches:
        kernel, grid, args, table = launches[launch.name]
        blocks, rows, _ = table
        for k, row in enumerate(rows[ITEMSIZE] if every_config else rows[ITEMSIZE][:1]):
            config = dict(zip(blocks, row))
            counts = count_launch(kernel, grid, args, config, exact)
            names = list(inspect.signature(kernel.fn).parameters)
            by_operand = {names.index(n): v / tokens for n, v in counts.loaded.items() if n in names}
            loaded = sum(counts.loaded.values()) / tokens
            stored = sum(counts.stored.values()) / tokens
            ideal = float(ideal_per_token(launch.launch, tokens)) * ITEMSIZE
            written = _written(launch.launch, tokens)
            record = Record(
                structure=source,
                d=int(structure.d_in),
                kernel=launch.name,
                role=LAUNCHES[launch.name][0],
                config={**config, "num_warps": row[-2], "num_stages": row[-1]},
                dtype="bf16",
                tokens=tokens,
                loaded_bytes_per_token=round(loaded, 1),
                stored_bytes_per_token=round(stored, 1),
                ideal_bytes_per_token=round(ideal, 1),
                torch_bytes_per_token=None,
                loaded_ratio=round(loaded / ideal, 2),
                moved_ratio=round((loaded + stored) / (ideal + written), 2),
                loaded_by_operand={str(names[i]): round(v, 1) for i, v in sorted(by_operand.items())},
                programs=round(counts.programs),
            )
            records.append(record)
            if k == 0:
                first_rows[launch.name] = record
    for role, names in ROLES.items():
        parts = [first_rows[n] for n in names]
        loaded = sum(r.loaded_bytes_per_token for r in parts)
        stored = sum(r.stored_bytes_per_token for r in parts)
        ideal = _role_ideal(fusion.chain, role, tokens)
        written = ITEMSIZE * _role_written(fusion.chain, role, tokens)
        torch_bytes = torch_forward / (2 if role in ("grad_first", "grad_second") else 1)
        records.append(
            Record(
                structure=source,
                d=int(structure.d_in),
                kernel=role,
                role="role",
                config={},
                dtype="bf16",
                tokens=tokens,
                loaded_bytes_per_token=round(loaded, 1),
                stored_bytes_per_token=round(stored, 1),
                ideal_bytes_per_token=round(ideal, 1),
                torch_bytes_per_token=round(torch_bytes, 1),
                loaded_ratio=round(loaded / ideal, 2),
                moved_ratio=round((loaded + stored) / (ideal + written), 2),
                loaded_by_operand={},
                programs=sum(r.programs for r in parts),
            )
        )
    return records


def _written(launch, tokens: int) -> float:
    """Bytes per token a launch must write: a step's output, a factor's gradient once."""
    if launch.kind == "step":
        return ITEMSIZE * launch.rows * launch.groups * launch.made
    return ITEMSIZE * launch.weight / tokens


def _role_written(chain, role: str, tokens: int) -> float:
    """Entries per token a role must write: y, gx, or a factor's gradient once."""
    if role == "forward":
        return chain.width("y")
    if role == "grad_input":
        return chain.width("x")
    return chain.width("p" if role == "grad_first" else "q") / tokens


def _role_ideal(chain, role: str, tokens: int) -> float:
    """Bytes per token a role must load: its tensors with tokens once, the factors once per
    call. Forward: x and both factors; input gradient: gy and both factors (it makes gt
    = gy Q^T on the way to gx); P's gradient: x and gt (P's gradient is x^T gt); Q's: t
    and gy (Q's gradient is t^T gy, t saved by the forward)."""
    factors = chain.width("p") + chain.width("q")
    if role == "forward":
        return ITEMSIZE * (chain.width("x") + factors / tokens)
    if role == "grad_input":
        return ITEMSIZE * (chain.width("y") + factors / tokens)
    other = chain.width("x") if role == "grad_first" else chain.width("y")
    t = math.prod(chain.sizes[c] for c in ("gamma", "beta", "phi", "delta", "rho"))  # t's (and gt's) classes
    return ITEMSIZE * (other + t)


def _table(records: list[Record]) -> str:
    lines = [
        "| structure | launch | config | loaded B/token | ideal | ratio | stored | moved ratio "
        "| torch B/token |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in records:
        config = " ".join(f"{k.removeprefix('BLOCK_')}={v}" for k, v in r.config.items()) or "(role total)"
        torch_bytes = "" if r.torch_bytes_per_token is None else f"{r.torch_bytes_per_token:,.0f}"
        name = f"**{r.kernel}**" if r.role == "role" else r.kernel
        lines.append(
            f"| {r.structure} | {name} | {config} | {r.loaded_bytes_per_token:,.0f} "
            f"| {r.ideal_bytes_per_token:,.0f} | {r.loaded_ratio:.2f}x | {r.stored_bytes_per_token:,.0f} "
            f"| {r.moved_ratio:.2f}x | {torch_bytes} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structures", nargs="+", default=STRUCTURES, help="catalog calls")
    parser.add_argument("--tokens", type=int, default=16384, help="tokens per call")
    parser.add_argument("--all-configs", action="store_true", help="every shipped row, not the first")
    parser.add_argument("--json", action="store_true", help="print a JSON list of records")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    records = []
    for source in args.structures:
        records += structure_records(source, args.tokens, args.all_configs)
    if args.json:
        print(json.dumps([asdict(r) for r in records], indent=1))
    else:
        print(_table(records))
        print(f"\n{len(records)} records in {time.perf_counter() - start:.0f} s (at {args.tokens} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
