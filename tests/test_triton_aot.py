"""The shipped GPU configurations compile for sm_80 and sm_90 without register spills, no GPU needed.

Triton compiles for a ``GPUTarget`` on any machine (its bundled ptxas); the
registers and spills are read from ptxas' own report (``tests/aot.py``). This
checks the kernels of the benchmark's structures at d = 4096 in bf16, each
distinct kernel text and configuration once; ``python tests/aot_long.py``
sweeps more structures, widths and dtypes.
"""

from __future__ import annotations

import pytest
from aot import MAX_SHARED, compile_report

import einstruct
from einstruct.runtime import compile_structure

#: The structures of benchmarks/bench_layers.py's GPU table, at the issue's width.
SHIPPED = [
    "btt(d = 4096)",
    "btt(d = 4096, rank = 2)",
    "kronecker(d = 4096)",
    "tensor_train(d = 4096, rank = 8)",
    "low_rank(d = 4096, rank = 16)",
    "theta(alpha = 1/2, beta = 1/4, gamma = 1/4, delta = 1/4, epsilon = 1/2, phi = 1/4, d = 4096)",
]


@pytest.fixture(scope="module")
def compiled():
    seen: set = set()
    out = []
    for source in SHIPPED:
        layer_class = compile_structure(einstruct.load(f"structure s = {source}"), backend="triton")
        out += [(source, r) for r in compile_report(layer_class, archs=(80, 90), dtypes=("bf16",), seen=seen)]
    return out


def test_every_shipped_configuration_compiles_without_spills(compiled):
    assert len(compiled) >= 40, "every structure's kernels were compiled"
    assert {r.arch for _, r in compiled} == {80, 90}
    spilled = [f"{source}: {r.line()}" for source, r in compiled if r.spill_stores or r.spill_loads]
    assert spilled == []
    too_big = [f"{source}: {r.line()}" for source, r in compiled if r.shared > MAX_SHARED]
    assert too_big == []
