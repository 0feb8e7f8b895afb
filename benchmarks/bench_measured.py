"""Does the measured mode pick a path within 10% of the best fixed path? (CPU)

For each structure and token count: the chooser (``einstruct.nn.measured``, no
disk cache) times the layer's two paths (structured steps, dense W) once, as a
layer in ``auto`` mode would on its first call, and picks one; then both fixed
paths are timed side by side (forward + backward, medians of interleaved
rounds in shuffled order, glibc's allocator kept steady: ``timing.steady_allocator``)
and the pick is compared with the best of them. Also reported: the
first call's measuring cost, and what the cost model alone would have chosen.

    python benchmarks/bench_measured.py                 # a few minutes on 2 loaded cores
    python benchmarks/bench_measured.py --repeats 5 --out /tmp/measured.md
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import interleaved, median_ms, steady_allocator  # noqa: E402

import einstruct  # noqa: E402
from einstruct.nn.measured import PathChooser  # noqa: E402
from einstruct.planner.plan import make_plan  # noqa: E402
from einstruct.runtime.measured_paths import strategy_paths  # noqa: E402

__all__ = ["CASES", "main"]

#: (label, spec) pairs; token counts come from --tokens.
CASES = [
    ("kronecker d=256", "structure k = kronecker(d = 256)"),
    ("kronecker d=1024", "structure k = kronecker(d = 1024)"),
    ("btt1 d=1024", "structure b = btt(d = 1024, rank = 1)"),
    ("low rank d=512 r=256", "structure l = low_rank(d = 512, rank = 256)"),
    ("tt d=256 r=16", "structure t = tensor_train(d = 256, rank = 16)"),
]


def run_case(label: str, spec: str, tokens: int, repeats: int) -> dict[str, object]:
    structure = einstruct.load(spec)
    layer = einstruct.compile(spec, batch=tokens)(bias=False)
    paths = strategy_paths(layer)
    x = torch.randn(tokens, layer.in_features, requires_grad=True)
    gy = torch.randn(tokens, layer.out_features)
    start = time.perf_counter()
    choice = PathChooser(cache_dir=None).choose(label, paths, (x,), wrt=list(layer.parameters()))
    first_call_ms = 1e3 * (time.perf_counter() - start)

    def fixed(name: str):
        def run() -> None:
            paths[name](x).backward(gy)

        return run

    times = interleaved({name: fixed(name) for name in paths}, repeats=repeats, warmup=1, shuffle=0)
    ms = {name: median_ms(v) for name, v in times.items()}
    best = min(ms, key=ms.__getitem__)
    model = make_plan(structure, tokens, "auto").strategy
    return {
        "case": label,
        "tokens": tokens,
        "ms": ms,
        "best": best,
        "picked": choice.winner,
        "model": model,
        "ratio": ms[choice.winner] / ms[best],
        "first_call_ms": first_call_ms,
    }


def markdown(rows: list[dict[str, object]], header: str) -> str:
    lines = [
        header,
        "",
        "| case | tokens | structured ms | dense ms | best fixed | measured pick | pick / best | "
        "cost model's pick | first call (measuring) ms |",
        "| --- | ---: | ---: | ---: | --- | --- | ---: | --- | ---: |",
    ]
    for r in rows:
        ms = r["ms"]
        assert isinstance(ms, dict)
        lines.append(
            f"| {r['case']} | {r['tokens']} | {ms['structured']:.2f} | {ms['dense']:.2f} | {r['best']} | "
            f"{r['picked']} | {r['ratio']:.2f} | {r['model']} | {r['first_call_ms']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[256, 2048])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    steady_allocator()
    torch.set_num_threads(args.threads)
    rows = []
    for label, spec in CASES:
        for tokens in args.tokens:
            rows.append(run_case(label, spec, tokens, args.repeats))
            r = rows[-1]
            print(
                f"{label:22s} n={tokens:5d} {r['ms']} pick {r['picked']} best {r['best']} "
                f"ratio {r['ratio']:.2f}"
            )
    header = (
        f"CPU, torch {torch.__version__}, {args.threads} thread(s), fp32, forward + backward, "
        f"medians of {args.repeats} interleaved rounds"
    )
    text = markdown(rows, header)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
