"""Products written into the order that follows them (``matmul_into``) against the plain
product and its permuting copy, side by side, on CPU.

Two copies of each layer, the same factor values: one as generated, one whose
module's ``matmul_into`` is swapped for the plain product (``torch.bmm`` /
``torch.mm``; the reshape after it then copies, as before the change). Forward +
backward, one thread, medians of interleaved rounds in shuffled order (glibc's
allocator kept steady, see ``timing.steady_allocator``).

    python benchmarks/bench_written.py                     # d = 1024 and 2048, N = 2048
    python benchmarks/bench_written.py --sizes 1024 --repeats 21
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import interleaved, median_ms, steady_allocator  # noqa: E402

import einstruct  # noqa: E402

#: structures whose plans have an output permute (written) or none (unchanged: a control)
SPECS = {
    "btt1": "btt(d = {d}, rank = 1)",
    "btt2": "btt(d = {d}, rank = 2)",
    "monarch": "monarch(d = {d})",
    "monarch4": "monarch(d = {d}, blocks = 4)",
    "kronecker": "kronecker(d = {d})",
    "lowrank": "low_rank(d = {d}, rank = {r})",
}


def _plain(left: torch.Tensor, right: torch.Tensor, shape: tuple, axes: tuple) -> torch.Tensor:
    return torch.bmm(left, right) if left.dim() == 3 else torch.mm(left, right)


def pair(name: str, d: int, n: int) -> tuple[torch.nn.Module, torch.nn.Module, bool]:
    """(as generated, with the plain product, whether the module writes any product)."""
    spec = SPECS[name].format(d=d, r=d // 8)
    written = einstruct.compile(f"structure {name}_w = {spec}", batch=n)(bias=False)
    plain = einstruct.compile(f"structure {name}_p = {spec}", batch=n)(bias=False)
    plain.load_state_dict(written.state_dict())
    module = sys.modules[type(plain).__module__]
    uses = hasattr(module, "matmul_into")
    if uses:
        module.matmul_into = _plain  # this module only: the other class has its own
    return written, plain, uses


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--structures", nargs="+", default=list(SPECS), choices=list(SPECS))
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args(argv)
    steady = steady_allocator()
    torch.set_num_threads(1)
    print(
        f"torch {torch.__version__}, 1 thread, N = {args.batch}, fp32, forward + backward, medians of "
        f"{args.repeats} shuffled rounds, {'steady' if steady else 'default'} allocator\n"
    )
    print("| structure | d | writes | plain product ms | written ms | written / plain |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for d in args.sizes:
        for name in args.structures:
            written, plain, uses = pair(name, d, args.batch)
            x = torch.randn(args.batch, written.in_features, requires_grad=True)
            gy = torch.randn(args.batch, written.out_features)
            torch.testing.assert_close(written(x), plain(x), rtol=0, atol=0)
            fns = {k: (lambda m=m: m(x).backward(gy)) for k, m in (("plain", plain), ("written", written))}  # noqa: B023
            ms = {k: median_ms(v) for k, v in interleaved(fns, args.repeats, shuffle=d).items()}
            print(
                f"| {name} | {d} | {'yes' if uses else 'no'} | {ms['plain']:.1f} | {ms['written']:.1f} | "
                f"{ms['written'] / ms['plain']:.2f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
