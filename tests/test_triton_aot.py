"""The shipped GPU configurations compile for sm_80 and sm_90 without register spills, no GPU needed.

Triton compiles for a ``GPUTarget`` on any machine (its bundled ptxas); the
registers and spills are read from ptxas' own report (``tests/aot.py``). This
checks the launches of five structures at d = 4096 in bf16 and fp32 (each
dtype has its own configurations), each
distinct kernel, set of constants and configuration once, in a subprocess without
``TRITON_INTERPRET`` (which CI sets, and which turns Triton's own jit functions
into interpreter objects at import); ``python tests/aot_long.py`` sweeps more
structures, widths and dtypes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT

#: Structures at the issue's width whose launches, together, take every shape of the two
#: kernels: BTT rank 1 (square products, the weight tile kept), BTT rank 4 (256 columns in one
#: block, 256 summed entries), Kronecker (rows carrying a class), low rank (the input tile kept,
#: summed entries in blocks), a theta point with six classes. The rest: tests/aot_long.py.
SHIPPED = [
    "btt(d = 4096)",
    "btt(d = 4096, rank = 4)",
    "kronecker(d = 4096)",
    "low_rank(d = 4096, rank = 16)",
    "theta(alpha = 1/2, beta = 1/4, gamma = 1/4, delta = 1/4, epsilon = 1/2, phi = 1/4, d = 4096)",
]
#: The Triton floor (pyproject's ``triton>=3.6``; .ci/run runs this test under it too).
OLDEST_TRITON = "3.6.0"


def test_every_shipped_configuration_compiles_without_spills_on_tensor_cores():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    script = str(ROOT / "tests" / "aot_long.py")
    args = [sys.executable, script, "--json", "--dtypes", "bf16", "fp32", "--structures", *SHIPPED]
    result = subprocess.run(args, env=env, capture_output=True, text=True, cwd=ROOT)
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(records) >= 30, result.stdout + result.stderr
    assert {r["arch"] for r in records} == {80, 90} and {r["dtype"] for r in records} == {"bf16", "fp32"}
    assert {r["structure"] for r in records} == set(SHIPPED)
    spilled = {(r["structure"], r["kernel"]) for r in records if r["spill_stores"] or r["spill_loads"]}
    assert spilled == set()
    assert max(r["shared"] for r in records) <= 163 * 1024
    # compiled as a launch compiles (16-byte aligned pointers): tensor cores and async copies
    no_tensor_cores = [r for r in records if not (r["hmma"] or r["hgmma"])]
    assert no_tensor_cores == []
    no_async_copies = {(r["structure"], r["kernel"]) for r in records if not (r["ldgsts"] or r["tma"])}
    assert no_async_copies == set()
    assert result.returncode == 0, result.stderr
