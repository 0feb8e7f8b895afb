"""Low rank's last CPU levers, measured: how each product is handed to the BLAS, and which BLAS.

Low rank (``y = x U V``, r = d / 8) runs six products of N x d x r forward and
backward, all of them compute-bound, with no FLOPs to save; einstruct's layer
runs the same ``torch.mm`` calls as ``x @ U @ V``. What is left to choose:

- **arrangement**: each product as ``A @ B`` or as ``(B^T @ A^T)^T``, and the
  intermediates (``x U`` and ``g V^T``) stored row- or column-major: the same
  MKL routine with other transpose flags and strides;
- **oneDNN**: the products through oneDNN (``torch.ops.mkldnn._linear_pointwise``,
  exact float32) instead of MKL.

Every variant is a custom autograd Function checked against ``x @ U @ V``
(output and the three gradients) before timing. Each pass interleaves all
variants in shuffled rounds and reports, per variant, the median over rounds of
the peer's time over the variant's (paired in the same round: > 1 is faster
than ``x @ U @ V``). Several passes in one process show how much the same work
moves between passes: a lever is real only where it beats that spread.

    python benchmarks/bench_blas.py                      # d = 1024 and 2048, 3 passes
    python benchmarks/bench_blas.py --sizes 1024 --passes 5 --rounds 15
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import steady_allocator  # noqa: E402

import einstruct  # noqa: E402

__all__ = ["main"]

Product = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _onednn(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``left @ right`` through oneDNN's linear (``left @ weight^T``, weight = ``right^T``)."""
    return torch.ops.mkldnn._linear_pointwise(left, right.t(), None, "none", [], "")


def _low_rank(product: Product, h_col: bool, gh_col: bool, grads_col: bool) -> Callable[..., torch.Tensor]:
    """``x U V`` with its backward, each product by ``product`` in the given arrangement."""

    def mm(left: torch.Tensor, right: torch.Tensor, transposed: bool) -> torch.Tensor:
        return product(right.t(), left.t()).t() if transposed else product(left, right)

    class LowRank(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, u, v):  # type: ignore[no-untyped-def]
            h = mm(x, u, h_col)
            ctx.save_for_backward(x, u, v, h)
            return product(h, v)

        @staticmethod
        def backward(ctx, g):  # type: ignore[no-untyped-def]
            x, u, v, h = ctx.saved_tensors
            gv = mm(h.t(), g, grads_col)
            gh = mm(g, v.t(), gh_col)
            gu = mm(x.t(), gh, grads_col)
            return product(gh, u.t()), gu, gv

    return LowRank.apply


def _variants(layer: torch.nn.Module) -> dict[str, Callable[..., torch.Tensor]]:
    out: dict[str, Callable[..., torch.Tensor]] = {
        "x @ U @ V": lambda x, u, v: x @ u @ v,
        "einstruct": lambda x, u, v: layer(x),
    }
    for h_col, gh_col, grads_col in itertools.product((False, True), repeat=3):
        layouts = ("col" if h_col else "row", "col" if gh_col else "row", "T" if grads_col else "N")
        name = "mkl h:{} gh:{} dW:{}".format(*layouts)
        out[name] = _low_rank(torch.mm, h_col, gh_col, grads_col)
    if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        out["onednn"] = _low_rank(_onednn, False, False, False)
        out["onednn dW:T"] = _low_rank(_onednn, False, False, True)
    return out


def _check(variants: dict, x: torch.Tensor, u: torch.Tensor, v: torch.Tensor, g: torch.Tensor) -> None:
    reference = None
    for name, fn in variants.items():
        for t in (x, u, v):
            t.grad = None
        y = fn(x, u, v)
        y.backward(g)
        factors = (None, None) if name == "einstruct" else (u.grad, v.grad)  # the layer's own factors
        got = (y.detach(), x.grad, *factors)
        if reference is None:
            reference = got
            continue
        for a, b in zip(reference, got):
            if b is not None and not torch.allclose(b, a, rtol=1e-3, atol=1e-3):
                raise SystemExit(f"{name} does not compute x @ U @ V (or its gradients)")


def _pass(variants: dict, x, u, v, g, rounds: int, rng: random.Random) -> dict[str, float]:
    """One pass: per variant, the median over rounds of (peer time / its time), paired per round."""
    ratios: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        names = list(variants)
        rng.shuffle(names)
        times = {}
        for name in names:
            for t in (x, u, v):
                t.grad = None
            start = time.perf_counter()
            variants[name](x, u, v).backward(g)
            times[name] = time.perf_counter() - start
        for name in variants:
            ratios[name].append(times["x @ U @ V"] / times[name])
    return {k: statistics.median(r) for k, r in ratios.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steady_allocator()
    rng = random.Random(0)
    threads = f"{args.threads} thread(s)"
    print(f"CPU {platform.machine()}, torch {torch.__version__}, {threads}, N = {args.batch}, fp32")
    for d in args.sizes:
        r = d // 8
        torch.manual_seed(0)
        x = torch.randn(args.batch, d, requires_grad=True)
        u = (torch.randn(d, r) / d**0.5).requires_grad_()
        v = (torch.randn(r, d) / r**0.5).requires_grad_()
        g = torch.randn(args.batch, d)
        layer = einstruct.compile(f"structure lowrank = low_rank(d = {d}, rank = {r})", batch=args.batch)(
            bias=False, strategy="structured"
        )
        with torch.no_grad():
            layer.U.copy_(u.view_as(layer.U))
            layer.V.copy_(v.view_as(layer.V))
        variants = _variants(layer)
        _check(variants, x, u, v, g)
        _pass(variants, x, u, v, g, 2, rng)  # warm-up
        passes = [_pass(variants, x, u, v, g, args.rounds, rng) for _ in range(args.passes)]
        what = "forward + backward, x @ U @ V's time over each variant's (> 1: faster)"
        print(f"\nd = {d}, rank {r}: {what}\n")
        print("| variant | " + " | ".join(f"pass {k + 1}" for k in range(args.passes)) + " | spread |")
        print("| --- | " + " | ".join("---:" for _ in range(args.passes)) + " | ---: |")
        for name in variants:
            values = [p[name] for p in passes]
            cells = " | ".join(f"{value:.3f}" for value in values)
            print(f"| {name} | {cells} | {max(values) - min(values):.3f} |")


if __name__ == "__main__":
    main()
