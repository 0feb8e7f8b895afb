"""Exact catalog splits (the papers', 32 x 64) against 0.1's padded ones (45 x 46) at d = 2048.

Run: python benchmarks/bench_splits.py [--repeats 15] [--batch 2048]

BTT rank 1 and 2 and Kronecker, each written with both splits, and dense
nn.Linear, timed forward + backward side by side in one process (interleaved
rounds after a warm-up, medians); the last column is the time over dense's in
the same run, so the machine's load hits every row alike.
"""

from __future__ import annotations

import argparse

import torch
from timing import interleaved, median_ms

import einstruct
from einstruct.analysis import analyze_structure
from einstruct.runtime import compile_structure

FORMS = {
    "btt1": (
        "y[f, e] = x[g, a] * A[g, a, f, r] * B[f, g, r, e]",
        "g = {hi}, a = {lo}, f = {lo}, e = {hi}, r = 1",
    ),
    "btt2": (
        "y[f, e] = x[g, a] * A[g, a, f, r] * B[f, g, r, e]",
        "g = {hi}, a = {lo}, f = {lo}, e = {hi}, r = 2",
    ),
    "kronecker": (
        "y[o1, o2] = x[i1, i2] * A[i1, o1] * B[i2, o2]",
        "i1 = {lo}, i2 = {hi}, o1 = {lo}, o2 = {hi}",
    ),
}
SPLITS = {
    "exact 32x64": ("sqrt_lo(d)", "sqrt_hi(d)"),
    "padded 45x46": ("ceil(d / ceil(d^(1/2)))", "ceil(d^(1/2))"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=2048)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, 2048, requires_grad=True)
    layers = {"dense": torch.nn.Linear(2048, 2048)}
    flops = {"dense": 3 * 2 * 2048 * 2048}
    for name, (equation, sizes) in FORMS.items():
        for label, (lo, hi) in SPLITS.items():
            source = f"structure s(d = 2048):\n    {equation}\n    where {sizes.format(lo=lo, hi=hi)}\n"
            structure = einstruct.load(source)
            layers[f"{name} {label}"] = compile_structure(structure)()
            flops[f"{name} {label}"] = analyze_structure(structure).counts.train_flops
    times = interleaved({k: (lambda m=m: m(x).sum().backward()) for k, m in layers.items()}, args.repeats)
    dense = median_ms(times["dense"])
    print(f"| variant | train FLOPs/token | fwd+bwd ms (N = {args.batch}) | time / dense |")
    print("|---|---|---|---|")
    for name in layers:
        ms = median_ms(times[name])
        print(f"| {name} | {flops[name]:,} | {ms:.1f} | {ms / dense:.3f} |")


if __name__ == "__main__":
    main()
