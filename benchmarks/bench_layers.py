"""Benchmark structured layers against dense nn.Linear and plain einsum baselines.

Times, side by side in one process, interleaved round by round, after a
warm-up, and reports medians of:

- ``dense``: ``nn.Linear`` of the same width (the yardstick: every efficiency
  ratio is achieved FLOP/s divided by dense FLOP/s measured in the same round);
- ``generated``: the module ``einstruct.compile`` builds (skipped when the
  compiler is not available);
- ``einsum2``: one ``torch.einsum`` per contraction step, in the planned order;
- ``einsum1``: a single ``torch.einsum`` call over input and factors
  (torch hands the path to opt_einsum);
- ``bmm``: for BTT/Monarch, the paper-style custom path (bmm with batch-first
  copies between the steps; our re-implementation);
- ``triton`` (``--device cuda`` only): the module ``einstruct.compile(...,
  backend="triton")`` builds, with ``kernels="fused"`` and the structured
  strategy, so its fused Triton kernels run whatever the planner's default
  (marked ``[torch default]`` where the planner would not choose them).

On CUDA each case also gets its two floors: the FLOP floor (analytic FLOPs at
the GPU's dense bf16 peak) and the byte floor (the tensors every
implementation must touch once, at the GPU's memory bandwidth: x and y
forward; dy, x, dx, the factors and their gradients backward), and each
variant's gap to the larger floor (its time / floor). Peaks come from
:data:`GPU_PEAKS` by device name, or ``--peak-tflops`` / ``--bandwidth-gbs``.

Usage::

    python benchmarks/bench_layers.py                      # full run (~20 min on 2 cores)
    python benchmarks/bench_layers.py --quick              # smoke test (seconds)
    python benchmarks/bench_layers.py --sizes 1024 --structures btt1 lowrank --repeats 7
    python benchmarks/bench_layers.py --out docs/benchmarks_table.md
    python benchmarks/bench_layers.py --device cuda --dtype bfloat16 --batch 8192 --sizes 4096

FLOPs are analytic: the forward's cheapest contraction order
(``einstruct.planner.order.contraction_order``), 3x that for forward + backward.
"Saved MB" is the activation memory autograd keeps for backward (bytes of the
distinct storages passed to saved-tensor hooks, parameters excluded, the input
included); on CUDA, "peak MB" is the peak allocation of one forward + backward
above what was already held (``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import SavedBytes, interleaved, median_ms  # noqa: E402

import einstruct  # noqa: E402
from einstruct.planner.order import contraction_order  # noqa: E402

__all__ = ["STRUCTURES", "main"]

#: name -> spec source at width d (catalog forms, as a user would write them).
STRUCTURES: dict[str, str] = {
    "btt1": "structure btt1 = btt(d = {d}, rank = 1)",
    "btt2": "structure btt2 = btt(d = {d}, rank = 2)",
    "monarch": "structure monarch = monarch(d = {d})",
    "kronecker": "structure kronecker = kronecker(d = {d})",
    "tt": "structure tt = tensor_train(d = {d}, rank = 8)",
    "lowrank": "structure lowrank = low_rank(d = {d}, rank = {d_8})",
    "theta": (
        "structure theta = theta(alpha = 1/2, beta = 1/4, gamma = 1/4, delta = 1/4,"
        " epsilon = 1/4, phi = 1/2, rho = 1/4, d = {d})"
    ),
}

#: The strategy the planner chose for each (structure, d), for the table.
strategy: dict[tuple[str, int], str] = {}
#: The triton backend's default kernels for each (structure, d) ("fused" or "torch").
kernels_default: dict[tuple[str, int], str] = {}

#: Dense bf16 tensor-core peak (TFLOP/s, no sparsity) and memory bandwidth (GB/s) from the vendors'
#: data sheets, by a substring of torch.cuda.get_device_name(); the first match wins.
GPU_PEAKS: dict[str, tuple[float, float]] = {
    "H200": (989.0, 4800.0),
    "H100 PCIe": (756.0, 2000.0),
    "H100": (989.0, 3350.0),
    "A100-SXM4-80GB": (312.0, 2039.0),
    "A100": (312.0, 1555.0),
}

#: Extra variants by name: (structure, x_padded, factors) -> callable, registered by prototypes.
EXTRA: dict[str, Callable] = {}


@dataclass
class Row:
    structure: str
    d: int
    mode: str
    flops: int
    dense_flops: int
    ms: dict[str, float]
    saved_mb: dict[str, float]
    peak_mb: dict[str, float]
    floor_bytes: int = 0


def floor_bytes(n: int, d_in: int, d_out: int, params: int, mode: str, itemsize: int) -> int:
    """Bytes every implementation moves at least: x, y forward; dy, x, dx, factors, grads backward."""
    fwd = n * (d_in + d_out) + params
    if mode == "fwd":
        return fwd * itemsize
    return (fwd + n * (2 * d_in + d_out) + 2 * params) * itemsize


def _letters(structure) -> dict[str, str]:
    names = ["__batch", *(i.name for i in structure.indices)]
    return {n: chr(ord("a") + k) for k, n in enumerate(names)}


def _eq(sym: dict[str, str], operands, result) -> str:
    return ",".join("".join(sym[i] for i in idx) for idx in operands) + "->" + "".join(sym[i] for i in result)


def einsum_one(structure) -> Callable:
    """A single torch.einsum call over the input and every factor."""
    sym = _letters(structure)
    operands = [("__batch", *structure.input.indices), *(f.indices for f in structure.factors)]
    eq = _eq(sym, operands, ("__batch", *structure.output.indices))

    def run(x, factors):
        return torch.einsum(eq, x, *factors)

    return run


def einsum_steps(structure, batch: int) -> Callable:
    """One torch.einsum per step of the planned contraction order."""
    sym = _letters(structure)
    order = contraction_order(structure, batch)
    steps = [(_eq(sym, s.operand_indices, s.indices), s.operands, s.result) for s in order.steps]
    names = [structure.input.name, *(f.name for f in structure.factors)]

    def run(x, factors):
        env = dict(zip(names, (x, *factors)))
        for eq, ops, res in steps:
            env[res] = torch.einsum(eq, *(env[o] for o in ops))
        return env[structure.output.name]

    return run


def bmm_btt(structure) -> Callable | None:
    """Paper-style BTT/Monarch path: bmm per step, batch-first copies in between."""
    axes = {f.name: f.indices for f in structure.factors}
    if structure.input.indices != ("g", "a") or axes.get("A", ())[:3] != ("g", "a", "f"):
        return None
    g, a, f, e = (structure.size(i) for i in "gafe")
    r = structure.size("r") if "r" in structure._sizes else 1

    def run(x, factors):
        A, B = factors
        n = x.shape[0]
        t = torch.bmm(x.transpose(0, 1).reshape(g, n, a), A.reshape(g, a, f * r))  # (g, n, f r)
        t = t.view(g, n, f, r).permute(2, 1, 0, 3).reshape(f, n, g * r)
        y = torch.bmm(t, B.reshape(f, g * r, e))  # (f, n, e)
        return y.transpose(0, 1)

    return run


def _dense_flops(d_in: int, d_out: int, n: int) -> int:
    return 2 * n * d_in * d_out


def bench_one(name: str, d: int, n: int, repeats: int, device: str, dtype, modes) -> list[Row]:
    src = STRUCTURES[name].format(d=d, d_8=max(1, d // 8))
    s = einstruct.load(src)
    d_in, d_out = int(s.in_features), int(s.out_features)
    pad_in = int(s.d_in) - d_in
    fwd_flops = contraction_order(s, n).flops
    kw = {"device": device, "dtype": dtype}
    gen = torch.Generator().manual_seed(0)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(**kw)

    factors = [torch.nn.Parameter(rnd(*(int(z) for z in s.shape(f)), scale=0.05)) for f in s.factors]
    in_shape = tuple(int(s.size(i)) for i in s.input.indices)
    x = rnd(n, d_in).requires_grad_(True)
    dense = torch.nn.Linear(d_in, d_out, bias=False, **kw)

    def structured(core):
        def layer(xx):
            xp = torch.nn.functional.pad(xx, (0, pad_in)) if pad_in else xx
            y = core(xp.reshape(n, *in_shape), factors).reshape(n, -1)
            return y[:, :d_out] if y.shape[1] != d_out else y

        return layer

    layers: dict[str, Callable] = {"dense": dense}
    try:
        Layer = einstruct.compile(src, batch=n)
        module = Layer(bias=False, **kw)
        layers["generated"] = module
        lean = Layer(bias=False, save_intermediate=False, **kw)
        lean.load_state_dict(module.state_dict())
        layers["gen-recompute"] = lean
        strategy[name, d] = module.strategy
    except Exception as exc:  # the compiler is optional for this script
        print(f"  [{name} d={d}] generated module skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
    if device == "cuda":
        try:
            Fused = einstruct.compile(src, batch=n, backend="triton")
            if Fused.fused_forward is not None:
                layers["triton"] = Fused(bias=False, kernels="fused", strategy="structured", **kw)
                kernels_default[name, d] = Fused.default_kernels
        except Exception as exc:  # triton is optional for this script
            print(f"  [{name} d={d}] triton module skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
    layers["einsum2"] = structured(einsum_steps(s, n))
    layers["einsum1"] = structured(einsum_one(s))
    b = bmm_btt(s)
    if b is not None:
        layers["bmm"] = structured(b)
    for key, make in EXTRA.items():
        core = make(s)
        if core is not None:
            layers[key] = core if getattr(core, "is_layer", False) else structured(core)

    params = {p.untyped_storage().data_ptr() for p in factors}
    for m in layers.values():
        if isinstance(m, torch.nn.Module):
            params |= {p.untyped_storage().data_ptr() for p in m.parameters()}
    gy = rnd(n, d_out)
    rows = []
    sync = torch.cuda.synchronize if device == "cuda" else None
    for mode in modes:
        fns = {}
        for key, layer in layers.items():
            if mode == "fwd":

                def fn(layer=layer):
                    with torch.no_grad():
                        layer(x)

            else:

                def fn(layer=layer):
                    layer(x).backward(gy)

            fns[key] = fn
        times = interleaved(fns, repeats=repeats, warmup=1 if d >= 4096 else 2, sync=sync)
        saved, peak = {}, {}
        if mode == "fwdbwd":
            for key, layer in layers.items():
                with SavedBytes(exclude=params) as sb:
                    y = layer(x)
                saved[key] = sb.nbytes / 2**20
                del y
                if device == "cuda":  # peak memory of one forward + backward, above what was held
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    held = torch.cuda.memory_allocated()
                    layer(x).backward(gy)
                    torch.cuda.synchronize()
                    peak[key] = (torch.cuda.max_memory_allocated() - held) / 2**20
        mult = 1 if mode == "fwd" else 3
        n_params = sum(int(s.factor_params(f)) for f in s.factors)
        rows.append(
            Row(
                name,
                d,
                mode,
                mult * fwd_flops,
                mult * _dense_flops(d_in, d_out, n),
                {k: median_ms(v) for k, v in times.items()},
                saved,
                peak,
                floor_bytes(n, int(s.d_in), int(s.d_out), n_params, mode, x.element_size()),
            )
        )
        print(_row_text(rows[-1]), flush=True)
    return rows


def _row_text(r: Row) -> str:
    parts = [f"{r.structure:9s} d={r.d:5d} {r.mode:6s}"]
    dense_rate = r.dense_flops / r.ms["dense"]
    for k, ms in r.ms.items():
        fl = r.dense_flops if k == "dense" else r.flops
        parts.append(f"{k} {ms:.2f}ms ({fl / ms / dense_rate:.2f})")
    return "  ".join(parts)


BASELINES = ("einsum2", "einsum1", "bmm")


def markdown(rows: list[Row], header: str, peaks: tuple[float, float] | None = None) -> str:
    """The results as a markdown table (one line per structure, size and mode); with ``peaks``
    (TFLOP/s, GB/s) the two floors and each variant's gap to them."""
    extra = sorted({k for r in rows for k in r.ms} - {"dense", "generated", "triton", *BASELINES})
    cols = ["generated", *(["triton"] if any("triton" in r.ms for r in rows) else []), *BASELINES, *extra]
    lines = [header, ""]
    head = ["structure", "d", "mode", "dense ms (GFLOP/s)"]
    head += [f"{c} ms (x dense)" for c in cols]
    head += ["best baseline", "generated speed-up", "saved MB gen / gen-recompute / einsum2 / dense"]
    with_peak = any(r.peak_mb for r in rows)
    if with_peak:
        head.append("peak MB gen / einsum2 / dense")
    if peaks:
        head += ["FLOP floor ms", "byte floor ms", "gap to floor: " + " / ".join(["dense", *cols])]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in rows:
        dense_rate = r.dense_flops / r.ms["dense"]
        name = r.structure + (" (dense W)" if strategy.get((r.structure, r.d)) == "dense" else "")
        name += " [torch default]" if kernels_default.get((r.structure, r.d)) == "torch" else ""
        cells = [name, str(r.d), r.mode, f"{r.ms['dense']:.1f} ({dense_rate / 1e6:.0f})"]
        for c in cols:
            ms = r.ms.get(c)
            cells.append("–" if ms is None else f"{ms:.2f} ({r.flops / ms / dense_rate:.2f})")
        base = {k: r.ms[k] for k in BASELINES if k in r.ms}
        best = min(base, key=base.get)
        cells.append(best)
        gen = r.ms.get("generated")
        cells.append("–" if gen is None else f"{base[best] / gen:.2f}x")
        for mb, keys, wanted in (
            (r.saved_mb, ("generated", "gen-recompute", "einsum2", "dense"), True),
            (r.peak_mb, ("generated", "einsum2", "dense"), with_peak),
        ):
            if wanted:
                cells.append(" / ".join(f"{mb[k]:.1f}" for k in keys if k in mb) if mb else "")
        if peaks:
            flop_floor = r.flops / (peaks[0] * 1e9)
            byte_floor = r.floor_bytes / (peaks[1] * 1e6)
            floor = max(flop_floor, byte_floor)
            gaps = [f"{r.ms[k] / floor:.1f}x" if k in r.ms else "–" for k in ("dense", *cols)]
            cells += [f"{flop_floor:.3f}", f"{byte_floor:.3f}", " / ".join(gaps)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Cells: median ms, and in parentheses the efficiency ratio: achieved FLOP/s (analytic FLOPs of the",
        "cheapest order; 3x forward for forward+backward) over dense nn.Linear's FLOP/s in the same run.",
        "Speed-up: best baseline time / generated time. gen-recompute: the generated module with",
        "save_intermediate=False. '(dense W)': the planner chose to materialize W and run one dense matmul.",
        "triton: the triton backend's module with kernels='fused' ('[torch default]': the planner would run",
        "the torch steps). Floors: FLOPs at the dense bf16 peak, and the bytes of x, y (and dy, dx, x, the",
        "factors and their gradients) at the memory bandwidth; gap: time / the larger floor.",
    ]
    return "\n".join(lines) + "\n"


def machine_header(device: str, n: int, repeats: int, dtype) -> str:
    cpu = platform.processor() or "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        cpu = next(
            (ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), cpu
        )
    except OSError:
        pass
    where = torch.cuda.get_device_name() if device == "cuda" else f"{cpu}, {torch.get_num_threads()} threads"
    return (
        f"Machine: {where}; torch {torch.__version__}; {dtype}; N = {n} tokens; "
        f"medians of {repeats} interleaved rounds after warm-up."
    )


def gpu_peaks(args: argparse.Namespace) -> tuple[float, float] | None:
    """(TFLOP/s, GB/s) for the floors: the flags, else the data sheet of a known GPU; None on CPU."""
    if args.peak_tflops and args.bandwidth_gbs:
        return args.peak_tflops, args.bandwidth_gbs
    if args.device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    found = next((v for k, v in GPU_PEAKS.items() if k in name), None)
    if found is None:
        print(
            f"no peaks known for {name}: pass --peak-tflops and --bandwidth-gbs for the floors",
            file=sys.stderr,
        )
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--structures", nargs="+", default=list(STRUCTURES), choices=list(STRUCTURES))
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--batch", type=int, default=2048, help="tokens N")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd"], choices=["fwd", "fwdbwd"])
    ap.add_argument("--quick", action="store_true", help="smoke test: d=256, N=256, 2 repeats")
    ap.add_argument("--out", help="write the markdown table here")
    ap.add_argument("--extra", nargs="*", default=[], help="modules registering EXTRA variants")
    ap.add_argument("--peak-tflops", type=float, help="dense bf16 peak for the FLOP floor (CUDA)")
    ap.add_argument("--bandwidth-gbs", type=float, help="memory bandwidth for the byte floor (CUDA)")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.batch, args.repeats = [256], 256, 2
    for mod in args.extra:
        __import__(mod)
    dtype = getattr(torch, args.dtype)
    rows: list[Row] = []
    for d in args.sizes:
        for name in args.structures:
            rows += bench_one(name, d, args.batch, args.repeats, args.device, dtype, args.modes)
    text = markdown(rows, machine_header(args.device, args.batch, args.repeats, dtype), gpu_peaks(args))
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
