"""How long ``from_dense`` takes, per structure, and how close it gets.

Run: python benchmarks/bench_from_dense.py [--d 4096] [--dtype float32] [--only btt2 low_rank64]

For each structure at width d: the time of one ``layer.from_dense(W)`` for a
Gaussian W (wall clock, one run after a warm-up on a small layer, the
projection's SVDs or fit and the final error check included), whether the
result is the exact optimum or an iterative fit, and the relative error it
returns. A Gaussian W is the hardest case (its spectrum is flat); trained
weights, whose spectra decay, project with smaller errors.
"""

from __future__ import annotations

import argparse
import time

import torch

import einstruct
from einstruct.backends.torch.projection import projection_kind

STRUCTURES = {
    "dense": "structure s = dense()",
    "block_diagonal4": "structure s = block_diagonal(blocks = 4)",
    "low_rank64": "structure s = low_rank(rank = 64)",
    "low_rank512": "structure s = low_rank(rank = 512)",
    "kronecker": "structure s = kronecker()",
    "tensor_train4": "structure s = tensor_train(rank = 4)",
    "monarch": "structure s = monarch()",
    "monarch_blocks4": "structure s = monarch(blocks = 4)",
    "btt2": "structure s = btt(rank = 2)",
    "three_core_tt4": (
        "structure s(d_in, d_out, rank = 4):\n"
        "    y[o1, o2, o3] = x[i1, i2, i3] * A[i1, o1, r] * B[i2, r, o2, s] * C[i3, s, o3]\n"
        "    where i1 = i2 = i3 = o1 = o2 = o3 = ceil(d_in^(1/3)), r = s = rank\n"
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=4096)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--only", nargs="*", default=None, help="structures to run (default: all)")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    w = torch.randn(args.d, args.d, dtype=dtype) / args.d**0.5
    print(f"| structure (d = {args.d}, {args.dtype}) | params | kind | from_dense s | relative error |")
    print("|---|---|---|---|---|")
    for name, spec in STRUCTURES.items():
        if args.only and name not in args.only:
            continue
        structure = einstruct.load(spec, d_in=args.d, d_out=args.d)
        small = einstruct.compile(spec, d_in=64, d_out=64)(dtype=dtype)
        small.from_dense(torch.randn(64, 64, dtype=dtype))  # warm-up: the first SVD call loads LAPACK
        layer = einstruct.runtime.compile_structure(structure)(dtype=dtype)
        start = time.perf_counter()
        error = layer.from_dense(w)
        seconds = time.perf_counter() - start
        params = sum(p.numel() for p in layer.parameters()) - layer.out_features
        kind = projection_kind(structure)
        print(f"| {name} | {params:,} | {kind} | {seconds:.2f} | {error:.4f} |", flush=True)


if __name__ == "__main__":
    main()
