"""The GPU check of the fused Triton kernels: correctness, then timings, as markdown (one command).

    python benchmarks/gpu_check.py                 # on a machine with one CUDA GPU; writes $OUT/gpu_check.md
    python benchmarks/gpu_check.py --quick         # smaller sizes (a first smoke run)
    python benchmarks/gpu_check.py --smoke         # no GPU: the plumbing, on CPU in Triton's interpreter

Parts, each in its own process with a hard time limit (the whole stays under
8 minutes on one H100/H200), each appending its section to
``$OUT/gpu_check.md`` as it goes (a part that runs out of time leaves what it
had):

1. ``env`` (60 s): versions, the device, measured copy bandwidth and dense bf16
   matmul rate.
2. ``correct`` (180 s): the fused kernels (``kernels="fused"``) against a
   float64 reference (the planned torch steps in float64 with the same
   parameters) and against the torch backend (``kernels="torch"``) in the same
   dtype: forward, the input's gradient and every factor's gradient, in bf16,
   fp16, fp32 (IEEE) and tf32, at ragged token counts; and whether two
   backward passes give bitwise the same factor gradients (determinism).
3. ``bench`` (200 s): d = 4096, N = 16384, bf16: forward and forward+backward
   of the fused path, the torch backend and dense ``nn.Linear`` (medians of
   interleaved CUDA-event timings), then each fused op alone with the GB/s of
   the bytes it must move (each operand once) and that rate's share of the
   measured copy bandwidth (the memory roofline).

Runs with Python 3.12, a CUDA torch (2.11) and the Triton it ships (3.6). It
needs no network: ``lark`` (to parse structures) is imported from a wheel in
``.ci/wheels/`` when it is not installed. Prepare that on a machine with
network access and carry the folder (it is git-ignored)::

    pip download lark --no-deps -d .ci/wheels      # a pure-Python wheel: importable as a zip

Exit status 0 when every correctness row passed, 1 otherwise (timings are
written either way), 2 when no GPU is visible.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Seconds each part may run.
LIMITS = {"env": 60, "correct": 180, "bench": 200}
#: The issue's structures (at d = 4096 in the benchmark; smaller for correctness).
FORMS = [
    "btt(d = {d})",
    "btt(d = {d}, rank = 4)",
    "monarch(d = {d})",
    "kronecker(d = {d})",
    "low_rank(d = {d}, rank = 16)",
]
#: Where the parts run: "cuda", or "cpu" under --smoke (Triton's interpreter, tiny sizes: a check
#: of this script's plumbing on a machine without a GPU).
DEVICE = "cuda"
#: Relative error (Frobenius) allowed against float64 and against the torch backend.
TOLERANCE = {"bf16": 3e-2, "fp16": 5e-3, "fp32": 1e-4, "tf32": 5e-3}


def _lark_path() -> list[str]:
    """Paths that make ``lark`` importable: none when installed, else a carried wheel."""
    try:
        import lark  # noqa: F401

        return []
    except ImportError:
        wheels = sorted(glob.glob(str(ROOT / ".ci" / "wheels" / "lark-*.whl")))
        return wheels[-1:]


def _setup(smoke: bool) -> None:
    global DEVICE
    for path in [str(ROOT), *_lark_path()]:
        if path not in sys.path:
            sys.path.insert(0, path)
    if smoke:
        DEVICE = "cpu"
        os.environ["TRITON_INTERPRET"] = "1"
    else:
        os.environ.pop("TRITON_INTERPRET", None)


def _write(out: Path, text: str) -> None:
    with open(out, "a") as f:
        f.write(text + "\n")
    print(text, flush=True)


def _layer(source: str, dtype, kernels: str, seed: int = 0):
    import torch

    import einstruct

    layer_class = einstruct.compile(f"structure s = {source}", backend="triton")
    layer = layer_class(device=DEVICE, dtype=dtype, kernels=kernels, strategy="structured")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_((torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5).to(dtype))
    return layer


def _run(layer, x, probe):
    """Output, input gradient and factor gradients of one forward + backward."""
    x = x.detach().clone().requires_grad_()
    layer.zero_grad(set_to_none=True)
    y = layer(x)
    (y.double() * probe).sum().backward()
    grads = [getattr(layer, n).grad.detach().clone() for n in type(layer).factor_axes]
    return [y.detach(), x.grad.detach(), *grads]


def _rel(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def part_env(out: Path, quick: bool) -> bool:
    import torch
    import triton

    if DEVICE == "cpu":
        _write(
            out,
            f"## Environment (smoke run on CPU)\n\n- torch {torch.__version__}, triton {triton.__version__}",
        )
        return True
    props = torch.cuda.get_device_properties(0)
    _write(out, "## Environment\n")
    _write(
        out,
        f"- device: {props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs",
    )
    _write(out, f"- python {sys.version.split()[0]}, torch {torch.__version__}, triton {triton.__version__}")
    gbs, tflops = _copy_bandwidth(), _matmul_rate()
    _write(out, f"- measured copy bandwidth {gbs:,.0f} GB/s; dense bf16 matmul {tflops:,.0f} TFLOP/s\n")
    (out.parent / "bandwidth.json").write_text(json.dumps({"gbs": gbs}))
    return True


def _events_ms(fn, repeats: int = 20) -> float:
    import torch

    if DEVICE == "cpu":  # --smoke: wall-clock
        fn()
        times = []
        for _ in range(min(repeats, 3)):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _copy_bandwidth() -> float:
    import torch

    a = torch.empty(2**29, dtype=torch.uint8, device=DEVICE)  # 512 MiB
    b = torch.empty_like(a)
    ms = _events_ms(lambda: b.copy_(a))
    return 2 * a.numel() / (ms * 1e-3) / 1e9


def _matmul_rate() -> float:
    import torch

    a = torch.randn(8192, 8192, device=DEVICE, dtype=torch.bfloat16)
    ms = _events_ms(lambda: a @ a, repeats=10)
    return 2 * 8192**3 / (ms * 1e-3) / 1e12


def part_correct(out: Path, quick: bool) -> bool:
    import torch

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "tf32": torch.float32}
    d = 256 if quick else 1024
    if DEVICE == "cpu":  # the interpreter: tiny, and without bf16/tf32 (its bf16 dot is wrong)
        dtypes, d = {"fp32": torch.float32}, 32
    _write(out, "## Correctness (relative Frobenius error; fused vs float64, fused vs torch backend)\n")
    _write(
        out, "| structure | dtype | N | vs float64 (y, gx, gP, gQ) | vs torch backend | deterministic | ok |"
    )
    _write(out, "| --- | --- | ---: | --- | --- | --- | --- |")
    ok = True
    cases = [(form.format(d=d), name) for form in FORMS for name in dtypes]
    if DEVICE == "cuda":
        cases += [(form.format(d=4096), "bf16") for form in FORMS[:2]]
    for source, name in cases:
        try:
            ok &= _correct_case(out, source, name, dtypes[name])
        except Exception as error:  # a failing case is a row, not the end of the part
            ok = False
            _write(out, f"| {source} | {name} | - | {type(error).__name__}: {str(error)[:120]} | | | FAIL |")
    return ok


def _correct_case(out: Path, source: str, name: str, dtype) -> bool:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
    try:
        fused = _layer(source, dtype, "fused")
    except ValueError as refused:  # no fused path for this structure: nothing to check
        _write(out, f"| {source} | {name} | - | no fused kernels ({str(refused)[:80]}) | | | skipped |")
        return True
    planned = _layer(source, dtype, "torch")
    exact = _layer(source, torch.float64, "torch")
    passed = True
    for n in (37, 1000) if DEVICE == "cuda" else (37,):
        gen = torch.Generator(device="cpu").manual_seed(n)
        x64 = torch.randn(n, fused.in_features, generator=gen, dtype=torch.float64).to(DEVICE)
        probe = torch.randn(n, fused.out_features, generator=gen, dtype=torch.float64).to(DEVICE)
        with FlopCounterMode(display=False) as counter:
            got = _run(fused, x64.to(dtype), probe)
        ran = any(str(op).startswith("einstruct.") for op in counter.get_flop_counts()["Global"])
        again = _run(fused, x64.to(dtype), probe)
        base = _run(planned, x64.to(dtype), probe)
        ref = _run(exact, x64, probe)
        vs64 = [_rel(a, b) for a, b in zip(got, ref)]
        vs_torch = [_rel(a, b) for a, b in zip(got, base)]
        same = all(torch.equal(a, b) for a, b in zip(got[2:], again[2:]))
        good = max(vs64) <= TOLERANCE[name] and max(vs_torch) <= TOLERANCE[name] and same
        passed &= good
        cells = ", ".join(f"{e:.1e}" for e in vs64), ", ".join(f"{e:.1e}" for e in vs_torch)
        verdict = ("ok" if good else "FAIL") + ("" if ran else " (planned steps ran: no fused kernels)")
        _write(out, f"| {source} | {name} | {n} | {cells[0]} | {cells[1]} | {same} | {verdict} |")
    torch.backends.cuda.matmul.allow_tf32 = False
    return passed


def part_bench(out: Path, quick: bool) -> bool:

    d, n = (1024, 4096) if quick else (4096, 16384)
    if DEVICE == "cpu":
        d, n = 32, 64
    peak = (
        json.loads((out.parent / "bandwidth.json").read_text())["gbs"]
        if (out.parent / "bandwidth.json").exists()
        else 0.0
    )
    _write(out, f"## Timings: d = {d}, N = {n}, bf16 (ms, medians of interleaved CUDA-event timings)\n")
    _write(
        out,
        "| structure | fused fwd | torch fwd | dense fwd | fused fwd+bwd | torch fwd+bwd | dense fwd+bwd |",
    )
    _write(out, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    kernel_rows = []
    for form in FORMS:
        source = form.format(d=d)
        try:
            row, kernels = _bench_case(source, d, n, peak)
            _write(out, row)
            kernel_rows += kernels
        except Exception as error:
            if isinstance(error, ValueError) and "no fused kernels" in str(error):  # at this size
                _write(out, f"| {source} | no fused kernels (skipped: {str(error)[:80]}) | | | | | |")
            else:
                _write(out, f"| {source} | {type(error).__name__}: {str(error)[:100]} | | | | | |")
    _write(
        out, f"\n### Each fused launch alone (GB/s of the bytes it must move; roofline {peak:,.0f} GB/s)\n"
    )
    _write(out, "| structure | launch | ms | ideal MB | GB/s | share of roofline |")
    _write(out, "| --- | --- | ---: | ---: | ---: | ---: |")
    for line in kernel_rows:
        _write(out, line)
    return True


def _bench_case(source: str, d: int, n: int, peak: float) -> tuple[str, list[str]]:
    import torch

    dtype = torch.bfloat16
    fused, planned = _layer(source, dtype, "fused"), _layer(source, dtype, "torch")
    dense = torch.nn.Linear(fused.in_features, fused.out_features, device=DEVICE, dtype=dtype)
    x = torch.randn(n, fused.in_features, device=DEVICE, dtype=dtype, requires_grad=True)
    g = torch.randn(n, fused.out_features, device=DEVICE, dtype=dtype)

    def fwd(m):
        def run():
            with torch.no_grad():
                m(x)

        return run

    def step(m):
        return lambda: m(x).backward(g)

    variants = {"fused": fused, "torch": planned, "dense": dense}
    timings = {f"{k} {kind}": [] for k in variants for kind in ("fwd", "step")}
    for _ in range(7 if DEVICE == "cuda" else 1):  # interleaved rounds
        for name, m in variants.items():
            timings[f"{name} fwd"].append(_events_ms(fwd(m), repeats=5))
            timings[f"{name} step"].append(_events_ms(step(m), repeats=5))
    med = {k: statistics.median(v) for k, v in timings.items()}
    cells = [med[f"{v} fwd"] for v in variants] + [med[f"{v} step"] for v in variants]
    row = f"| {source} | " + " | ".join(f"{c:.3f}" for c in cells) + " |"
    return row, _kernel_rows(source, fused, x.detach(), g, peak)


def _kernel_rows(source: str, layer, x, g, peak: float) -> list[str]:
    """Each launch of the fused path timed alone, with the bytes it must move (each operand
    read once, each result written once) over its time."""
    import math

    import einstruct
    from einstruct.planner.fusion import plan_fusion
    from einstruct.planner.plan import make_plan

    chain = sys.modules[type(layer).__module__]._CHAIN
    fusion = plan_fusion(make_plan(einstruct.load(f"structure s = {source}"), batch=x.shape[0]))
    p, q = (getattr(layer, name).detach() for name in (fusion.chain.first, fusion.chain.second))
    t = chain.step("forward_first", x, p)
    gt = chain.step("grad_input_first", g, q)

    def size(*tensors) -> int:
        return sum(v.numel() * v.element_size() for v in tensors)

    ops = {
        "forward_first": (lambda: chain.step("forward_first", x, p), size(x, p, t)),
        "forward_second": (lambda: chain.step("forward_second", t, q), size(t, q, g)),
        "grad_input_first": (lambda: chain.step("grad_input_first", g, q), size(g, q, gt)),
        "grad_input_second": (lambda: chain.step("grad_input_second", gt, p), size(gt, p, x)),
        "grad_first": (lambda: chain.factor_grad("grad_first", x, gt, p), size(x, gt, p)),
        "grad_second": (lambda: chain.factor_grad("grad_second", t, g, q), size(t, g, q)),
    }
    rows = []
    for name, (fn, ideal) in ops.items():
        ms = _events_ms(fn)
        gbs = ideal / (ms * 1e-3) / 1e9
        share = f"{gbs / peak:.0%}" if peak and math.isfinite(gbs) else "-"
        rows.append(f"| {source} | {name} | {ms:.3f} | {ideal / 1e6:,.0f} | {gbs:,.0f} | {share} |")
    return rows


PARTS = {"env": part_env, "correct": part_correct, "bench": part_bench}


def _part(name: str, out: Path, quick: bool, smoke: bool) -> int:
    _setup(smoke)
    try:
        return 0 if PARTS[name](out, quick) else 1
    except Exception:
        _write(out, f"\n```\n{traceback.format_exc()[-3000:]}\n```\n")
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--part", choices=list(PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help="CPU, Triton's interpreter, tiny sizes")
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"), help="folder ($OUT)")
    args = parser.parse_args(argv)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    report = folder / "gpu_check.md"
    if args.part:
        return _part(args.part, report, args.quick, args.smoke)
    report.write_text("# einstruct GPU check\n\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if args.smoke:
        env["TRITON_INTERPRET"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *_lark_path(), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
        env=env,
        capture_output=True,
        text=True,
    )
    if probe.stdout.strip() != "True" and not args.smoke:
        _write(report, f"no CUDA device visible: {probe.stdout.strip()} {probe.stderr.strip()[-300:]}")
        return 2
    status = 0
    for name, limit in LIMITS.items():
        start = time.perf_counter()
        command = [
            sys.executable,
            __file__,
            "--part",
            name,
            "--out",
            str(folder),
            *(["--quick"] if args.quick else []),
            *(["--smoke"] if args.smoke else []),
        ]
        try:
            code = subprocess.run(command, env=env, timeout=limit).returncode
        except subprocess.TimeoutExpired:
            code = 1
            _write(report, f"\n**part {name} stopped at its {limit} s limit**\n")
        _write(report, f"\n_part {name}: exit {code}, {time.perf_counter() - start:.0f} s_\n")
        if name == "correct" and code != 0:
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
